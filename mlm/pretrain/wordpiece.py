"""Train a BERT WordPiece tokenizer on a corpus (and the `mlm tokenizer` command that does it).

    tok = train_wordpiece(corpus.documents(), "out/tokenizer", vocab_size=8192)   # streams the texts once
    mlm tokenizer --train_file "data/*.txt" --output_dir tokenizers/wp16k --vocab_size 16000

The trained tokenizer is the original BERT pipeline built with the `tokenizers` library: BertNormalizer
(lowercasing and accent stripping together, as in BERT), BertPreTokenizer (whitespace and punctuation),
WordPiece with `##` continuation pieces, specials [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, and the templates
`[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` (token types 0 / 1). `output_dir` receives tokenizer.json,
tokenizer_config.json (tokenizer_class BertTokenizer, do_lower_case, model_max_length) and vocab.txt, so
`transformers.AutoTokenizer.from_pretrained(output_dir)` gives the same tokenizer back, and so do other BERT
implementations that read vocab.txt.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

from mlm.core.config import arg
from mlm.core.hf import load_tokenizer
from mlm.pretrain.corpus import CorpusArgs
from mlm.errors import ConfigError, DataError

logger = logging.getLogger("mlm")

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, in this order
MODEL_MAX_LENGTH = 512
# What a saved tokenizer folder holds (ours, and transformers' for BERT-family tokenizers).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
_TRAIN_BATCH = 1000  # texts handed to the Rust trainer at a time
_MIN_VOCAB = len(SPECIAL_TOKENS) + 1  # below this nothing but specials fits


def train_wordpiece(texts: Iterable[str], output_dir: str, vocab_size: int = 30522, lowercase: bool = True,
                    min_frequency: int = 2):
    """Train WordPiece on `texts` (streamed in batches), save it to output_dir, and return it loaded from there."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if vocab_size < _MIN_VOCAB:
        raise ConfigError(f"vocab_size: must be >= {_MIN_VOCAB} (5 special tokens and a piece), got {vocab_size}")
    if min_frequency < 1:
        raise ConfigError(f"min_frequency: must be >= 1, got {min_frequency}")
    start = time.perf_counter()
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##"))
    # strip_accents=None follows `lowercase`, as in the original BERT uncased/cased models.
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        continuing_subword_prefix="##", show_progress=False,
    )
    counter = _Counter(texts)
    tokenizer.train_from_iterator(_batches(counter), trainer=trainer)
    if counter.documents == 0:
        raise DataError("tokenizer training: the corpus gave no text")
    for i, token in enumerate(SPECIAL_TOKENS):  # the trainer puts specials first; the collator relies on the ids
        if tokenizer.token_to_id(token) != i:
            raise RuntimeError(f"WordPiece training gave {token} id {tokenizer.token_to_id(token)}, expected {i}")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    _save(tokenizer, output_dir, lowercase)
    loaded = load_tokenizer(output_dir)
    if len(loaded) != tokenizer.get_vocab_size():
        raise RuntimeError(f"{output_dir}: saved {tokenizer.get_vocab_size()} tokens but reloaded {len(loaded)}")
    logger.info(
        "trained a WordPiece tokenizer: %d tokens (asked for %d) from %d documents, %.1f MB of text in %.1fs -> %s",
        len(loaded), vocab_size, counter.documents, counter.chars / 1e6, time.perf_counter() - start, output_dir,
    )
    return loaded


class _Counter:
    """Wraps the text stream to count what the trainer saw (for the log line and the empty check)."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.documents, self.chars = texts, 0, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.documents += 1
            self.chars += len(text)
            yield text


def _batches(texts: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == _TRAIN_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _save(tokenizer, output_dir: str, lowercase: bool) -> None:
    """Write tokenizer.json, vocab.txt and tokenizer_config.json through transformers' own BertTokenizer."""
    from transformers import BertTokenizer

    os.makedirs(output_dir, exist_ok=True)
    # transformers 5 rebuilds a BertTokenizer's normalizer from tokenizer_config.json (do_lower_case, ...), not
    # from tokenizer.json, so the config must say the same thing as our pipeline: let BertTokenizer write both.
    wrapped = BertTokenizer(
        vocab=tokenizer.get_vocab(), do_lower_case=lowercase, strip_accents=None, tokenize_chinese_chars=True,
        model_max_length=MODEL_MAX_LENGTH,
    )
    wrapped.backend_tokenizer.post_processor = tokenizer.post_processor
    wrapped.save_pretrained(output_dir)
    # vocab.txt (one token per line, line number = id) for tools that read BERT vocabularies directly.
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    with open(os.path.join(output_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.writelines(token + "\n" for token, _ in vocab)


@dataclass
class TokenizerConfig(CorpusArgs):
    """Train a WordPiece tokenizer with BERT's special tokens; every field is also a --flag."""

    output_dir: str = arg("outputs/tokenizer", "Directory to save the tokenizer to.")
    vocab_size: int = arg(30522, "Vocabulary size, special tokens included.")
    do_lower_case: bool = arg(True, "Lower-case and strip accents.")
    min_frequency: int = arg(2, "Minimum count for a merge/word piece.")

    def __post_init__(self):
        if self.vocab_size < 100:
            raise ConfigError(f"vocab_size: must be >= 100, got {self.vocab_size}")


def main(cfg: TokenizerConfig) -> None:
    from mlm.pretrain.corpus import corpus_sources
    from mlm.core.runlog import logger, setup_console_logging

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
