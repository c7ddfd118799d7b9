"""Where pretraining text comes from: local files, a Hugging Face hub dataset, or the embedded default corpus.

    train, validation = corpus_sources(train_file="data/*.txt,extra.jsonl")
    for doc in train.documents():    # a fresh stream of documents (str) on every call, never all in RAM
        ...
    train.fingerprint()              # changes when the content changes; keys the packing cache
    train.description                # one line for logs, e.g. "wiki.train.raw (10.9 MB)"

Inputs
------
* Plain text: `.txt`, `.txt.gz`, and any file that is not a table (e.g. WikiText's `.raw`). With
  `document_separator="blank_line"` documents are separated by blank (whitespace-only) lines and keep their
  inner line breaks; with `"line"` every non-blank line is a document. A document is cut at a line break once
  it passes 1,000,000 characters, so one file without blank lines cannot become a single giant document.
* Tables: `.jsonl` / `.json` (JSON lines), `.csv`, `.tsv`, `.parquet` (optionally `.gz`): one document per
  row, read from `text_column` (empty cells are skipped).
* `train_file` / `validation_file`: a path, a glob (`data/**/*.txt`), or several of either separated by commas.
* `dataset_name` (+ `dataset_config_name`): a hub dataset streamed with `datasets.load_dataset(...,
  streaming=True)`; its "validation" split is used when it has one. Needs the network (or a local cache).

The embedded default corpus (with neither `train_file` nor `dataset_name`): docstrings of the standard library and
installed packages, mlm/pretrain/default_corpus.py.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterator, Literal, Optional

from mlm.core.config import arg
from mlm.errors import ConfigError, DataError
from mlm.core.user_files import raw_lines
from mlm.core.records import TABLE_SUFFIXES, iter_records

DOCUMENT_SEPARATORS = ("blank_line", "line")
MAX_DOCUMENT_CHARS = 1_000_000  # a longer run of lines is cut at a line break (bounds memory per document)



@dataclass
class CorpusArgs:
    """Where the text comes from: the fields of `mlm pretrain` and `mlm tokenizer` that corpus_sources reads."""

    train_file: Optional[str] = arg(
        None, "Corpus: a file, a glob, or several separated by commas (.txt/.jsonl/.csv/.tsv/.parquet, .gz ok). "
        "Empty: the embedded default corpus (docstrings of the Python standard library and installed packages)."
    )
    dataset_name: Optional[str] = arg(None, "A hub dataset name instead of files (needs network), e.g. wikitext.")
    dataset_config_name: Optional[str] = arg(None, "Configuration of dataset_name, e.g. wikitext-103-raw-v1.")
    text_column: str = arg("text", "Text column of .jsonl/.csv/.tsv/.parquet files and hub datasets.")
    document_separator: Literal["blank_line", "line"] = arg(
        "blank_line", ".txt files: documents are separated by blank lines, or one document per line."
    )


def _digest(*parts) -> str:
    """A short stable hash of JSON-able parts."""
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class Corpus:
    """A re-iterable stream of documents. Subclasses set `description` and implement the two methods."""

    description: str = ""

    def documents(self) -> Iterator[str]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.description}>"


# ----------------------------------------------------------------------------------------------- files


class FileCorpus(Corpus):
    """Documents from local text or table files, read in the given order."""

    def __init__(self, paths: list[str], text_column: str = "text", document_separator: str = "blank_line"):
        if document_separator not in DOCUMENT_SEPARATORS:
            raise ConfigError(
                f"document_separator: expected one of {', '.join(DOCUMENT_SEPARATORS)}, got {document_separator!r}"
            )
        self.paths = list(paths)
        self.text_column = text_column
        self.document_separator = document_separator
        size = sum(os.path.getsize(p) for p in self.paths)
        if len(self.paths) == 1:
            self.description = f"{os.path.basename(self.paths[0])} ({_megabytes(size)})"
        else:
            self.description = f"{len(self.paths)} files, {_megabytes(size)} (first: {self.paths[0]})"
        self._hashes: dict[str, tuple] = {}  # path -> (size, mtime_ns, content hash): hash each file once

    def documents(self) -> Iterator[str]:
        count = 0
        for path in self.paths:
            docs = _table_documents(path, self.text_column) if _is_table(path) else _text_documents(
                path, self.document_separator
            )
            for doc in docs:
                count += 1
                yield doc
        if count == 0:
            where = self.paths[0] if len(self.paths) == 1 else f"{self.paths[0]} (and {len(self.paths) - 1} more files)"
            raise DataError(f"{where}: no text found (no non-blank document)")

    def fingerprint(self) -> str:
        # A full content hash: blake2b reads ~380 MB/s here, small next to tokenizing the same bytes, and it
        # makes the cache follow the content (a copied or touched file still hits, an edited one misses).
        return _digest("files", self.document_separator, self.text_column, MAX_DOCUMENT_CHARS,
                       [[_is_table(p), self._content_hash(p)] for p in self.paths])

    def _content_hash(self, path: str) -> str:
        """blake2b of the file, remembered while its size and mtime stay the same (fingerprint() is called often)."""
        stat = os.stat(path)
        cached = self._hashes.get(path)
        if cached and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            return cached[2]
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        self._hashes[path] = (stat.st_size, stat.st_mtime_ns, h.hexdigest())
        return h.hexdigest()


def _is_table(path: str) -> bool:
    name = path.lower().removesuffix(".gz")
    return name.endswith(TABLE_SUFFIXES)


def _text_documents(path: str, separator: str) -> Iterator[str]:
    """Documents of a text file. Lines are decoded one by one so a bad byte can be reported with its offset."""
    compressed = path.lower().endswith(".gz")
    offset = 0  # byte offset of the current line (in the decompressed stream for .gz)
    lines: list[str] = []
    chars = 0
    for line_no, raw in raw_lines(path):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            where = f"{'decompressed ' if compressed else ''}byte {offset + e.start}"
            raise DataError(f"{path}:{line_no}: not valid UTF-8 ({e.reason} at {where})") from None
        offset += len(raw)
        if line_no == 1:
            line = line.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not text
        if separator == "line":
            text = line.strip()
            if text:
                yield text
            continue
        if line.strip():
            line = line.rstrip("\r\n")
            lines.append(line)
            chars += len(line)
            if chars < MAX_DOCUMENT_CHARS:
                continue
        if lines:
            yield "\n".join(lines).strip()
            lines, chars = [], 0
    if lines:
        yield "\n".join(lines).strip()


def _table_documents(path: str, text_column: str) -> Iterator[str]:
    for line, row in iter_records(path):
        if text_column not in row:
            raise DataError(
                f"{path}:{line}: missing column {text_column!r} (columns: {', '.join(map(str, row))}); "
                f"set text_column"
            )
        value = row[text_column]
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{path}:{line}: column {text_column!r} holds {type(value).__name__}, expected text")
        value = value.strip()
        if value:
            yield value


def resolve_paths(spec: str, field: str = "train_file") -> list[str]:
    """Expand a path, a glob, or a comma-separated list of either into existing files (order kept, no repeats)."""
    paths: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        part = os.path.expanduser(part)
        if any(c in part for c in "*?["):
            matches = sorted(p for p in glob.glob(part, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataError(f"{part}: glob matches no file ({field})")
            paths += matches
        elif os.path.isdir(part):
            raise DataError(f"{part}: is a directory ({field}); pass a glob such as {os.path.join(part, '*.txt')}")
        elif not os.path.isfile(part):
            raise DataError(f"{part}: file not found ({field})")
        else:
            paths.append(part)
    if not paths:
        raise ConfigError(f"{field}: no path given")
    return list(dict.fromkeys(paths))


# ------------------------------------------------------------------------------------------------- hub


class HubCorpus(Corpus):
    """One split of a hub dataset, streamed (nothing downloaded up front)."""

    def __init__(self, dataset, name: str, config: Optional[str], split: str, text_column: str):
        self.dataset, self.name, self.config, self.split, self.text_column = dataset, name, config, split, text_column
        label = name + (f"/{config}" if config else "")
        self.description = f"hub dataset {label} [{split}] (streamed)"

    def documents(self) -> Iterator[str]:
        count = 0
        for index, row in enumerate(self.dataset):
            if self.text_column not in row:
                raise DataError(
                    f"{self.name}[{self.split}]:{index}: missing column {self.text_column!r} "
                    f"(columns: {', '.join(map(str, row))}); set text_column"
                )
            value = row[self.text_column]
            if isinstance(value, str) and value.strip():
                count += 1
                yield value.strip()
        if count == 0:
            raise DataError(f"{self.name}[{self.split}]: no text found in column {self.text_column!r}")

    def fingerprint(self) -> str:
        # Streaming exposes no content hash; the dataset's own metadata (sizes, version) is the best we have.
        info = getattr(self.dataset, "info", None)
        meta = None
        if info is not None:
            splits = {k: [v.num_bytes, v.num_examples] for k, v in (info.splits or {}).items()}
            meta = [str(info.version), info.dataset_size, info.download_size, splits]
        return _digest("hub", self.name, self.config, self.split, self.text_column, meta)


def _hub_corpora(name: str, config: Optional[str], text_column: str) -> tuple[HubCorpus, Optional[HubCorpus]]:
    from mlm.core.hub import load_hub_dataset

    splits = load_hub_dataset(name, config, streaming=True)
    if "train" not in splits:
        raise DataError(f"dataset_name {name!r}: no 'train' split (splits: {', '.join(splits)})")
    validation = splits.get("validation")
    return (
        HubCorpus(splits["train"], name, config, "train", text_column),
        HubCorpus(validation, name, config, "validation", text_column) if validation is not None else None,
    )


# ---------------------------------------------------------------------------------------------- entry


def corpus_sources(train_file: Optional[str] = None, validation_file: Optional[str] = None,
                   dataset_name: Optional[str] = None, dataset_config_name: Optional[str] = None,
                   text_column: str = "text", document_separator: str = "blank_line",
                   ) -> tuple[Corpus, Optional[Corpus]]:
    """(train, validation) corpora; validation is None when the packing step should hold out documents."""
    if document_separator not in DOCUMENT_SEPARATORS:
        raise ConfigError(
            f"document_separator: expected one of {', '.join(DOCUMENT_SEPARATORS)}, got {document_separator!r}"
        )
    if train_file and dataset_name:
        raise ConfigError("train_file and dataset_name are both set: choose one")
    validation: Optional[Corpus] = None
    if train_file:
        train: Corpus = FileCorpus(resolve_paths(train_file, "train_file"), text_column, document_separator)
    elif dataset_name:
        train, validation = _hub_corpora(dataset_name, dataset_config_name, text_column)
    else:
        from mlm.pretrain.default_corpus import DefaultCorpus  # (it builds on Corpus, defined here)

        train = DefaultCorpus()
    if validation_file:
        validation = FileCorpus(resolve_paths(validation_file, "validation_file"), text_column, document_separator)
    for corpus in (train, validation):
        if corpus is not None:
            _check_not_empty(corpus)
    return train, validation


def _check_not_empty(corpus: Corpus) -> None:
    """Read up to the first document so that an empty source or a bad column fails now, not mid-run."""
    stream = corpus.documents()
    try:
        next(stream, None)  # an empty corpus raises DataError from documents() itself
    finally:
        stream.close()
