"""Named-entity recognition as token classification: one tag per word, entities scored conlleval-style.

Run it (CoNLL-2003, three epochs):

    make finetune TASK=ner                                     # recipes/finetune/ner.yaml
    mlm finetune --task ner --recipe recipes/finetune/ner.yaml --model_name_or_path outputs/pretrain-demo
    mlm predict --model outputs/finetune-ner --text "John Smith visited Paris."   # or --input FILE

Data (`load_splits`):
  * CoNLL column files (`eng.train`, `*.conll`, `*.txt`, `*.tsv`): one word per line, columns separated by
    spaces or tabs, a blank line between sentences, `-DOCSTART-` lines skipped. The word and the tag are
    read from `token_column` and `tag_column` (Python indices, -1 = last column). `mlm predict --input`
    reads CoNLL files by suffix (.conll, .iob, .bio, .tsv, ...), with tags (shown as gold) or words only.
  * JSON lines / parquet (`*.jsonl`, `*.json`, `*.parquet`): one sentence per row,
    `{"tokens": [...], "tags": [...]}` (keys `tokens_key`, `tags_key`).
  * A hub dataset (`dataset_name`): columns `tokens_key` and `tags_key` (falling back to `ner_tags`);
    integer ClassLabel tags are mapped to their names.
  Tags may be IOB1 (the original CoNLL-2003), IOB2, IOBES, BILOU or IO (bare types: PER, LOC); every split
  is converted to IOB2 as it is read, so everything downstream (labels, model, metrics, predictions) speaks
  IOB2 only.

Model side (`encode` .. `predictions`): words are split into sub-words by the fast tokenizer; the label
sits on the first sub-word of each word (the others get -100, or the word's I- tag with
label_all_tokens). A sentence longer than max_seq_length becomes several overlapping windows, and each
word is predicted from the one window where it has the most context on both sides (see `_owners`).

Output (`predictions`, one JSON record per sentence): tokens, predicted_tags (IOB2; the argmax is repaired
so that an I-X not continuing an X entity becomes B-X), gold_tags when known, and entities
[{type, start_word, end_word (exclusive), text, score}], score = mean over the entity's words of the
probability the model gave its chosen label. Raw text (`mlm predict --text`) is split into words by
`split_words`, and its entities also carry character offsets start/end (exclusive) into the text.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from finetune.config import FinetuneConfig, is_test_split
from finetune.metrics import chunks, convert_tags, entity_scores, to_iob2
from mlm.core.config import arg
from mlm.errors import ConfigError, DataError
from mlm.core.records import decoded_lines, iter_records, require_columns
from mlm.core.hf import pre_tokenizer_steps
from mlm.core.user_files import require_file

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

    def check_lengths(self, max_positions: Optional[int] = None) -> None:
        super().check_lengths(max_positions)
        if self.stride is None:  # the default, resolved here so that it always fits max_seq_length
            self.stride = min(32, self.max_seq_length // 4)
        if self.stride < 0:
            raise ConfigError(f"stride: must be >= 0, got {self.stride}")
        # Overlap at most half a window, so every window moves on by at least half a window of new words.
        if 2 * self.stride > self.max_seq_length:
            raise ConfigError(
                f"stride: {self.stride} is more than half of max_seq_length={self.max_seq_length}; use at most "
                f"{self.max_seq_length // 2}"
            )


# ----------------------------------------------------------------------------------------------- reading


def load_splits(cfg: Config) -> dict[str, list[dict]]:
    """{"train": [...], "validation": [...], "test": [...]} for the configured splits.

    Each example: {"tokens": [str], "tags": [IOB2 str], "_where": "path:line", "_lines": [line per word]}.
    """
    if cfg.dataset_name:
        splits = _load_hub(cfg)
    else:
        # A test file may hold words only (no gold): it is predicted, not scored.
        splits = {split: read_file(path, cfg, tags_required=not is_test_split(split)) for split, path in cfg.data_files()}
    return splits  # max_train_samples / max_eval_samples are applied by finetune/run.py


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
    import datasets

    try:
        dataset = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config_name)
    except Exception as e:  # offline, unknown name, bad config: one line for the user
        raise DataError(f"{cfg.dataset_name}: could not load the dataset ({type(e).__name__}: {e})") from None
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


# ------------------------------------------------------------------------------------------- tag schemes

# The B/I/E/S prefixes each scheme may use; anything else is an error, not a silent guess.
SCHEME_PREFIXES = {"iob1": "BI", "iob2": "BI", "iobes": "BIES", "bilou": "BILU"}


def detect_scheme(tag_sequences: list[list[str]]) -> str:
    """iobes if any E-/S- tag; bilou if any L-/U- tag; io if no tag has a prefix at all; else iob1 if some
    entity starts with I- (as in CoNLL-2003); else iob2.

    iob1 and iob2 convert to IOB2 by the same rule, so the distinction only matters for messages.
    """
    return explain_scheme(tag_sequences)[0]


def explain_scheme(tag_sequences: list[list[str]]) -> tuple[str, str]:
    """(detect_scheme's choice, why: the tag that decided it), for the log."""
    iob1 = prefixed = bare = None
    for tags in tag_sequences:
        previous = "O"
        for tag in tags:
            if tag[:2] in ("E-", "S-"):
                return "iobes", f"an E-/S- tag ({tag})"
            if tag[:2] in ("L-", "U-"):
                return "bilou", f"an L-/U- tag ({tag})"
            if tag.startswith("I-") and previous[2:] != tag[2:] and iob1 is None:
                iob1 = f"{tag} after {previous}"
            if tag != "O":
                has_prefix = tag[1:2] == "-" and tag[0] in "BI"  # "B-" too: a malformed prefixed tag
                if has_prefix:
                    prefixed = prefixed or tag
                else:
                    bare = bare or tag
            previous = tag
    if bare and not prefixed:
        return "io", f"no tag has a B-/I- prefix ({bare})"
    if iob1:
        return "iob1", f"an entity starts with I- ({iob1})"
    return "iob2", "every entity starts with B-" if prefixed else "every tag is O"


def _convert_to_iob2(sentences: list[dict], scheme: str) -> list[dict]:
    """Check every tag against the scheme (auto: detected over the whole file), then rewrite it in IOB2, in place."""
    detected = scheme == "auto"
    if detected:
        scheme, why = explain_scheme([s["tags"] for s in sentences])
        if sentences:
            logger.info("%s: tag_scheme auto -> %s: %s", sentences[0].get("_where", "").rpartition(":")[0] or "data", scheme, why)
    allowed = SCHEME_PREFIXES.get(scheme)  # io: any label is a bare entity type
    how = " (detected from the file; set tag_scheme to choose)" if detected else ""
    if scheme in ("iob1", "iob2"):
        _warn_entities_starting_with_i(sentences)
    for s in sentences:
        for i, tag in enumerate(s["tags"]):
            if allowed and tag != "O" and not (len(tag) > 2 and tag[0] in allowed and tag[1] == "-"):
                expected = "O or " + "/".join(f"{p}-TYPE" for p in allowed)
                raise DataError(f"{_word_where(s, i)}: tag {tag!r} is not {scheme}{how}: expected {expected}")
        if scheme in ("iobes", "bilou"):
            _check_transitions(s, scheme, how)
        # Rewritten from the chunks as conlleval reads them, so the result is always valid IOB2.
        s["tags"] = convert_tags(s["tags"], scheme, "iob2")
    return sentences


def _warn_entities_starting_with_i(sentences: list[dict]) -> None:
    """An I-X that starts an entity (after O, or B-LOC I-PER) is read as B-X, as conlleval does: the rule in IOB1,
    but in a file that mostly starts entities with B- (IOB2) likely a mistake, so it is warned about there."""
    starts = []  # (file:line, "previous tag") of every entity start, and its prefix
    for s in sentences:
        for i, (previous, tag) in enumerate(zip(["O", *s["tags"]], s["tags"])):
            if tag[:2] in ("B-", "I-") and previous[2:] != tag[2:]:
                starts.append((tag[0], _word_where(s, i), f"{previous} {tag}"))
    with_i = [(where, pair) for prefix, where, pair in starts if prefix == "I"]
    if with_i and len(with_i) * 2 < len(starts):
        where, pair = with_i[0]
        logger.warning("%s: %d tags I-X continue no X entity though the file starts entities with B- (first: %s, "
                       "%s); each was read as the start of a new entity, B-X", where.rpartition(":")[0], len(with_i),
                       where, pair)


def _check_transitions(sentence: dict, scheme: str, how: str) -> None:
    """IOBES / BILOU say where every entity ends: B-X continues with I-X or ends with E-X / L-X, a single word is
    S-X / U-X, and I-/E-/L- never start one. Anything else (a BIO file read as BILOU, IOB1 tags in an IOBES file)
    is an error at its word, not a guess."""
    last, single = ("E", "S") if scheme == "iobes" else ("L", "U")
    tags = sentence["tags"]
    open_type = None  # the type of the entity a B-/I- tag left open
    for i, tag in enumerate([*tags, "O"]):  # the sentence end must find no entity open
        prefix, type_ = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if open_type is not None and (prefix not in ("I", last) or type_ != open_type):
            expected = f"I-{open_type} or {last}-{open_type}"
            got = "the sentence end" if i == len(tags) else repr(tag)
            raise DataError(f"{_word_where(sentence, min(i, len(tags) - 1))}: {got} after {tags[i - 1]!r} is not "
                            f"{scheme}{how}: expected {expected}")
        if open_type is None and prefix in ("I", last):
            previous = tags[i - 1] if i else "the sentence start"
            raise DataError(f"{_word_where(sentence, i)}: tag {tag!r} after {previous!r} is not {scheme}{how}: an "
                            f"entity starts with B- or {single}-")
        open_type = type_ if prefix in ("B", "I") else None


def _word_where(example: dict, i: int) -> str:
    """'path:line' of word i (CoNLL files have one line per word; other sources one line per sentence)."""
    lines = example.get("_lines")
    if not lines:
        return example.get("_where", "<input>")
    path = example["_where"].rpartition(":")[0]
    return f"{path}:{lines[i]}"


# ------------------------------------------------------------------------------------------------ labels


def label_list(train_examples: list[dict], cfg: Config) -> list[str]:
    """["O", "B-T1", "I-T1", "B-T2", ...]: entity types sorted, both B- and I- for every type seen.

    Both prefixes even when train only shows one, so the model can predict a whole entity of any type.
    """
    types = sorted({tag[2:] for ex in train_examples for tag in ex["tags"] if tag != "O"})
    if not types:
        source = train_examples[0]["_where"].rpartition(":")[0] if train_examples else "training data"
        raise DataError(f"{source}: no entity tags (every tag is O): nothing to learn")
    return ["O"] + [f"{prefix}-{t}" for t in types for prefix in "BI"]


def model_kwargs(cfg: Config, labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


# ---------------------------------------------------------------------------------------------- features


def encode(examples: list[dict], tokenizer, cfg: Config, labels: list[str], with_labels: bool) -> list[dict]:
    """Sentences -> model windows, with the bookkeeping to map token outputs back to words.

    Gold tags of a type unseen in training raise DataError (file:line of the word), with or without labels.

    Each feature: input_ids, attention_mask, [token_type_ids], [labels], plus
      example_index  the sentence it came from
      word_ids       per token, the index of its word in the sentence (None for [CLS]/[SEP])
      owned_words    the words this window predicts (each word is owned by exactly one window)
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("tokenizer: NER needs a fast tokenizer (word_ids); load it with AutoTokenizer")
    label2id = {label: i for i, label in enumerate(labels)}
    prefix, suffix = _special_frame(tokenizer)
    budget = cfg.max_seq_length - len(prefix) - len(suffix)  # content tokens per window
    # One batched call for all sentences, without specials: windows are cut from these token lists.
    words = [ex["tokens"] for ex in examples]
    if _marks_spaces_in_tokens(tokenizer):  # byte-level BPE: "Smith" alone is "S mith", " Smith" is "ĠSmith"
        words = [[" " + word for word in sentence] for sentence in words]
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    with_types = "token_type_ids" in tokenizer.model_input_names
    features = []
    for index, ex in enumerate(examples):
        word_tokens = _group_by_word(encoded["input_ids"][index], encoded.word_ids(index), len(ex["tokens"]))
        word_tokens = [ids[:budget] for ids in word_tokens]  # a single word longer than a window is cut
        if with_labels and "tags" not in ex:
            raise DataError(f"{ex.get('_where', '<input>')}: no tags to train on")
        # Gold tags are checked even without labels: evaluation would score a type the model cannot predict.
        tag_ids = _tag_ids(ex, label2id) if "tags" in ex else None
        lengths = [len(ids) for ids in word_tokens]
        windows = make_windows(lengths, budget, cfg.stride)
        owners = _owners(lengths, windows)
        for k, (start, end) in enumerate(windows):
            word_ids = [None] * len(prefix)
            for w in range(start, end):
                word_ids += [w] * lengths[w]
            word_ids += [None] * len(suffix)
            input_ids = prefix + [t for w in range(start, end) for t in word_tokens[w]] + suffix
            feature = {
                "input_ids": input_ids,
                "attention_mask": [1] * len(input_ids),
                "example_index": index,
                "word_ids": word_ids,
                "owned_words": [w for w in range(start, end) if owners[w] == k],
            }
            if with_types:
                feature["token_type_ids"] = [0] * len(input_ids)
            if with_labels:
                feature["labels"] = _token_labels(word_ids, tag_ids, labels, label2id, cfg.label_all_tokens)
            features.append(feature)
    return features


def _marks_spaces_in_tokens(tokenizer) -> bool:
    """Byte-level BPE (RoBERTa, GPT-2) without add_prefix_space: a word's tokens depend on the space before
    it, which split words do not carry, so each one needs it back (what add_prefix_space=True does)."""
    return any(step.get("type") == "ByteLevel" and not step.get("add_prefix_space", False)
               for step in pre_tokenizer_steps(tokenizer))


def _special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single sequence ([CLS] / [SEP] for BERT)."""
    enc = tokenizer(["a"], is_split_into_words=True)
    word_ids = enc.word_ids()
    first = word_ids.index(0)
    last = len(word_ids) - 1 - word_ids[::-1].index(0)
    return list(enc["input_ids"][:first]), list(enc["input_ids"][last + 1:])


def _group_by_word(input_ids: list[int], word_ids: list, n_words: int) -> list[list[int]]:
    """Token ids of each word; [] for a word that tokenizes to nothing (zero-width or control characters)."""
    groups: list[list[int]] = [[] for _ in range(n_words)]
    for token, w in zip(input_ids, word_ids):
        if w is not None:
            groups[w].append(token)
    return groups


def _tag_ids(ex: dict, label2id: dict) -> list[int]:
    ids = []
    for i, tag in enumerate(ex["tags"]):
        if tag not in label2id:
            raise DataError(
                f"{_word_where(ex, i)}: tag {tag!r} of word {ex['tokens'][i]!r} was never seen in the training data "
                f"(labels: {', '.join(label2id)})"
            )
        ids.append(label2id[tag])
    return ids


def _token_labels(word_ids, tag_ids, labels, label2id, label_all_tokens) -> list[int]:
    """The word's label on its first sub-word; later sub-words get -100, or the word's I- tag."""
    out = []
    previous = None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != previous:
            out.append(tag_ids[w])
        elif label_all_tokens:
            tag = labels[tag_ids[w]]
            out.append(label2id["I-" + tag[2:]] if tag.startswith("B-") else tag_ids[w])
        else:
            out.append(IGNORE)
        previous = w
    return out


def make_windows(lengths: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of the windows of a sentence whose words have `lengths` sub-words.

    Windows start and end at word boundaries, hold at most `budget` sub-words, and each one starts as far
    back as possible while overlapping the previous by at most `stride` sub-words (always moving on by
    at least one word). Words longer than `budget` must have been cut to it.
    """
    n = len(lengths)
    if sum(lengths) <= budget:
        return [(0, n)]
    windows = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and used + lengths[end] <= budget:
            used += lengths[end]
            end += 1
        windows.append((start, end))
        if end == n:
            return windows
        next_start, overlap = end, 0
        while next_start - 1 > start and overlap + lengths[next_start - 1] <= stride:
            next_start -= 1
            overlap += lengths[next_start]
        start = next_start


def _owners(lengths: list[int], windows: list[tuple[int, int]]) -> list[Optional[int]]:
    """For each word, the window that predicts it: the one where it has the most context.

    A word's context in a window is min(sub-words before it, sub-words after it) inside that window (the
    "max context" rule of BERT's SQuAD code): a word near a cut edge sees only one side, so it is taken
    from the window where it sits most centrally. Ties go to the earlier window. Words with no sub-words
    are owned by nobody and predicted "O".
    """
    best: list[Optional[int]] = [None] * len(lengths)
    best_score = [-1] * len(lengths)
    for k, (start, end) in enumerate(windows):
        total = sum(lengths[start:end])
        before = 0
        for w in range(start, end):
            if lengths[w]:
                score = min(before, total - before - lengths[w])
                if score > best_score[w]:
                    best[w], best_score[w] = k, score
            before += lengths[w]
    return best


def collate(features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
    """Right-pad to the longest feature (outputs() relies on right padding); labels padded with -100."""
    longest = max(len(f["input_ids"]) for f in features)
    pads = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0,
            "token_type_ids": tokenizer.pad_token_type_id, "labels": IGNORE}
    batch = {}
    for key, pad in pads.items():
        if key in features[0]:
            rows = [f[key] + [pad] * (longest - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)  # (B, T)
    return batch


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


TARGETS = ("labels",)  # the batch keys loss_of reads: evaluation features that have them also give a loss


def forward(model, batch: dict) -> torch.Tensor:
    """(B, T, C) logits in fp32 (a bf16 autocast does not round the loss)."""
    return model(**_model_inputs(batch)).logits.float()


def loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return loss_of(forward(model, batch), batch)


def loss_of(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over labelled sub-words, how many there are) for exact global averaging."""
    labels = batch["labels"]  # (B, T)
    # Sum (not mean) so a batch with no labels gives 0, not NaN.
    total = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return total, (labels != IGNORE).sum()


@torch.no_grad()
def outputs(model, batch: dict) -> list[np.ndarray]:
    return outputs_of(forward(model, batch), batch)


def outputs_of(logits: torch.Tensor, batch: dict) -> list[np.ndarray]:
    """Per feature, its (T_i, C) logits as float32 numpy, padding cut off."""
    logits = logits.cpu().numpy()  # (B, T, C)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    return [logits[i, :n] for i, n in enumerate(lengths)]


# ----------------------------------------------------------------------------------------- predictions


def predictions(
    examples: list[dict], features: list[dict], outputs: list, cfg: Config, labels: list[str]
) -> list[dict]:
    """One record per sentence: tags per word (valid IOB2) and the entities they make.

    Entity score: the mean, over the entity's words, of the softmax probability of the label the model
    chose for that word (its argmax, before the IOB2 repair).
    """
    word_logits = _word_logits(examples, features, outputs)
    records = []
    for ex, logits in zip(examples, word_logits):
        n = len(ex["tokens"])
        tags, confidence = ["O"] * n, np.zeros(n)
        for w, row in logits.items():
            probs = _softmax(row)
            best = int(probs.argmax())
            tags[w], confidence[w] = labels[best], float(probs[best])
        _fill_words_without_pieces(tags, confidence, logits)
        tags = to_iob2(tags)  # an I-X after O or after another type becomes B-X
        record = {}
        if "text" in ex:
            record["text"] = ex["text"]
        record["tokens"] = ex["tokens"]
        record["predicted_tags"] = tags
        if "tags" in ex or "gold_tags" in ex:
            record["gold_tags"] = ex.get("tags", ex.get("gold_tags"))
        if "_where" in ex:  # file:line, to join predictions back to input rows
            record["source"] = ex["_where"]
        # chunks: (type, start_word, end_word exclusive) in sentence order.
        record["entities"] = [_entity(ex, kind, start, end, confidence) for kind, start, end in chunks(tags)]
        records.append(record)
    return records


def _fill_words_without_pieces(tags: list[str], confidence: np.ndarray, predicted: dict) -> None:
    """A word the tokenizer maps to no piece (a lone combining mark, a zero-width space) has no logits: inside
    an entity (the next predicted word continues the previous one's type) it is I-X, else O."""
    known = sorted(predicted)
    for w in range(len(tags)):
        if w in predicted:
            continue
        i = bisect.bisect_left(known, w)
        before, after = (known[i - 1] if i else None), (known[i] if i < len(known) else None)
        if before is not None and after is not None and tags[after].startswith("I-") \
                and tags[before] != "O" and tags[before][2:] == tags[after][2:]:
            tags[w], confidence[w] = tags[after], confidence[after]


def _word_logits(examples, features, outputs) -> list[dict[int, np.ndarray]]:
    """Per example, {word: logits of its first sub-word in the window that owns it}."""
    per_example: list[dict[int, np.ndarray]] = [{} for _ in examples]
    for feature, logits in zip(features, outputs):
        owned = set(feature["owned_words"])
        previous = None
        for t, w in enumerate(feature["word_ids"]):
            if w is not None and w != previous and w in owned:
                per_example[feature["example_index"]][w] = np.asarray(logits[t])
            previous = w
    return per_example


def _softmax(row: np.ndarray) -> np.ndarray:
    z = np.exp(row - row.max())
    return z / z.sum()


def _entity(ex: dict, kind: str, start: int, end: int, confidence: np.ndarray) -> dict:
    """end_word and end are exclusive: tokens[start_word:end_word], text[start:end]."""
    entity = {"type": kind, "start_word": start, "end_word": end,
              "text": " ".join(ex["tokens"][start:end]),
              "score": round(float(confidence[start:end].mean()), 6)}
    if "offsets" in ex:
        begin, finish = ex["offsets"][start][0], ex["offsets"][end - 1][1]
        entity.update(start=begin, end=finish, text=ex["text"][begin:finish])
    return entity


def metrics(examples: list[dict], predictions: list[dict], cfg: Config, labels: list[str]) -> dict:
    """conlleval entity precision / recall / F1 (micro), token accuracy and per-type scores."""
    gold = [ex["tags"] for ex in examples if "tags" in ex]
    if not gold:
        return {}
    pred = [p["predicted_tags"] for ex, p in zip(examples, predictions) if "tags" in ex]
    return entity_scores(gold, pred)


# ----------------------------------------------------------------------------------------- raw input

def split_words(text: str) -> tuple[list[str], list[list[int]]]:
    """Words of raw text, the way NER corpora (CoNLL, OntoNotes: Penn Treebank style) tokenise, and their
    [start, end) offsets.

    Whitespace separates words; punctuation and symbols at a word's edges are words of their own ("Paris," ->
    Paris ,), a run of one mark as one word ("--", "..."); inside a word they stay ("Boutros-Ghali", "10,000").
    Abbreviations keep their period ("U.S.", "J.", "St."), and clitics are split off ("Clinton's" -> Clinton
    's, "don't" -> do n't): a model trained on such words labels only their first piece, so splitting text
    otherwise would leave pieces unpredicted. CJK ideographs are one word each (as in BERT and Chinese NER
    data); combining marks (Devanagari vowel signs, decomposed accents) belong to the word they follow.
    """
    spans: list[tuple[int, int]] = []
    for chunk in _CHUNK_RE.finditer(text):
        start, end = chunk.span()
        while start < end and _is_edge_punctuation(text[start]):  # leading marks, a run of one mark at a time
            run = start + 1
            while run < end and text[run] == text[start]:
                run += 1
            spans.append((start, run))
            start = run
        trailing: list[tuple[int, int]] = []
        while end > start and _is_edge_punctuation(text[end - 1]) and not _is_abbreviation(text[start:end]):
            run = end - 1
            while run > start and text[run - 1] == text[end - 1]:
                run -= 1
            trailing.append((run, end))
            end = run
        clitic = _CLITIC_RE.search(text, start, end)
        if clitic and clitic.start() > start:
            trailing.append((clitic.start(), end))
            end = clitic.start()
        if start < end:
            spans.append((start, end))
        spans.extend(reversed(trailing))
    return [text[s:e] for s, e in spans], [[s, e] for s, e in spans]


def _is_abbreviation(word: str) -> bool:
    return bool(_ABBREVIATION_RE.fullmatch(word)) or word.lower() in _TITLES


# Abbreviations with a final period: U.S., e.g., Ph.D., and initials: J. (not "said...")
_ABBREVIATION_RE = re.compile(r"(?:[^\W\d_]{1,3}\.){2,}|[^\W\d_]\.")
# Titles and company forms written with a period, kept whole as the Penn Treebank does.
_TITLES = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "gen.", "col.", "lt.", "sgt.", "capt.", "gov.",
           "sen.", "rep.", "rev.", "inc.", "corp.", "co.", "ltd.", "bros.", "no.", "vs.", "mt.", "ft.", "jan.", "feb.",
           "mar.", "apr.", "jun.", "jul.", "aug.", "sep.", "sept.", "oct.", "nov.", "dec."}
# English clitics split off the word before them: 's 're 've 'll 'd 'm n't (straight or curly apostrophe).
_CLITIC_RE = re.compile(r"(?:['\u2019](?:s|re|ve|ll|d|m)|n['\u2019]t)\Z", re.IGNORECASE)
# A run of non-space characters, or one CJK ideograph (CJK Unified Ideographs, Extension A, Compatibility).
_CHUNK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def _is_edge_punctuation(char: str) -> bool:
    return unicodedata.category(char)[0] in "PS"  # punctuation and symbols ($, %, emoji)


def _text_example(text: str, where: str) -> dict:
    tokens, offsets = split_words(text)
    return {"text": text, "tokens": tokens, "offsets": offsets, "_where": where}


def examples_from_text(cfg: Config, **fields) -> list[dict]:
    """`mlm predict --text "..."`: one example per text (a string or a list of strings)."""
    text = fields.get("text")
    if text is None:
        raise ConfigError("text: NER prediction needs --text (or --input FILE)")
    texts = [text] if isinstance(text, str) else list(text)
    return [_text_example(t, f"<text {i + 1}>") for i, t in enumerate(texts)]


def examples_from_file(path: str, cfg: Config) -> list[dict]:
    """`mlm predict --input FILE`: JSON lines / parquet with "text" (or pre-split "tokens", optionally "tags"),
    CoNLL columns (.conll, .iob, .bio, .tsv, ...: word and tag columns, or words only; under any other name when
    its lines end in tags, like eng.testb), or plain text, one text per non-blank line."""
    require_file(path)
    _refuse_csv(path, cfg)
    if path.lower().endswith(RECORD_SUFFIXES):
        return _examples_from_records(path, cfg)
    if path.lower().removesuffix(".gz").endswith(CONLL_SUFFIXES) or _looks_like_conll(path, cfg.tag_column):
        return _as_shown_gold(_read_conll(path, cfg.token_column, cfg.tag_column, words_only_ok=True), cfg)
    examples = []
    for line_no, line in enumerate(decoded_lines(path), 1):
        if line.strip():
            examples.append(_text_example(line.rstrip("\r\n"), f"{path}:{line_no}"))
    return examples


def read_labelled(path: str, cfg: Config) -> list[dict]:
    """`mlm evaluate --input FILE`: tagged sentences, read as fine-tuning reads a validation file."""
    return read_file(path, cfg, tags_required=True)


def _examples_from_records(path: str, cfg: Config) -> list[dict]:
    examples = []
    for line_no, row in iter_records(path):
        where = f"{path}:{line_no}"
        if cfg.text_key in row:
            if not isinstance(row[cfg.text_key], str):
                raise DataError(f"{where}: {cfg.text_key!r} must be a string")
            examples.append(_text_example(row[cfg.text_key], where))
            continue
        if cfg.tokens_key not in row:
            raise DataError(f"{where}: needs {cfg.text_key!r} (raw text) or {cfg.tokens_key!r} (list of words)")
        _check_word_list(where, cfg.tokens_key, row[cfg.tokens_key], words=True)
        example = {"tokens": row[cfg.tokens_key], "_where": where}
        tags_key = _pick_tags_key(row, cfg.tags_key)
        if tags_key in row:
            _check_word_list(where, tags_key, row[tags_key])
            if len(row[tags_key]) != len(example["tokens"]):
                raise DataError(f"{where}: {len(example['tokens'])} tokens but {len(row[tags_key])} tags")
            example["tags"] = row[tags_key]
            example["_lines"] = [line_no] * len(example["tokens"])
        examples.append(example)
    return _as_shown_gold(examples, cfg)


_TAG_RE = re.compile(r"O|[%s]-\S+" % "".join(sorted(set("".join(SCHEME_PREFIXES.values())))))


def _looks_like_conll(path: str, tag_column: int) -> bool:
    """Word lines whose tag column holds tags, or a -DOCSTART- line, in the first 200 lines: CoNLL, whatever
    the file is called (raw text lines do not all end in O / B-X)."""
    seen = 0
    for line in itertools.islice(decoded_lines(path), 200):
        columns = _conll_columns(line)
        if not columns:
            continue
        if columns[0] == DOCSTART:
            return True
        if len(columns) < 2 or not -len(columns) <= tag_column < len(columns) \
                or not _TAG_RE.fullmatch(columns[tag_column]):
            return False
        seen += 1
    return seen > 0


def _as_shown_gold(examples: list[dict], cfg: Config) -> list[dict]:
    """Prediction inputs: gold tags in IOB2 like training data, kept as "gold_tags" to show next to the
    predicted ones; not "tags", which encode() would check against the model's labels (a type the model
    never saw must not stop a prediction)."""
    labelled = [ex for ex in examples if "tags" in ex]
    if labelled:
        _convert_to_iob2(labelled, cfg.tag_scheme)
    for ex in labelled:
        ex["gold_tags"] = ex.pop("tags")
    return examples
