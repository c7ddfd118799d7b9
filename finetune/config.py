"""Fields shared by every fine-tuning task; each task module subclasses FinetuneConfig with its own."""
from __future__ import annotations

import copy
import dataclasses
import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Optional

from mlm.core.config import TrainingConfig, arg
from mlm.core.distill import DistillConfig
from mlm.errors import ConfigError

# Set while a Config is built from a model's saved settings (`for_model`): prediction reads no training data, so
# the checks and the data_dir resolution of the training files are left out (the saved paths are resolved already).
_FOR_MODEL: ContextVar[bool] = ContextVar("for_model", default=False)
# The backbone's dropout settings a fine-tuning run may override (BERT-family config names).
DROPOUTS = ("hidden_dropout_prob", "attention_probs_dropout_prob")


@dataclass
class FinetuneConfig(DistillConfig, TrainingConfig):
    """Fine-tune a pretrained encoder on a task; every field is also a --flag."""

    task: str = arg("cls", "Task: cls (sequence classification), ner (token classification) or qa (extractive QA).")
    model_name_or_path: str = arg(
        "outputs/pretrain-demo", "Backbone: a local HF BERT-family checkpoint directory (or a hub name when online)."
    )
    tokenizer_name: Optional[str] = arg(None, "Tokenizer directory or name (default: model_name_or_path).")
    hidden_dropout_prob: Optional[float] = arg(
        None, "Dropout on hidden states while fine-tuning (default: the backbone's own; a backbone pretrained "
        "without dropout has 0, and the fine-tuning recipes set 0.1).")
    attention_probs_dropout_prob: Optional[float] = arg(
        None, "Dropout on attention probabilities while fine-tuning (default: the backbone's own).")
    data_dir: Optional[str] = arg(
        None, "Folder holding the task's files: relative train_file/validation_file/test_file are resolved in it."
    )
    train_file: Optional[str] = arg(None, "Training data file.")
    validation_file: Optional[str] = arg(None, "Validation data file (evaluated every eval_steps and at the end).")
    test_file: Optional[str] = arg(
        None, "Test data file, or several separated by commas (each evaluated once at the end with the final model, "
        "scored separately)."
    )
    dataset_name: Optional[str] = arg(None, "A hub dataset name instead of files (needs network).")
    dataset_config_name: Optional[str] = arg(None, "Configuration of dataset_name.")
    max_seq_length: int = arg(128, "Longest input in tokens; longer inputs are truncated or windowed.")
    max_train_samples: Optional[int] = arg(None, "Train on at most this many examples (quick runs).")
    max_eval_samples: Optional[int] = arg(
        None, "Evaluate on at most this many validation examples (quick runs; the test split stays whole).")
    max_test_samples: Optional[int] = arg(
        None, "Score at most this many examples of each test file (alias --max_predict_samples, as in HF's scripts).",
        aliases=["--max_predict_samples"],
    )
    group_by_length: bool = arg(True, "Batch training examples of similar length together (less padding, faster).")
    unpadded_attention: Optional[bool] = arg(
        None, "Training batches skip their padding in every layer (variable-length attention, SDPA on nested "
        "tensors): the same outputs, less work. Default: on with a CUDA GPU for plain BERT-layer models (not under "
        "FSDP/ZeRO-3, gradient checkpointing or torch_compile), off on CPUs, where it was not measured faster.")
    mlm_layers: Optional[bool] = arg(
        None, "Training batches run the encoder through mlm's BERT layers on the model's weights (cheaper dropout "
        "masks on CPU; a sequence-classification head gets the last layer at its first token only): the same "
        "arithmetic, less work. Default: on with CPUs for sequence classification with plain BERT layers (measured "
        "1.13x; token heads measured 0.98x, so off), not under FSDP/ZeRO-3, gradient checkpointing or torch_compile; "
        "where unpadded attention runs, that path runs instead.")
    learning_rate: float = arg(5e-5, "Peak learning rate of AdamW.")
    do_predict: Optional[bool] = arg(
        None, "Trainer's switch: when any --do_* flag is given, the test files are scored only with --do_predict.",
        nargs="?", const=True)

    def __post_init__(self):
        super().__post_init__()
        if self.do_eval is False:  # Trainer's meaning: the splits not asked for are not read at all
            self.validation_file = None
        if self.do_predict is False:
            self.test_file = None
        for name in DROPOUTS:
            if getattr(self, name) is not None and not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        for name in ("max_train_samples", "max_eval_samples", "max_test_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        self.check_lengths()
        if _FOR_MODEL.get():
            return
        self.resolve_data_files()
        if self.dataset_name is None and self.train_file is None:
            raise ConfigError(
                "no training data: set --train_file PATH (and --validation_file PATH), or --dataset_name NAME when online"
            )

    @classmethod
    def for_model(cls, settings: dict):
        """The Config of a trained model from its saved settings (mlm_task.json's "config", or the defaults of a
        model without one): defaults for the missing fields, unknown ones (from another version) dropped, every
        check of __post_init__ run except those about the training files, which `mlm predict` does not read."""
        names = {f.name for f in dataclasses.fields(cls)}
        token = _FOR_MODEL.set(True)
        try:
            return cls(**{k: v for k, v in settings.items() if k in names})
        finally:
            _FOR_MODEL.reset(token)

    def with_values(self, values: dict):
        """These settings with `values` in place: what reading the data found (load_splits' second value: a
        resolved problem type, text columns, v2 mode), or `mlm predict`'s flags. A new Config, this one unchanged;
        __post_init__ is not run again (it would resolve data_dir twice): the callers check what they set."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"not settings of {type(self).__name__}: {', '.join(unknown)}")
        resolved = copy.copy(self)
        for name, value in values.items():
            setattr(resolved, name, value)
        return resolved

    def resolve_data_files(self) -> None:
        """Put data_dir in front of the file names that are relative to it: plain names such as `eng.train`, not
        absolute paths or ./ ../ ones, which stand for themselves, so a recipe's data_dir never stands in the way
        of files given in full. data_dir must exist only when some file is resolved in it."""
        if self.data_dir is None:
            return
        fields = {name: [getattr(self, name)] if getattr(self, name) else [] for name in ("train_file", "validation_file")}
        fields["test_file"] = split_file_list(self.test_file)
        in_data_dir = [(name, path) for name, paths in fields.items() for path in paths if in_folder(path)]
        if in_data_dir and not os.path.isdir(self.data_dir):
            name, path = in_data_dir[0]
            raise ConfigError(
                f"data_dir: {self.data_dir} not found (needed for {name} {path}); point at your files with "
                "DATA=/path/to/folder (make), --data_dir DIR, or full paths (/abs/file or ./file)"
            )
        for name, paths in fields.items():
            if paths:
                resolved = [os.path.join(self.data_dir, p) if in_folder(p) else p for p in paths]
                setattr(self, name, ",".join(resolved))

    def data_files(self) -> list[tuple[str, str]]:
        """(split, path) of every file set: train, validation, and test, or test_<name> per file when several
        test files are given (e.g. test_dev2 and test_eng.testb), so that each is scored on its own."""
        files = [(split, path) for split, path in (("train", self.train_file), ("validation", self.validation_file))
                 if path]
        tests = split_file_list(self.test_file)
        names = [input_name(path) for path in tests]
        repeated = next((n for n in names if names.count(n) > 1), None)
        if repeated is not None:
            raise ConfigError(f"test_file: two files are named {repeated}; their scores would share one name")
        return files + [("test" if len(tests) == 1 else f"test_{name}", path) for name, path in zip(names, tests)]

    def check_lengths(self, max_positions: Optional[int] = None) -> None:
        """max_seq_length (and the task's window fields, in subclasses) usable together, and within a model's
        max_positions. Run by __post_init__, once the model is loaded, and by `mlm predict` after its overrides; it
        changes nothing (a derived default is set once, in __post_init__)."""
        if self.max_seq_length < 8:
            raise ConfigError(f"max_seq_length: must be >= 8, got {self.max_seq_length}")
        if max_positions is not None and self.max_seq_length > max_positions:
            raise ConfigError(f"max_seq_length: {self.max_seq_length} exceeds the model's {max_positions} positions")


def in_folder(path: str) -> bool:
    """A file name resolved in data_dir: not absolute, not ./ or ../ (nor .\\ on Windows)."""
    return not (os.path.isabs(path) or path.replace("\\", "/").startswith(("./", "../")))


def split_file_list(value: Optional[str]) -> list[str]:
    """'a.tsv,b.tsv' -> ['a.tsv', 'b.tsv'] (spaces around commas dropped); None -> []."""
    if value is None:
        return []
    paths = [p.strip() for p in value.split(",")]
    if not all(paths):
        raise ConfigError(f"empty file name in {value!r}: separate several files with commas, e.g. a.tsv,b.tsv")
    return paths


# Suffixes dropped from a file's name when it names a split or an evaluation (dev.tsv -> dev, but eng.testb stays).
DATA_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json", ".parquet", ".txt", ".conll", ".conll03", ".iob", ".bio")


def input_name(path: str) -> str:
    """dev.tsv -> dev, test.jsonl.gz -> test, eng.testb -> eng.testb: names metrics and prediction files."""
    name = os.path.basename(path.rstrip("/\\")).removesuffix(".gz")
    for suffix in DATA_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def is_test_split(split: str) -> bool:
    """'test' or 'test_<name>': splits that may be unlabelled (predicted, not scored)."""
    return split == "test" or split.startswith("test_")
