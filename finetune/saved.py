"""mlm_task.json: what a fine-tuned model folder records about its run, read back as a checked object.

    {"task": "cls", "labels": ["neg", "pos"], "config": {"max_seq_length": 128, "problem_type": "single_label", ...}}

`mlm finetune` writes it from the run's settings: the user's config with what reading the data found (text
columns, problem type, v2 mode; see each task's load_splits). `mlm predict` and `mlm evaluate` read it with
`SavedTask.from_json`, which checks every key and the type of every setting, and `SavedTask.config` gives the
task's Config, checked by its __post_init__. Anything wrong is a one-line DataError naming the file and the key;
a training-loop setting (mlm.core.config.TrainingConfig) that an older version wrote with another value (e.g. a
report_to choice since dropped) is left at its default instead, as prediction never reads those.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from typing import Optional

from mlm.core.config import TrainingConfig
from mlm.errors import ConfigError, DataError
from mlm.core.user_files import read_json

HINT = "re-export the model with mlm finetune, or delete the file to read the task from config.json"


@dataclass(frozen=True)
class SavedTask:
    task: str             # a name of finetune.task.TASKS
    labels: tuple         # class names in id order (empty for QA: its outputs are spans)
    settings: dict        # the run's settings as JSON values (a Config's fields; secrets hidden)
    path: str = "<run>"   # where they were read, for the messages

    @classmethod
    def of_run(cls, cfg, labels: list[str]) -> "SavedTask":
        from mlm.core.resume_settings import settings_of

        return cls(cfg.task, tuple(labels), settings_of(cfg))

    def to_json(self) -> dict:
        return {"task": self.task, "labels": list(self.labels), "config": self.settings}

    def write(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=2)

    @classmethod
    def from_json(cls, path: str, classes: Optional[int] = None) -> "SavedTask":
        """mlm_task.json checked: the three keys and their types, a known task, one label per class of the model
        (`classes`, from its config.json), each setting of the task's Config of the field's type."""
        from finetune.task import TASKS

        saved = read_json(path, hint=HINT)
        if not isinstance(saved, dict):
            raise DataError(f"{path}: expected a JSON object with task, labels and config; {HINT}")
        for key, kind in (("task", str), ("labels", list), ("config", dict)):
            if not isinstance(saved.get(key), kind):
                problem = "missing" if key not in saved else f"a {type(saved[key]).__name__}, expected a {kind.__name__}"
                raise DataError(f"{path}: key {key!r}: {problem}; {HINT}")
        if saved["task"] not in TASKS:
            raise DataError(f"{path}: key 'task': unknown task {saved['task']!r} (choose from {', '.join(TASKS)}); {HINT}")
        if not all(isinstance(label, str) for label in saved["labels"]):
            raise DataError(f"{path}: key 'labels': expected a list of names (strings); {HINT}")
        # An edited list would rename classes, or drop some, silently (QA has no classes: its 2 outputs are spans).
        if TASKS[saved["task"]].HAS_CLASSES and classes and len(saved["labels"]) != classes:
            raise DataError(f"{path}: key 'labels': {len(saved['labels'])} names, but the model has {classes} classes; "
                            f"{HINT}")
        config = TASKS[saved["task"]].Config
        hints = typing.get_type_hints(config)
        loop_fields = {f.name for f in dataclasses.fields(TrainingConfig)}
        settings = dict(saved["config"])
        for field in dataclasses.fields(config):
            if field.name in settings and not _of_type(settings[field.name], hints[field.name]):
                if field.name in loop_fields:  # a training-loop setting, which prediction never reads: a choice
                    del settings[field.name]   # an older version offered (a dropped tracker) is not damage
                    continue
                raise DataError(f"{path}: key 'config.{field.name}': {settings[field.name]!r}, expected "
                                f"{_describe(hints[field.name])}; {HINT}")
        if saved["config"].get("task", saved["task"]) != saved["task"]:
            raise DataError(f"{path}: key 'config.task': {saved['config']['task']!r}, but key 'task' is "
                            f"{saved['task']!r}; {HINT}")
        return cls(saved["task"], tuple(saved["labels"]), settings, path)

    def config(self):
        """The task's Config holding these settings (defaults for missing ones, unknown ones from another version
        dropped), checked like a training run's except for the training files, which prediction does not read."""
        from finetune.task import TASKS

        try:
            return TASKS[self.task].Config.for_model({**self.settings, "task": self.task})
        except ConfigError as e:
            raise DataError(f"{self.path}: key 'config': {e}; {HINT}") from None


def _of_type(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_of_type(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True  # a type JSON cannot hold: __post_init__ checks it


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join(_describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))
