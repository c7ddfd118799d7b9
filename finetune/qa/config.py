"""QA settings: the task's Config (every field a --flag) and the constants the data path shares."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional
import transformers

from finetune.config import FinetuneConfig
from mlm.core.config import arg
from mlm.errors import ConfigError


logger = logging.getLogger("mlm")


AutoModel = transformers.AutoModelForQuestionAnswering


UNITS = ("questions", "windows")  # what an example and a feature are, for the log


IGNORE = -100  # label of a feature whose answer position is unknown: left out of the loss


SPECIAL_TOKENS_IN_PAIR = 3  # [CLS] question [SEP] context [SEP]


SHOW_IDS = 5  # how many example ids a log line names


@dataclass
class Config(FinetuneConfig):
    """Fine-tune an encoder for extractive question answering (SQuAD format); every field is also a --flag."""

    task: str = arg("qa", "Task: qa (extractive question answering).")
    max_seq_length: int = arg(384, "Tokens per window: [CLS] question [SEP] context window [SEP].")
    doc_stride: int = arg(128, "Tokens shared by two neighbouring windows of a long context.")
    max_query_length: int = arg(64, "Questions longer than this many tokens are cut to it before windowing.")
    n_best_size: int = arg(20, "Start and end candidates (highest logits) per window when searching the best span.")
    max_answer_length: int = arg(30, "Longest predicted answer in tokens.")
    align_to_words: bool = arg(
        True, "Widen a predicted span to the whole words it touches ('membranes', not the sub-word 'bra'), as the "
        "transformers pipeline did; false keeps sub-word spans.")
    version_2_with_negative: Optional[bool] = arg(
        None,
        "SQuAD v2 mode: some questions have no answer ([CLS] span). Unset = auto: on when the loaded data has "
        "unanswerable questions (is_impossible or empty answers); false with such data is an error.",
    )
    null_score_diff_threshold: float = arg(
        0.0, "v2 only: predict no answer when null score - best span score > this (tune it on validation)."
    )
    split_articles: Optional[str] = arg(
        None,
        "TRAIN:VALID, e.g. 38:10: train on the first TRAIN articles (titles) of train_file and validate on the next "
        "VALID ('38:' = all the rest); whole articles go to one side. Needs no validation_file; 'none' turns it off.",
    )

    def __post_init__(self):
        super().__post_init__()
        for name in ("n_best_size", "max_answer_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if isinstance(self.split_articles, str) and self.split_articles.strip().lower() in ("", "none", "null"):
            self.split_articles = None
        if self.split_articles is not None:
            parse_split_articles(self.split_articles)  # fail early on a malformed value
            if self.validation_file is not None:
                raise ConfigError(
                    "split_articles: set together with validation_file; pass --split_articles none to evaluate on "
                    "validation_file"
                )
            if self.train_file is None:
                raise ConfigError("split_articles: splits train_file by article, but no train_file is set")


    def check_lengths(self, max_positions: Optional[int] = None) -> None:
        super().check_lengths(max_positions)
        for name in ("doc_stride", "max_query_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        # The longest question leaves this many tokens for the context; a window must advance by >= 1 token.
        room = self.max_seq_length - self.max_query_length - SPECIAL_TOKENS_IN_PAIR
        if self.doc_stride >= room:
            raise ConfigError(
                f"doc_stride: {self.doc_stride} must be < max_seq_length - max_query_length - 3 = {room} "
                f"(max_seq_length {self.max_seq_length}, max_query_length {self.max_query_length})"
            )


def parse_split_articles(value: str) -> tuple[int, Optional[int]]:
    """'38:10' -> (38, 10); '38:' -> (38, None) meaning all remaining articles."""
    head, sep, tail = value.partition(":")
    try:
        n_train = int(head)
        n_valid = int(tail) if tail.strip() else None
    except ValueError:
        n_train = n_valid = -1
    if not sep or n_train < 1 or (n_valid is not None and n_valid < 1):
        raise ConfigError(f"split_articles: expected TRAIN:VALID article counts such as 38:10 or 38:, got {value!r}")
    return n_train, n_valid
