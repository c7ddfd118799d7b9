"""What `mlm predict` and `mlm evaluate` read for classification: --text/--text_pair, or tables with the
columns the model was trained on (gold labels for evaluate)."""
from __future__ import annotations

import json
from typing import Optional

from mlm.errors import ConfigError, DataError
from mlm.core.records import decoded_lines
from finetune.cls.config import Config, NO_PAIR
from finetune.cls.labels import _normalise_labels, problem_type
from finetune.cls.data import _rename_labels, read_table


def is_pair_model(cfg: Config) -> bool:
    return cfg.text_pair_column not in (None, NO_PAIR)


def examples_from_text(cfg: Config, text: Optional[str] = None, text_pair: Optional[str] = None, **other) -> list[dict]:
    """`mlm predict --text ... [--text_pair ...]` -> one example."""
    unused = [name for name, value in other.items() if value is not None]
    if unused:
        raise ConfigError(f"--{unused[0]}: not used by the cls task (it takes --text and optionally --text_pair)")
    if text is None or not text.strip():
        raise ConfigError("--text: empty text")
    if is_pair_model(cfg) and text_pair is None:
        raise ConfigError(f"--text_pair: this model classifies text pairs ({cfg.text_column} + {cfg.text_pair_column}); "
                          "pass the second text with --text_pair")
    if cfg.text_pair_column == NO_PAIR and text_pair is not None:
        raise ConfigError(f"--text_pair: this model classifies single texts ({cfg.text_column}), not pairs")
    example = {"text": text, "_where": "--text"}
    if text_pair is not None:
        if not text_pair.strip():
            raise ConfigError("--text_pair: empty text")
        example["text_pair"] = text_pair
    return [example]


def examples_from_file(path: str, cfg: Config) -> list[dict]:
    """`mlm predict --input FILE`: a table with the text column (labels, if present, become "gold"),
    or a .txt file with one text per line (blank lines skipped)."""
    if not path.lower().endswith((".txt", ".txt.gz")):
        return _read_gold_table(path, cfg, label_required=False)
    if is_pair_model(cfg):
        raise DataError(f"{path}: a .txt file has one text per line; this model classifies text pairs "
                        f"({cfg.text_column} + {cfg.text_pair_column}): use a csv/tsv/jsonl file with those columns")
    examples = []
    for line_no, line in enumerate(decoded_lines(path), 1):
        if line.strip():
            examples.append({"text": line.rstrip("\r\n"), "_where": f"{path}:{line_no}"})
    if not examples:
        raise DataError(f"{path}: no text (the file is empty)")
    return examples


def read_labelled(path: str, cfg: Config) -> list[dict]:
    """`mlm evaluate --input FILE`: a table read as fine-tuning reads a validation file (every row labelled)."""
    return _read_gold_table(path, cfg, label_required=True)


def _read_gold_table(path: str, cfg: Config, label_required: bool) -> list[dict]:
    """A table's examples, gold labels in the model's form: normalised for its problem type, named as in training."""
    examples = read_table(path, cfg, label_required)
    if cfg.problem_type != "auto":  # else the gold labels stay raw and `predictions` reads them per model
        _normalise_labels(examples, cfg)
        if cfg.label_names is not None:
            _rename_labels(examples, json.loads(cfg.label_names), cfg.problem_type)
    return examples
