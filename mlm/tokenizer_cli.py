"""`mlm tokenizer`: train a WordPiece tokenizer on a corpus and save it for AutoTokenizer.

    mlm tokenizer --train_file "data/*.txt" --output_dir tokenizers/wp16k --vocab_size 16000
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Optional

from mlm.config import arg
from mlm.errors import ConfigError


@dataclass
class TokenizerConfig:
    """Train a WordPiece tokenizer with BERT's special tokens; every field is also a --flag."""

    output_dir: str = arg("outputs/tokenizer", "Directory to save the tokenizer to.")
    train_file: Optional[str] = arg(None, "Corpus files (glob / comma list); empty: the embedded default corpus.")
    dataset_name: Optional[str] = arg(None, "A hub dataset name instead of files (needs network).")
    dataset_config_name: Optional[str] = arg(None, "Configuration of dataset_name.")
    text_column: str = arg("text", "Text column of .jsonl/.csv/.tsv/.parquet files and hub datasets.")
    document_separator: Literal["blank_line", "line"] = arg("blank_line", ".txt files: blank-line or line documents.")
    vocab_size: int = arg(30522, "Vocabulary size, special tokens included.")
    do_lower_case: bool = arg(True, "Lower-case and strip accents.")
    min_frequency: int = arg(2, "Minimum count for a merge/word piece.")

    def __post_init__(self):
        if self.vocab_size < 100:
            raise ConfigError(f"vocab_size: must be >= 100, got {self.vocab_size}")


def main(cfg: TokenizerConfig) -> None:
    from mlm.corpus import corpus_sources
    from mlm.runlog import logger, setup_console_logging
    from mlm.tokenizer import train_wordpiece

    setup_console_logging(True)
    if os.path.isfile(os.path.join(cfg.output_dir, "config.json")):
        raise ConfigError(f"output_dir: {cfg.output_dir} holds a model; a new tokenizer there would no longer match "
                          "its embeddings: choose another folder")
    corpus, _ = corpus_sources(train_file=cfg.train_file, dataset_name=cfg.dataset_name,
                               dataset_config_name=cfg.dataset_config_name, text_column=cfg.text_column,
                               document_separator=cfg.document_separator)
    logger.info("training a %d-token WordPiece on %s", cfg.vocab_size, corpus.description)
    tok = train_wordpiece(corpus.documents(), cfg.output_dir, vocab_size=cfg.vocab_size,
                          lowercase=cfg.do_lower_case, min_frequency=cfg.min_frequency)
    logger.info("saved %d-token tokenizer to %s", len(tok), cfg.output_dir)
