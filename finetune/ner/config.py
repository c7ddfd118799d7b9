"""NER settings: the task's Config (every field a --flag) and the constants the data path shares."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Optional
import transformers

from finetune.config import FinetuneConfig
from mlm.core.config import arg
from mlm.errors import ConfigError


logger = logging.getLogger("mlm")


AutoModel = transformers.AutoModelForTokenClassification


UNITS = ("sentences", "windows")  # what an example and a feature are, for the log


SPLITS = ("train", "validation", "test")


IGNORE = -100  # label id that cross-entropy skips: specials, padding, non-first sub-words


RECORD_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")


# `mlm predict --input`: files read as CoNLL columns (training reads every non-record file so).
CONLL_SUFFIXES = (".conll", ".conll03", ".conllu", ".iob", ".iob1", ".iob2", ".bio", ".bioes", ".bilou", ".tsv")


DOCSTART = "-DOCSTART-"


NOT_CONLL = "not a CoNLL file, one word and its tag per line with a blank line between sentences"


@dataclass
class Config(FinetuneConfig):
    """Fine-tune an encoder for named-entity recognition (token classification)."""

    task: str = arg("ner", "Task: cls (sequence classification), ner (token classification) or qa (extractive QA).")
    token_column: int = arg(0, "CoNLL files: column holding the word (0 = first).")
    tag_column: int = arg(-1, "CoNLL files: column holding the entity tag (-1 = last).")
    tag_scheme: Literal["auto", "iob1", "iob2", "iobes", "bilou", "io"] = arg(
        "auto",
        "Tag scheme of the input files, converted to IOB2 on reading. auto: per file, iobes if any E-/S- tag, "
        "bilou if any L-/U- tag, io if no tag has a prefix (PER, LOC: a run of one label is one entity), else "
        "iob1/iob2 (which convert identically: an I-X that starts an entity becomes B-X).",
    )
    label_all_tokens: bool = arg(
        False, "Train on every sub-word (the later ones of a word get its I- tag) instead of the first only."
    )
    stride: Optional[int] = arg(
        None,
        "Sentences longer than max_seq_length are split at word boundaries into windows overlapping by up to this "
        "many tokens (at most max_seq_length / 2; default 32, or max_seq_length / 4 when that is less); each word "
        "is predicted from the window where it is most central.",
    )
    tokens_key: str = arg("tokens", "JSON lines / parquet / hub datasets: field holding the list of words.")
    tags_key: str = arg(
        "tags", "JSON lines / parquet / hub datasets: field holding the list of tags ('ner_tags' is tried too)."
    )
    text_key: str = arg("text", "`mlm predict --input FILE.jsonl`: field holding raw text (split into words here).")

    def __post_init__(self):
        if self.stride is None:  # the default, derived once here so that it always fits max_seq_length
            self.stride = min(32, self.max_seq_length // 4)
        super().__post_init__()

    def check_lengths(self, max_positions: Optional[int] = None) -> None:
        super().check_lengths(max_positions)
        if self.stride < 0:
            raise ConfigError(f"stride: must be >= 0, got {self.stride}")
        # Overlap at most half a window, so every window moves on by at least half a window of new words.
        if 2 * self.stride > self.max_seq_length:
            raise ConfigError(
                f"stride: {self.stride} is more than half of max_seq_length={self.max_seq_length}; use at most "
                f"{self.max_seq_length // 2}"
            )
