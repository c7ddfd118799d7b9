"""Reading NER data: CoNLL column files, JSON lines / parquet records and hub datasets, as
{"tokens": [...], "tags": [...]} sentences in IOB2 (tags.py converts other schemes)."""
from __future__ import annotations

import re
from typing import Optional

from finetune.config import is_test_split
from mlm.errors import DataError
from mlm.core.records import decoded_lines, iter_records, require_columns
from mlm.core.user_files import require_file
from finetune.ner.config import Config, DOCSTART, NOT_CONLL, RECORD_SUFFIXES, SPLITS, logger
from finetune.ner.tags import _convert_to_iob2


def load_splits(cfg: Config) -> tuple[dict[str, list[dict]], dict]:
    """{"train": [...], "validation": [...], "test": [...]} for the configured splits.

    Each example: {"tokens": [str], "tags": [IOB2 str], "_where": "path:line", "_lines": [line per word]}.
    """
    if cfg.dataset_name:
        splits = _load_hub(cfg)
    else:
        # A test file may hold words only (no gold): it is predicted, not scored.
        splits = {split: read_file(path, cfg, tags_required=not is_test_split(split)) for split, path in cfg.data_files()}
    return splits, {}  # nothing resolved from the data; max_train_samples / max_eval_samples: finetune/run.py


def read_file(path: str, cfg: Config, tags_required: bool = True) -> list[dict]:
    """Labelled sentences of one file (CoNLL columns, or JSON lines / parquet by name), tags in IOB2.
    Without tags_required, sentences may come without tags (words-only CoNLL, rows without a tags field)."""
    require_file(path)
    _refuse_csv(path, cfg)
    if path.lower().endswith(RECORD_SUFFIXES):
        sentences = _read_records(path, cfg, tags_required)
    else:
        sentences = _read_conll(path, cfg.token_column, cfg.tag_column, words_only_ok=not tags_required)
    if not sentences:
        raise DataError(f"{path}: no sentences found")
    _convert_to_iob2([s for s in sentences if "tags" in s], cfg.tag_scheme)
    return sentences


def _refuse_csv(path: str, cfg: Config) -> None:
    """A csv table is neither CoNLL columns nor text lines: read as either, its header would become a sentence."""
    if path.lower().removesuffix(".gz").endswith(".csv"):
        raise DataError(f"{path}: NER reads CoNLL column files (one word and its tag per line), JSON lines / parquet "
                        f"with {cfg.tokens_key!r} and {cfg.tags_key!r} lists (or {cfg.text_key!r} to predict), or "
                        "text lines (.txt), not csv tables")


def _read_conll(path: str, token_column: int, tag_column: int, words_only_ok: bool = False) -> list[dict]:
    """Sentences of a CoNLL column file, tags as written (converted later, once the scheme is known).

    words_only_ok (prediction): a file of one column holds words only; its sentences have no "tags".
    """
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    lines: list[int] = []
    n_columns = first_line = None
    words_only = False

    def end_sentence():
        # A -DOCSTART- line and the blank line after it would make an empty sentence: never emit one.
        if tokens:
            sentence = {"tokens": list(tokens), "_where": f"{path}:{lines[0]}", "_lines": list(lines)}
            if not words_only:
                sentence["tags"] = list(tags)
            sentences.append(sentence)
        tokens.clear()
        tags.clear()
        lines.clear()

    for line_no, line in enumerate(decoded_lines(path), 1):
        columns = _conll_columns(line)
        if not columns:
            end_sentence()
            continue
        if columns[0] == DOCSTART:
            end_sentence()
            continue
        if n_columns is None:
            words_only = words_only_ok and len(columns) == 1 and not line.lstrip().startswith(("{", "["))
            if words_only:
                token_column = tag_column = 0
            else:
                _check_conll_layout(path, line_no, line, columns, token_column, tag_column)
            n_columns, first_line = len(columns), line_no
        elif len(columns) != n_columns:
            raise DataError(
                f"{path}:{line_no}: {len(columns)} columns, but line {first_line} has {n_columns} "
                f"(every word line must have the same columns: {NOT_CONLL}, or a word containing a space?)"
            )
        tokens.append(columns[token_column])
        tags.append(columns[tag_column])
        lines.append(line_no)
    end_sentence()
    return sentences


def _conll_columns(line: str) -> list[str]:
    """Fields split at runs of ASCII spaces/tabs: a no-break space inside a word ("10\u00a0000") stays in it."""
    stripped = line.strip(" \t\r\n")
    return _COLUMN_SEPARATOR.split(stripped) if stripped else []


_COLUMN_SEPARATOR = re.compile(r"[ \t]+")


def _check_conll_layout(path, line_no, line, columns, token_column, tag_column) -> None:
    """Reject files that are not CoNLL columns, and column indices the file does not have, at the first line."""
    if line.lstrip().startswith(("{", "[")):
        raise DataError(
            f"{path}:{line_no}: looks like JSON, not CoNLL columns (name the file .jsonl with "
            f'{{"tokens": [...], "tags": [...]}} per line)'
        )
    n = len(columns)
    for name, index in (("token_column", token_column), ("tag_column", tag_column)):
        if not -n <= index < n:
            raise DataError(f"{path}:{line_no}: {name}={index} is out of range: the line has {n} columns")
    if token_column % n == tag_column % n:
        raise DataError(
            f"{path}:{line_no}: token_column and tag_column name the same column of {n}; a CoNLL file needs a "
            f"word column and a tag column ({NOT_CONLL}?)"
        )


def _read_records(path: str, cfg: Config, tags_required: bool = True) -> list[dict]:
    sentences, empty = [], []  # empty: the lines of rows without a word, which are skipped
    for line_no, row in iter_records(path):
        where = f"{path}:{line_no}"
        tags_key = _pick_tags_key(row, cfg.tags_key)
        require_columns(path, line_no, row, [cfg.tokens_key] + ([tags_key] if tags_required else []))
        tokens = row[cfg.tokens_key]
        _check_word_list(where, cfg.tokens_key, tokens, words=True)
        sentence = {"tokens": tokens, "_where": where, "_lines": [line_no] * len(tokens)}
        if tags_key in row:
            _check_word_list(where, tags_key, row[tags_key])
            if len(tokens) != len(row[tags_key]):
                raise DataError(f"{where}: {len(tokens)} tokens but {len(row[tags_key])} tags")
            sentence["tags"] = row[tags_key]
        if tokens:
            sentences.append(sentence)
        else:
            empty.append(line_no)
    if empty:
        logger.warning("%s: skipped %d rows without a word (first: %s:%d)", path, len(empty), path, empty[0])
    return sentences


def _pick_tags_key(row: dict, tags_key: str) -> str:
    # HF token-classification datasets call the column ner_tags; accept it without a flag.
    return "ner_tags" if tags_key not in row and "ner_tags" in row else tags_key


def _check_word_list(where: str, key: str, value, words: bool = False) -> None:
    """A list of strings; `words`: none of them empty or only spaces (the tokenizer would drop such a word, and
    its tag would shift onto the next one)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        hint = " (integer tags need their names: write the tag strings)" if isinstance(value, list) else ""
        raise DataError(f"{where}: {key!r} must be a list of strings{hint}")
    blank = next((i for i, v in enumerate(value) if not v.strip()), None) if words else None
    if blank is not None:
        raise DataError(f"{where}: {key!r}: word {blank} is {value[blank]!r}, empty or only spaces; every word needs "
                        "a visible character")


def _load_hub(cfg: Config) -> dict[str, list[dict]]:
    from mlm.core.hub import load_hub_dataset

    dataset = load_hub_dataset(cfg.dataset_name, cfg.dataset_config_name)
    splits = {}
    for split in SPLITS:
        if split not in dataset:
            continue
        data = dataset[split]
        name = f"{cfg.dataset_name}[{split}]"
        tags_key = _pick_tags_key(dict.fromkeys(data.column_names), cfg.tags_key)
        for key in (cfg.tokens_key, tags_key):
            if key not in data.column_names:
                raise DataError(f"{name}: no column {key!r} (columns: {', '.join(data.column_names)}); "
                                f"set --tokens_key / --tags_key")
        names = _class_label_names(data.features[tags_key])
        sentences = []
        for row_no, row in enumerate(data, 1):
            tags = [names[t] for t in row[tags_key]] if names else row[tags_key]
            where = f"{name}:{row_no}"
            _check_word_list(where, cfg.tokens_key, row[cfg.tokens_key], words=True)
            _check_word_list(where, tags_key, tags)
            if len(tags) != len(row[cfg.tokens_key]):
                raise DataError(f"{where}: {len(row[cfg.tokens_key])} tokens but {len(tags)} tags")
            if row[cfg.tokens_key]:
                sentences.append({"tokens": row[cfg.tokens_key], "tags": tags, "_where": where,
                                  "_lines": [row_no] * len(tags)})
        splits[split] = _convert_to_iob2(sentences, cfg.tag_scheme)
    if "train" not in splits:
        raise DataError(f"{cfg.dataset_name}: no 'train' split (has: {', '.join(dataset)})")
    return splits


def _class_label_names(feature) -> Optional[list[str]]:
    """Tag names of a sequence-of-ClassLabel feature, or None when the tags are already strings."""
    inner = getattr(feature, "feature", None)
    return list(inner.names) if inner is not None and hasattr(inner, "names") else None
