"""Train a BERT WordPiece tokenizer on a corpus, or load an existing one, as a fast transformers tokenizer.

    tok = train_wordpiece(corpus.documents(), "out/tokenizer", vocab_size=8192)   # streams the texts once
    tok = load_tokenizer("out/tokenizer")          # or a hub name such as "bert-base-uncased" (needs network)

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
from typing import Iterable, Iterator

from mlm.errors import ConfigError, DataError
from mlm.user_files import REEXPORT

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


def pre_tokenizer_steps(tokenizer) -> list[dict]:
    """The fast tokenizer's pre-tokenizer as a list of steps (tokenizer.json's "pre_tokenizer", a Sequence
    flattened): how words are cut and marked (BertPreTokenizer, ByteLevel "Ġ", Metaspace "▁")."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    config = (json.loads(backend.to_str()).get("pre_tokenizer") if backend is not None else None) or {}
    return config.get("pretokenizers", [config]) if config.get("type") == "Sequence" else [config]


def fit_tokenizer_to_model(tokenizer, model) -> None:
    """Stop the tokenizer returning token_type_ids to a model that has no use for them: one that takes none
    (DistilBERT) or has a single token type (RoBERTa; a BERT tokenizer would send the second segment as 1)."""
    import inspect

    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    if (not takes_types or getattr(model.config, "type_vocab_size", 2) < 2) and \
            "token_type_ids" in tokenizer.model_input_names:
        tokenizer.model_input_names = [name for name in tokenizer.model_input_names if name != "token_type_ids"]


def load_tokenizer(name_or_dir: str, field: str = "tokenizer_name"):
    """A fast tokenizer from a local dir or a hub name; DataError/ConfigError (one line, naming `field` when the
    folder is missing) when it is unusable."""
    from transformers import AutoTokenizer

    from mlm.hub import locate

    name_or_dir = locate(name_or_dir, field)
    is_local = os.path.isdir(name_or_dir)
    if is_local:
        files = set(os.listdir(name_or_dir))
        if not files & {"tokenizer.json", "vocab.txt", "tokenizer_config.json"}:
            raise DataError(f"{field}: {name_or_dir}: no tokenizer files here (expected tokenizer.json or vocab.txt)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
    except Exception as e:  # OSError (not found / offline), ValueError (unknown class), ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        where = name_or_dir if is_local else f"tokenizer {name_or_dir!r}"
        hint = f"; {REEXPORT} (a damaged tokenizer file?)" if is_local else ""
        raise DataError(f"{field}: {where}: cannot load the tokenizer ({reason}){hint}") from None
    if not getattr(tokenizer, "is_fast", False):
        kind = type(tokenizer).__name__
        raise ConfigError(f"{name_or_dir}: {kind} is not a fast (Rust) tokenizer; packing needs one")
    _check_vocab(tokenizer, name_or_dir, is_local)
    return tokenizer


def _check_vocab(tokenizer, name_or_dir: str, is_local: bool) -> None:
    """Fail loudly on the transformers 5 trap of a silently specials-only vocabulary, and on missing specials."""
    size = len(tokenizer)
    vocab_txt = os.path.join(name_or_dir, "vocab.txt") if is_local else None
    if vocab_txt and os.path.isfile(vocab_txt):
        with open(vocab_txt, encoding="utf-8") as f:
            expected = len({line.rstrip("\n") for line in f} - {""})  # distinct tokens: some vocabs repeat one
        if size < expected:
            raise DataError(f"{vocab_txt}: lists {expected} tokens but the loaded tokenizer has only {size}")
    if size <= len(tokenizer.all_special_tokens) + 1:
        raise DataError(f"{name_or_dir}: the loaded tokenizer has only {size} tokens (an empty vocabulary?)")
    for name in ("pad_token", "cls_token", "sep_token", "mask_token"):
        if getattr(tokenizer, name + "_id", None) is None:
            raise ConfigError(f"{name_or_dir}: the tokenizer has no {name}; masked-language modelling needs it")
