"""Tokenise a corpus once and pack it into fixed-length blocks on disk, behind a fingerprinted cache.

    train_blocks, valid_blocks = build_packed_dataset(train, validation, tokenizer, max_seq_length=128,
                                                      cache_dir="cache/packed")
    len(train_blocks)                      # number of blocks
    train_blocks[0]["input_ids"]           # (T,) int64 copy: [CLS] t_1 ... t_{T-2} [SEP]
    train_blocks[-1]["input_ids"]          # the last block may be shorter: [CLS] tail [SEP]
    train_blocks.num_tokens                # tokens over all blocks, [CLS]/[SEP] included

How blocks are made
-------------------
* Documents are tokenised in batches by the Rust backend (no special tokens added), joined into one stream
  with one [SEP] between consecutive documents, and the stream is cut every T-2 tokens (T = max_seq_length);
  each block is [CLS] chunk [SEP]. A block may hold the end of one document and the start of the next, as in
  RoBERTa's FULL-SENTENCES packing and HF run_mlm's group_texts.
* The final partial chunk of each split is KEPT: no token is dropped, and a tiny validation set still yields
  one block. On disk it is padded to T with [PAD] (rows keep a fixed stride), but it is returned unpadded,
  [CLS] tail [SEP], so no returned row ever holds [PAD]: the collator pads a batch that holds it and masks
  the padding out of attention like any short example.
* Text that spells a special token ("[MASK]" inside a docstring) is tokenised as ordinary text, so the only
  special tokens in a block are the [CLS], [SEP] and [PAD] placed here.
* Speed: one worker thread runs the Rust tokenizer (all cores) while the main thread reads and writes, and for
  BERT tokenizers plain-ASCII words skip the Rust normalizer (exact, checked at run time; see `_Encoder`).
  Documents run through the tokenizer, numpy and the file; no Python loop touches single tokens.
* Without a validation corpus, a document is held out when a hash of its text falls in the first
  `validation_split_percentage` % of the hash range: deterministic, independent of document order, and
  duplicates of a text always land on the same side. If that leaves validation empty (a tiny corpus), the last
  training document is moved there instead.

Storage
-------
cache_dir/<fingerprint>/ holds train.bin and validation.bin (rows of T token ids, uint16 when the vocabulary
fits, else uint32, read back with np.memmap) and meta.json (counts, timings). Blocks are appended to the files
as batches are tokenised, so memory stays flat whatever the corpus size. The fingerprint covers the corpus
fingerprints, the tokenizer (its full tokenizer.json and special ids), T, the split settings and a format
version. The cache is built in a temporary folder and renamed into place: an interrupted run never leaves a
half-written cache, and a later run with the same inputs reuses it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import re
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numpy as np

from mlm.core.fsutil import publish_folder
from mlm.core.records import PIECE_CHARS, text_pieces
from mlm.pretrain.fast_encode import _Encoder
from mlm.errors import ConfigError, DataError

logger = logging.getLogger("mlm")

FORMAT_VERSION = 1
BATCH_DOCUMENTS = 1000        # documents handed to the Rust tokenizer at a time
BATCH_CHARS = 4_000_000       # ... or fewer when they are long, so a batch stays a few MB
SPLITS = ("train", "validation")


class PackedBlocks:
    """Token blocks of T ids in a binary file, read through np.memmap (nothing loaded up front).

    Every block is [CLS] ... [SEP] of length T, except the last one, which may be shorter (its [PAD] stays on disk).
    """

    def __init__(self, path: str, seq_length: int, dtype, num_tokens: int, last_length: Optional[int] = None):
        self.path = path
        self.seq_length = seq_length
        self.dtype = np.dtype(dtype)
        self.num_tokens = num_tokens
        self.last_length = seq_length if last_length is None else last_length  # the last row without its [PAD]
        row_bytes = seq_length * self.dtype.itemsize
        size = os.path.getsize(path)
        if size % row_bytes:
            raise DataError(f"{path}: {size} bytes is not a whole number of blocks: corrupt cache, delete its folder")
        self._len = size // row_bytes
        self._rows = None  # opened on first access, and again in each DataLoader worker

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index) -> dict:
        i = operator.index(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"block {index} out of range ({self._len} blocks)")
        row = self._data()[i]
        if i == self._len - 1:
            row = row[: self.last_length]
        return {"input_ids": np.array(row, dtype=np.int64)}  # (T,) int64, a copy rather than a view of the file

    def _data(self) -> np.ndarray:
        if self._rows is None:
            shape = (self._len, self.seq_length)
            # np.memmap refuses an empty file; an empty split is a valid (if useless) dataset.
            if self._len:
                self._rows = np.memmap(self.path, self.dtype, mode="r", shape=shape)
            else:
                self._rows = np.empty(shape, self.dtype)
        return self._rows

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_rows"] = None  # pickling a memmap would copy the whole file into the pickle
        return state

    def __repr__(self) -> str:
        return f"PackedBlocks({self._len} x {self.seq_length} {self.dtype.name}, {self.num_tokens} tokens, {self.path})"


# ------------------------------------------------------------------------------------------------ entry


def build_packed_dataset(train, validation, tokenizer, max_seq_length: int, cache_dir: str,
                         validation_split_percentage: float = 5) -> tuple[PackedBlocks, PackedBlocks]:
    """Tokenise and pack `train` (and `validation`, or a held-out part of train) into cache_dir, or reuse it."""
    if max_seq_length < 3:
        raise ConfigError(f"max_seq_length: must be >= 3 ([CLS] + a token + [SEP]), got {max_seq_length}")
    if not 0 <= validation_split_percentage < 100:
        raise ConfigError(f"validation_split_percentage: must be in [0, 100), got {validation_split_percentage}")
    specials = _special_ids(tokenizer)
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    encoder = _Encoder(tokenizer, dtype)
    holdout = float(validation_split_percentage) if validation is None else None
    fingerprint = _fingerprint(train, validation, encoder.full, specials, dtype, max_seq_length, holdout)
    final_dir = os.path.join(cache_dir, fingerprint)

    if not os.path.isfile(os.path.join(final_dir, "meta.json")):
        _build(train, validation, encoder, specials, max_seq_length, holdout, cache_dir, final_dir, fingerprint)
    else:
        logger.info("packing: reusing the cached blocks in %s", final_dir)
    return _open(final_dir)


def _open(folder: str) -> tuple[PackedBlocks, PackedBlocks]:
    damaged = f"{folder}/meta.json: damaged packing cache"
    try:
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as e:  # bad JSON or bytes: a damaged cache, not bad input
        raise DataError(f"{damaged} ({e}): delete {folder} and run again") from None
    blocks = []
    for split in SPLITS:
        path = os.path.join(folder, f"{split}.bin")
        if not os.path.isfile(path):
            raise DataError(f"{path}: missing from the packing cache: delete {folder} and run again")
        try:
            info, length = meta["splits"][split], meta["max_seq_length"]
            packed = PackedBlocks(path, length, meta["dtype"], info["num_tokens"], length - info["pad_tokens"])
            expected = info["blocks"]
        except (KeyError, TypeError) as e:
            raise DataError(f"{damaged} (no {e} for {split}): delete {folder} and run again") from None
        if len(packed) != expected:
            raise DataError(f"{path}: {len(packed)} blocks but meta.json says {expected}: delete {folder}")
        blocks.append(packed)
    return blocks[0], blocks[1]


def _special_ids(tokenizer) -> dict:
    ids = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("cls", "sep", "pad")}
    for name, value in ids.items():
        if value is None:
            raise ConfigError(f"tokenizer: has no {name}_token; packing writes [CLS] chunk [SEP] (+ [PAD]) blocks")
    return ids


def _fingerprint(train, validation, backend, specials, dtype, max_seq_length, holdout) -> str:
    # The tokenizer enters through its full tokenizer.json (vocabulary, normalizer, added tokens).
    parts = {
        "format": FORMAT_VERSION,
        "train": train.fingerprint(),
        "validation": validation.fingerprint() if validation is not None else None,
        "holdout_percentage": holdout,
        "tokenizer": hashlib.blake2b(backend.to_str().encode(), digest_size=16).hexdigest(),
        "specials": specials,
        "dtype": np.dtype(dtype).name,
        "max_seq_length": max_seq_length,
    }
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=10).hexdigest()


# ------------------------------------------------------------------------------------------------ build


def _build(train, validation, encoder, specials, max_seq_length, holdout, cache_dir, final_dir, fingerprint):
    from tqdm.auto import tqdm

    os.makedirs(cache_dir, exist_ok=True)
    tmp_dir = os.path.join(cache_dir, f".tmp-{fingerprint}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(tmp_dir)
    start = time.perf_counter()
    held = f", holding out {holdout:g}% of its documents for validation" if holdout else ""
    logger.info("packing: tokenising %s%s into blocks of %d -> %s", train.description, held, max_seq_length, final_dir)
    # One worker thread runs the Rust tokenizer (which releases the GIL and fans out over all cores) while
    # this thread reads documents and writes blocks, so the Python side hides behind the tokenizer.
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlm-tokenize")
    bar = tqdm(desc="packing", unit="doc", disable=None, dynamic_ncols=True)
    splits = {
        split: _Split(os.path.join(tmp_dir, f"{split}.bin"), encoder, specials, max_seq_length, worker, bar)
        for split in SPLITS
    }
    try:
        _route(train, validation, holdout, splits)
        for split in splits.values():
            split.close()
        bar.close()
        if splits["train"].documents == 0:
            raise DataError(
                f"{train.description}: the training split is empty after holding out validation documents "
                f"({splits['validation'].documents} documents in all; a .txt file without blank lines is one "
                "document: use --document_separator line, a --validation_file, or --validation_split_percentage 0)")
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": fingerprint,
            "max_seq_length": max_seq_length,
            "dtype": encoder.dtype.name,
            "train_corpus": train.description,
            "validation_corpus": validation.description if validation is not None else None,
            "validation_split_percentage": holdout,
            "seconds": round(time.perf_counter() - start, 2),
            "splits": {name: split.counts() for name, split in splits.items()},
        }
        with open(os.path.join(tmp_dir, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2)
        publish_folder(tmp_dir, final_dir, "meta.json")
    finally:
        worker.shutdown(wait=True, cancel_futures=True)
        bar.close()
        for split in splits.values():
            split.file.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)  # a no-op once renamed
    _log_built(meta, final_dir)


def _route(train, validation, holdout, splits) -> None:
    """Send every document to its split; hold out validation documents from train when asked."""
    if validation is not None:
        for doc in validation.documents():
            splits["validation"].add(doc)
    threshold = round(holdout * 100) if holdout else 0  # in units of 1/10,000 of the hash range
    pending = None  # the latest training document, kept back in case validation ends up empty
    for doc in train.documents():
        if threshold and _hash_bucket(doc) < threshold:
            splits["validation"].add(doc)
            continue
        if pending is not None:
            splits["train"].add(pending)
        pending = doc
    if pending is not None:
        empty_holdout = threshold and splits["validation"].added == 0
        splits["validation" if empty_holdout else "train"].add(pending)


def _hash_bucket(text: str) -> int:
    """0..9999 from the text itself, so the split does not depend on document order."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 10_000


def _log_built(meta: dict, folder: str) -> None:
    seconds = meta["seconds"]
    for name, counts in meta["splits"].items():
        logger.info(
            "packing: %s: %d documents -> %d tokens -> %d blocks of %d (%d pad)",
            name, counts["documents"], counts["text_tokens"], counts["blocks"], meta["max_seq_length"],
            counts["pad_tokens"],
        )
    total = sum(c["text_tokens"] for c in meta["splits"].values())
    logger.info("packing: done in %.1fs (%.0f tokens/s), cached in %s", seconds, total / max(seconds, 1e-9), folder)


class _Split:
    """Queues one split's documents, tokenises them a batch at a time and appends finished blocks to its file."""

    def __init__(self, path: str, encoder: _Encoder, specials: dict, seq_length: int, worker, progress):
        self.encoder = encoder
        self.worker = worker
        self.progress = progress
        self.cls, self.sep, self.pad = specials["cls"], specials["sep"], specials["pad"]
        self.dtype = encoder.dtype
        self.seq_length = seq_length
        self.file = open(path, "wb")
        self.queue: list[str] = []
        self.queued_docs: list[int] = []  # per queued piece, the number of the document it belongs to
        self.queued_chars = 0
        self.last_doc = -1  # the document of the last packed piece: the next piece continues it or starts one
        self.carry = np.empty(0, self.dtype)  # the stream's tail (< T-2 tokens) waiting for the next batch
        self.pending = None  # (future of the batch being tokenised, its size)
        self.added = 0  # documents received (some may still be queued or being tokenised)
        self.documents = self.text_tokens = self.blocks = self.pad_tokens = 0

    def add(self, text: str) -> None:
        for piece in text_pieces(text, PIECE_CHARS):
            self.queue.append(piece)
            self.queued_docs.append(self.added)
            self.queued_chars += len(piece)
            if len(self.queue) >= BATCH_DOCUMENTS or self.queued_chars >= BATCH_CHARS:
                self.flush()
        self.added += 1

    def flush(self) -> None:
        """Hand the queued batch to the worker, then pack the previous batch while the worker tokenises."""
        if not self.queue:
            return
        batch, docs = self.queue, np.asarray(self.queued_docs)
        self.queue, self.queued_docs, self.queued_chars = [], [], 0
        future = self.worker.submit(self.encoder, batch)
        self._pack_pending()
        self.pending = (future, docs)

    def _pack_pending(self) -> None:
        if self.pending is None:
            return
        future, docs = self.pending
        self.pending = None
        lengths, tokens = future.result()  # re-raises a tokenizer error here
        self.progress.update(len(np.unique(docs)))
        kept = lengths > 0  # a piece with no token (only control characters) leaves no trace
        lengths, docs = lengths[kept], docs[kept]
        if len(lengths):
            starts = docs != np.concatenate([[self.last_doc], docs[:-1]])  # pieces that begin a document
            self.last_doc = int(docs[-1])
            self._append(self._join(lengths, tokens, starts))

    def _join(self, lengths: np.ndarray, tokens: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """One flat array: [SEP] before every document except the split's first one; the pieces of one
        document follow each other directly."""
        step = lengths + starts
        stream = np.empty(len(tokens) + int(starts.sum()), self.dtype)
        sep_at = (np.cumsum(step) - step)[starts]  # a starting piece is preceded by its separator
        is_sep = np.zeros(len(stream), bool)
        is_sep[sep_at] = True
        stream[sep_at] = self.sep
        stream[~is_sep] = tokens
        if self.documents == 0 and starts[0]:
            stream = stream[1:]
        self.documents += int(starts.sum())
        self.text_tokens += len(tokens)
        return stream

    def _append(self, stream: np.ndarray) -> None:
        """Write every full block the carried tail + stream makes; keep the rest for the next batch."""
        body = self.seq_length - 2
        buffer = np.concatenate([self.carry, stream])
        full = len(buffer) // body
        if full:
            rows = np.empty((full, self.seq_length), self.dtype)  # (N, T)
            rows[:, 0] = self.cls
            rows[:, 1:-1] = buffer[: full * body].reshape(full, body)
            rows[:, -1] = self.sep
            self.file.write(rows.tobytes())
            self.blocks += full
        self.carry = buffer[full * body:].copy()

    def close(self) -> None:
        self.flush()
        self._pack_pending()
        if len(self.carry):  # the last, partial block: padded rather than dropped
            row = np.full(self.seq_length, self.pad, self.dtype)
            row[0] = self.cls
            row[1: 1 + len(self.carry)] = self.carry
            row[1 + len(self.carry)] = self.sep
            self.file.write(row.tobytes())
            self.blocks += 1
            self.pad_tokens = self.seq_length - 2 - len(self.carry)
            self.carry = self.carry[:0]
        self.file.close()

    def counts(self) -> dict:
        return {
            "documents": self.documents,
            "text_tokens": self.text_tokens,
            "blocks": self.blocks,
            "pad_tokens": self.pad_tokens,
            "num_tokens": self.blocks * self.seq_length - self.pad_tokens,
        }
