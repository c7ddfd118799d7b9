"""The task interface: what `mlm finetune`, `mlm predict` and `mlm evaluate` call on a task, in code.

A task is a module (`finetune/<name>/task.py`) that provides every name of `Task` below; `TASKS` maps the
`--task` names to them. The runner (finetune/run.py), inference (finetune/inference.py), `mlm predict` and
`mlm evaluate` use only these names, so adding a task is adding a package and one line to `TASKS`;
tests/finetune/test_task_protocol.py checks that every entry conforms (names and signatures).

Data path of every task: load_splits -> label_list -> encode -> collate -> forward -> (loss_of | outputs_of)
-> predictions -> metrics. `loss` and `outputs` are forward + loss_of / outputs_of, for the training loop
and for tests.
"""
from __future__ import annotations

from typing import Any, Optional, Protocol

# Written next to a fine-tuned model: {"task": name, "labels": [...], "config": {settings}}; `mlm predict` reads it
# (finetune/saved.py: SavedTask).
TASK_FILE = "mlm_task.json"


class Task(Protocol):
    Config: type                # the task's settings (a FinetuneConfig); every field is also a --flag
    AutoModel: Any              # the transformers Auto class of the head (AutoModelForTokenClassification, ...)
    UNITS: tuple[str, str]      # what an example and a feature are, for the log ("sentences", "windows")
    TARGETS: tuple[str, ...]    # the batch keys loss_of reads: evaluation features with them also give a loss
    HAS_CLASSES: bool           # the head has one output per label (cls, ner), not spans (qa)
    HEAD_READS_FIRST_TOKEN: bool  # the head reads the last layer at the first token only (cls): the rest is skipped
    LENGTH_FIELDS: tuple[str, ...]  # Config fields measured in tokens, scaled with max_seq_length by `mlm predict`

    # --- fine-tuning
    def load_splits(cfg) -> tuple[dict[str, list[dict]], dict]: ...  # (splits, settings the data resolved)
    def label_list(train_examples: list[dict], cfg) -> list[str]: ...
    def model_kwargs(cfg, labels: list[str]) -> dict: ...
    def encode(examples: list[dict], tokenizer, cfg, labels: list[str], with_labels: bool) -> list[dict]: ...
    def collate(features: list[dict], tokenizer) -> dict: ...
    def forward(model, batch: dict): ...
    def loss(model, batch: dict) -> tuple: ...
    def loss_of(logits, batch: dict) -> tuple: ...
    def outputs(model, batch: dict) -> list: ...
    def outputs_of(logits, batch: dict) -> list: ...
    def predictions(examples: list[dict], features: list[dict], outputs: list, cfg, labels: list[str]) -> list[dict]: ...
    def metrics(examples: list[dict], predictions: list[dict], cfg, labels: list[str]) -> dict: ...
    def write_official(records: list[dict], folder: str, name: str) -> None: ...

    # --- mlm predict / mlm evaluate
    def settings_from_hf(hf_config: dict) -> tuple[dict, list[str]]: ...
    def rename_classes(cfg, labels: list[str], value: str) -> tuple[list[str], dict]: ...  # (names, settings)
    def examples_from_text(cfg, **fields) -> list[dict]: ...
    def examples_from_file(path: str, cfg) -> list[dict]: ...
    def read_labelled(path: str, cfg) -> list[dict]: ...


def protocol_names() -> list[str]:
    """Every name a task module must provide: the annotated attributes and the hooks of `Task`."""
    hooks = [name for name, value in vars(Task).items() if callable(value) and not name.startswith("_")]
    return list(Task.__annotations__) + hooks


def _tasks() -> dict[str, Task]:
    from finetune.cls import task as cls
    from finetune.ner import task as ner
    from finetune.qa import task as qa

    return {"cls": cls, "ner": ner, "qa": qa}


TASKS: dict[str, Task] = _tasks()

# Which task a checkpoint without mlm_task.json holds, read from its config.json `architectures`.
ARCHITECTURE_SUFFIXES = {"ForSequenceClassification": "cls", "ForTokenClassification": "ner", "ForQuestionAnswering": "qa"}


def task_of_architectures(architectures: Optional[list]) -> Optional[str]:
    """The task name of a Hugging Face model from its config.json `architectures`, or None."""
    for arch in architectures or []:
        for suffix, name in ARCHITECTURE_SUFFIXES.items():
            if arch.endswith(suffix):
                return name
    return None
