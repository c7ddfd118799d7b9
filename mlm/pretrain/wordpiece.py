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


# ------------------------------------------------------------------------------------ the pretraining run's tokenizer


def prepare_tokenizer(cfg, train_corpus, accelerator, cache: str):
    """An existing tokenizer, the checkpoint's, or a WordPiece trained on the corpus (cached by fingerprint).

    WordPiece training is not reproducible (tokenizers breaks ties between equally frequent pairs in hash order),
    so a trained tokenizer is decided once: rank 0 makes it and sends its files to the other ranks, which may be
    on nodes with caches of their own. Returns (tokenizer, the folder of a trained one or None): main() copies
    that folder into output_dir once it holds it, where a resumed run reads it back instead of the cache.
    `cfg` is a PretrainConfig; `cache` the run's cache folder (tokenizers go to its tokenizers/).
    """
    from mlm.core.hub import tokenizer_source

    if cfg.tokenizer_name or cfg.model_name_or_path:
        return load_tokenizer(*tokenizer_source(cfg)), None
    files = folder = None
    if accelerator.is_main_process:
        if cfg.resume_from_checkpoint and os.path.isfile(os.path.join(cfg.output_dir, "tokenizer.json")):
            logger.info("tokenizer: the run's own, from %s", cfg.output_dir)
            folder = cfg.output_dir
        else:
            folder = _cached_wordpiece(cfg, train_corpus, cache)
        files = _folder_files(folder)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        files = broadcast_object_list([files])[0]
    if not accelerator.is_main_process:
        folder = _publish_files(files, os.path.join(cache, "tokenizers"))
    return load_tokenizer(folder), folder


def _cached_wordpiece(cfg, train_corpus, cache: str) -> str:
    """The folder of a WordPiece trained on the corpus, from the cache or trained into it."""
    import hashlib

    from mlm.core.fsutil import publish_folder

    key = f"{train_corpus.fingerprint()}|{cfg.vocab_size}|{cfg.do_lower_case}"
    path = os.path.join(cache, "tokenizers", hashlib.sha256(key.encode()).hexdigest()[:16])
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        tmp = path + f".tmp{os.getpid()}"
        train_wordpiece(train_corpus.documents(), tmp, vocab_size=cfg.vocab_size, lowercase=cfg.do_lower_case)
        publish_folder(tmp, path, "tokenizer.json")
    return path


def copy_tokenizer(folder: str, output_dir: str) -> None:
    """The tokenizer files of `folder` (a trained one in the cache) written into the run's output_dir."""
    _write_files(_folder_files(folder), output_dir)


def _folder_files(folder: str) -> dict[str, bytes]:
    names = [n for n in sorted(os.listdir(folder)) if n in TOKENIZER_FILES]
    files = {}
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            files[name] = f.read()
    return files


def _publish_files(files: dict[str, bytes], cache: str) -> str:
    """Rank 0's tokenizer files in a folder named by their content (so any number of runs can share it)."""
    import hashlib

    from mlm.core.fsutil import publish_folder

    digest = hashlib.sha256(b"".join(name.encode() + data for name, data in sorted(files.items()))).hexdigest()[:16]
    path = os.path.join(cache, f"from-rank0-{digest}")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        tmp = path + f".tmp{os.getpid()}"
        _write_files(files, tmp)
        publish_folder(tmp, path, "tokenizer.json")
    return path


def _write_files(files: dict[str, bytes], folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)


# ------------------------------------------------------------------------------------------- `mlm tokenizer`


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
