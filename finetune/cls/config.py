"""Classification settings: the task's Config (every field a --flag) and the constants the data path shares."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Literal, Optional
import transformers

from finetune.config import FinetuneConfig
from mlm.core.config import arg
from mlm.errors import ConfigError


logger = logging.getLogger("mlm")


AutoModel = transformers.AutoModelForSequenceClassification


UNITS = ("examples", "sequences")  # what an example and a feature are, for the log


TEXT_COLUMN_CANDIDATES = ("text", "sentence", "sentence1")


# (text, text pair) column layouts of sentence-pair data (GLUE, SNLI, ...): read as pairs unless told otherwise.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"),
                ("question1", "question2"), ("text", "text_pair"), ("text_a", "text_b"))


NO_PAIR = "none"  # text_pair_column: single texts, even when the data has a pair layout


# Our problem types -> the names transformers' configs use (and `mlm predict` reads back from a model).
HF_PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "regression": "regression",
    "multi_label": "multi_label_classification",
}


DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


FEW_FRACTIONAL = 10  # problem_type auto: fewer than 1 in 10 fractional labels among integers is ambiguous


ENCODE_CHUNK = 1024  # examples per tokenizer call: big enough for the fast tokenizer, small in memory


@dataclass
class Config(FinetuneConfig):
    """Fine-tune an encoder for sequence classification (single-label, regression or multi-label)."""

    text_column: Optional[str] = arg(
        None, "Column with the text: a name or a position (0 = first); several separated by commas are joined with "
        "a space, e.g. title,description or 1,2 (default: the first of text, sentence, sentence1 that the data has)."
    )
    text_pair_column: Optional[str] = arg(
        None, "Column with the second text of sentence-pair tasks, a name or position (default: the partner of a known "
        "pair layout such as sentence1/sentence2, premise/hypothesis, question/sentence, question1/question2; 'none': "
        "no pair)."
    )
    label_column: str = arg(
        "label", "Column with the label (class name, number, or list for multi-label): a name or a position (0 = first)."
    )
    no_header: Optional[bool] = arg(
        None, "csv/tsv files have no header line (columns by position: --text_column 1 --label_column 0); 'false': "
        "line 1 is always the header (default: detected per file, e.g. a number in line 1 means data).",
        nargs="?", const=True,  # `--no_header` alone means true (HfArgumentParser does that only for non-None defaults)
    )
    problem_type: Literal["auto", "single_label", "regression", "multi_label"] = arg(
        "auto",
        "auto: multi_label for list labels or with label_separator, regression when a training label is a "
        "non-integer number, else single_label.",
    )
    label_separator: Optional[str] = arg(
        None, "Multi-label data as one string per example, e.g. '|' for 'sports|politics' (implies multi_label)."
    )
    label_names: Optional[str] = arg(
        None, "Names for the classes, for config.json's id2label and the predictions: 'negative,positive' (one per "
        "class, numbers ascending, else alphabetical), '0=negative,1=positive', or a file of such lines."
    )
    delimiter: Optional[str] = arg(
        None, "Field delimiter of csv/tsv files: a character or tab/comma/semicolon/pipe (default: by extension)."
    )

    def __post_init__(self):
        super().__post_init__()
        if self.delimiter is not None:
            self.delimiter = DELIMITER_ALIASES.get(self.delimiter, self.delimiter)
            if len(self.delimiter) != 1:
                raise ConfigError(f"delimiter: expected one character or tab/comma/semicolon/pipe, got {self.delimiter!r}")
        if self.label_separator is not None and self.problem_type in ("single_label", "regression"):
            raise ConfigError(f"label_separator: only used with problem_type multi_label, not {self.problem_type}")
        if self.label_separator == "":
            raise ConfigError("label_separator: must not be empty")
        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise ConfigError(f"text_pair_column: same as text_column ({self.text_column!r})")
        if self.dataset_name is not None and self.train_file is not None:
            raise ConfigError("dataset_name and train_file are both set: choose one")
