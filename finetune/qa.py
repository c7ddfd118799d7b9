"""Extractive question answering (SQuAD v1.1 / v2.0): predict the answer as a span of the context.

The model reads "[CLS] question [SEP] context [SEP]" and scores every token as the start and as the end
of the answer. A context longer than max_seq_length is read in overlapping windows (doc_stride tokens
shared between neighbours), so one example becomes several features; predictions() gathers the windows
of each example again and cuts the best span out of the ORIGINAL context by character offsets.
With version 2 (unanswerable questions) the span [CLS]..[CLS] means "no answer".

    make finetune TASK=qa                                  # recipes/finetune/qa.yaml
    mlm finetune --task qa --recipe recipes/finetune/qa.yaml --model_name_or_path DIR
    mlm predict --model outputs/finetune-qa --question "..." --context "..."

Data (train_file / validation_file / test_file):
  * SQuAD JSON, v1.1 or v2.0: {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
    "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}; v2's plausible_answers are ignored.
  * JSON lines, a JSON array of records or parquet: {"id", "question", "context", "answers": {"text": [...],
    "answer_start": [...]}} per row (the Hugging Face layout), or "answers": [{"text", "answer_start"}, ...];
    "title" is optional, and "id" too (default: the line number). [] or empty texts, or "is_impossible":
    true, mean "no answer" (v2). A test file may have no "answers": it is predicted, not scored.
  * a hub dataset (dataset_name, e.g. squad / squad_v2) with the same columns.
With only the official dev file at hand, split_articles "38:10" trains on its first 38 articles and
evaluates on the next 10 (whole articles on each side, so no paragraph leaks across the split).

Every example is {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]},
"title"?, "_where"}. Answer texts are trimmed of surrounding spaces. An answer_start that does not point at
its text is moved to the nearest whole-word occurrence of the text in the context; an answer whose text is
not in the context keeps answer_start -1: such examples are dropped from training and left out of the
evaluation loss (EM/F1 still use the text).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from finetune.config import FinetuneConfig, is_test_split
from mlm.core.config import arg
from mlm.errors import ConfigError, DataError
from mlm.core.records import iter_records
from mlm.core.user_files import parse_json, read_text, require_file

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


# ----------------------------------------------------------------------------------------------- reading


def load_splits(cfg: Config) -> dict[str, list[dict]]:
    """Raw examples of the configured splits, validated, answer offsets checked, v2 mode resolved.

    Side effect: cfg.version_2_with_negative is set to True/False when it was None (auto), so the
    saved run config and `mlm predict` make the same choice as training.
    """
    if cfg.dataset_name is not None and cfg.train_file is None:
        splits = _load_hub(cfg)
    else:
        splits = {}
        for split, path in cfg.data_files():
            splits[split] = read_file(path, require_answers=not is_test_split(split))
    if cfg.split_articles is not None:
        splits["train"], splits["validation"] = split_by_article(splits["train"], cfg.split_articles, cfg.train_file)
    for split, examples in splits.items():
        _check_unique_ids(examples)
        splits[split] = align_answers(examples, split)
    _resolve_version_2(cfg, splits)
    return splits


def read_file(path: str, require_answers: bool = True) -> list[dict]:
    """A SQuAD JSON file, JSON lines, a JSON array or parquet of flat records (HF `squad` columns) -> examples
    (DataError naming the file and line / id)."""
    require_file(path)
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".parquet")):
        return [_example(row, f"{path}:{line}", require_answers, str(line)) for line, row in iter_records(path)]
    if not name.endswith(".json"):
        raise DataError(f"{path}: QA reads SQuAD .json, .jsonl or .parquet files (HF squad columns: id, title, "
                        "context, question, answers)")
    try:
        data = parse_json(read_text(path))
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values: JSON lines saved as .json
            return [_example(row, f"{path}:{line}", require_answers, str(line)) for line, row in iter_records(path)]
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}, column {e.colno})") from None
    if isinstance(data, dict) and "data" in data:
        return _squad_examples(data, path, require_answers)
    if isinstance(data, dict):  # a JSON-lines file with a single line
        return [_example(data, f"{path}:1", require_answers, "1")]
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):  # an array of flat records
        return [_example(row, f"{path}: record {i}", require_answers, str(i)) for i, row in enumerate(data, 1)]
    raise DataError(f'{path}: expected SQuAD JSON ({{"data": [...]}}) or one JSON object per line')


def _squad_examples(data: dict, path: str, require_answers: bool) -> list[dict]:
    """Flatten data -> articles -> paragraphs -> qas; '_where' is the JSON path of the question."""
    if not isinstance(data["data"], list):
        raise DataError(f'{path}: "data" must be a list of articles')
    examples = []
    for a, article in enumerate(data["data"]):
        where_a = f"{path}: data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(f'{where_a}: an article needs a "paragraphs" list')
        title = article.get("title", f"article {a}")
        for p, paragraph in enumerate(article["paragraphs"]):
            where_p = f"{where_a}.paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise DataError(f'{where_p}: a paragraph needs "context" and a "qas" list')
            for q, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise DataError(f"{where_p}.qas[{q}]: expected an object")
                row = {**qa, "context": paragraph.get("context"), "title": title}
                examples.append(_example(row, f"{where_p}.qas[{q}]", require_answers, None))
    return examples


def _example(row: dict, where: str, require_answers: bool, default_id: Optional[str]) -> dict:
    """Validate one raw row and bring it to the common example layout."""
    qid = row.get("id", default_id)
    if qid is None:
        raise DataError(f'{where}: missing field "id"')
    qid = str(qid)
    for name in ("question", "context"):
        if name not in row or row[name] is None:
            raise DataError(f'{where}: id {qid}: missing field "{name}"')
        if not isinstance(row[name], str):
            raise DataError(f'{where}: id {qid}: "{name}" must be a string, got {type(row[name]).__name__}')
        if not row[name].strip():
            raise DataError(f"{where}: id {qid}: empty {name}")
    impossible = _is_impossible(row.get("is_impossible", False), where, qid)
    if "answers" not in row and not impossible and require_answers:
        raise DataError(f'{where}: id {qid}: missing field "answers" (use [] for an unanswerable question)')
    example = {
        "id": qid,
        "question": row["question"],
        "context": row["context"],
        # v2: an impossible question's plausible_answers (or answers) are distractors, not answers
        "answers": _answers([] if impossible else row.get("answers", []), where, qid),
        "_where": where,
    }
    if "answers" not in row and not impossible:
        example["_unlabelled"] = True  # a test / `mlm predict` input: no gold, not an unanswerable question
    if row.get("title") is not None:
        example["title"] = str(row["title"])
    return example


def _is_impossible(value, where: str, qid: str) -> bool:
    """SQuAD v2's is_impossible flag; "false" as a string must not read as true."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise DataError(f'{where}: id {qid}: "is_impossible" must be true or false, got {value!r}')


def _answers(raw, where: str, qid: str) -> dict:
    """{"text": [...], "answer_start": [...]} or [{"text", "answer_start"}, ...] -> the dict layout.

    Empty answer texts are dropped: an example left with no answer is unanswerable (SQuAD v2). Spaces around
    a text are trimmed, its start moved with them: they belong to no token and would hide the text's position.
    """
    if isinstance(raw, dict):
        texts, starts = raw.get("text"), raw.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(f'{where}: id {qid}: "answers" needs lists "text" and "answer_start" of equal length')
        pairs = list(zip(texts, starts))
    elif isinstance(raw, list):
        if not all(isinstance(a, dict) and "text" in a and "answer_start" in a for a in raw):
            raise DataError(f'{where}: id {qid}: every answer needs "text" and "answer_start"')
        pairs = [(a["text"], a["answer_start"]) for a in raw]
    else:
        raise DataError(f'{where}: id {qid}: "answers" must be a list or a {{"text", "answer_start"}} object')
    answers = {"text": [], "answer_start": []}
    for text, start in pairs:
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            raise DataError(f"{where}: id {qid}: an answer needs a string text and an integer answer_start")
        if text.strip():
            answers["text"].append(text.strip())
            answers["answer_start"].append(start + len(text) - len(text.lstrip()))
    return answers


def _load_hub(cfg: Config) -> dict[str, list[dict]]:
    """A hub dataset with SQuAD columns (id, title, context, question, answers)."""
    import datasets

    try:
        ds = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config_name)
    except Exception as e:  # offline, unknown name, ...: several exception types
        raise DataError(f"dataset_name: cannot load {cfg.dataset_name!r} ({type(e).__name__}: {e})") from None
    splits = {}
    for split in ("train", "validation", "test"):
        if split in ds:
            where = f"{cfg.dataset_name}[{split}]"
            splits[split] = [_example(dict(row), f"{where}:{i + 1}", True, None) for i, row in enumerate(ds[split])]
    return splits


def split_by_article(examples: list[dict], value: str, path: str) -> tuple[list[dict], list[dict]]:
    """First TRAIN articles / next VALID articles, an article being all the examples of one title."""
    n_train, n_valid = parse_split_articles(value)
    order: dict[str, int] = {}  # title -> article rank by first appearance
    for ex in examples:
        if "title" not in ex:
            raise DataError(f"{ex['_where']}: id {ex['id']}: split_articles needs a title on every example")
        order.setdefault(ex["title"], len(order))
    needed = n_train + (n_valid or 1)
    if len(order) < needed:
        raise DataError(f"{path}: split_articles {value} needs at least {needed} articles, the file has {len(order)}")
    end = len(order) if n_valid is None else n_train + n_valid
    train = [ex for ex in examples if order[ex["title"]] < n_train]
    valid = [ex for ex in examples if n_train <= order[ex["title"]] < end]
    logger.info("split_articles %s: %d articles / %d questions for training, %d / %d for validation (%s)",
                value, n_train, len(train), end - n_train, len(valid), path)
    return train, valid


def _check_unique_ids(examples: list[dict]) -> None:
    """Predictions and metrics are keyed by id, so two questions with one id would silently merge."""
    seen: dict[str, str] = {}
    for ex in examples:
        if ex["id"] in seen:
            raise DataError(f"{ex['_where']}: duplicate id {ex['id']} (first at {seen[ex['id']]})")
        seen[ex["id"]] = ex["_where"]


# ---------------------------------------------------------------------------------------- answer offsets


def locate_answer(context: str, text: str, start: int) -> Optional[int]:
    """The character offset of `text` in `context`: `start` when it matches, else the nearest occurrence,
    whole words first ("art" is not the start of "starting").

    Offsets are often off by a few characters in hand-made or converted data (whitespace, HTML entities);
    the nearest occurrence is the most likely intended one. None when the text is not in the context.
    """
    if 0 <= start and context[start:start + len(text)] == text:
        return start
    occurrences, pos = [], context.find(text)
    while pos != -1:
        occurrences.append(pos)
        pos = context.find(text, pos + 1)
    if not occurrences:
        return None

    def inside_a_word(p: int) -> bool:
        end = p + len(text)
        return (p > 0 and context[p - 1].isalnum() and text[0].isalnum()) or (
            end < len(context) and context[end].isalnum() and text[-1].isalnum())

    return min(occurrences, key=lambda p: (inside_a_word(p), abs(p - start), p))


def align_answers(examples: list[dict], split: str) -> list[dict]:
    """Fix answer_start offsets in place; mark answers not found in the context with -1.

    Training drops an example none of whose answers can be located (its label would be a guess);
    evaluation keeps it: EM/F1 compare texts, and encode() leaves it out of the loss.
    """
    fixed, lost, kept, skipped = [], [], [], []
    for ex in examples:
        answers = ex["answers"]
        for i, (text, start) in enumerate(zip(answers["text"], answers["answer_start"])):
            found = locate_answer(ex["context"], text, start)
            if found is None:
                lost.append(ex["id"])
                answers["answer_start"][i] = -1
            elif found != start:
                fixed.append(ex["id"])
                answers["answer_start"][i] = found
        unlocatable = answers["text"] and all(s < 0 for s in answers["answer_start"])
        (skipped if unlocatable and split == "train" else kept).append(ex)
    where = {ex["id"]: ex["_where"] for ex in examples}  # (ids are unique by now)
    if fixed:
        logger.warning("%s: moved %d answer_start offsets (negative, past the context or off the text) to the "
                       "nearest occurrence of the answer text (first: %s; ids: %s)", split, len(fixed),
                       where[fixed[0]], _some(fixed))
    if lost:
        effect = "left out of the evaluation loss, still scored by EM/F1" if split != "train" else "not used as labels"
        logger.warning("%s: %d answers whose text is not in the context, %s (first: %s; ids: %s)", split, len(lost),
                       effect, where[lost[0]], _some(lost))
    if skipped:
        logger.warning("%s: skipped %d examples none of whose answers is in the context (first: %s; ids: %s)", split,
                       len(skipped), skipped[0]["_where"], _some([ex["id"] for ex in skipped]))
    return kept


def _some(ids: list[str]) -> str:
    unique = list(dict.fromkeys(ids))
    return ", ".join(unique[:SHOW_IDS]) + (", ..." if len(unique) > SHOW_IDS else "")


def _resolve_version_2(cfg: Config, splits: dict[str, list[dict]]) -> None:
    unanswerable = [ex for examples in splits.values() for ex in examples
                    if not ex["answers"]["text"] and not ex.get("_unlabelled")]
    if cfg.version_2_with_negative is None:
        cfg.version_2_with_negative = bool(unanswerable)
        if unanswerable:  # a warning: one stray empty answer in v1 data changes training and scoring
            logger.warning("version_2_with_negative: on, %d questions have no answer (first: %s id %s); set it to "
                           "false to refuse such data", len(unanswerable), unanswerable[0]["_where"],
                           unanswerable[0]["id"])
    elif unanswerable and not cfg.version_2_with_negative:
        raise ConfigError(
            f"version_2_with_negative: false, but the data has {len(unanswerable)} questions without an answer "
            f"(first: {unanswerable[0]['_where']} id {unanswerable[0]['id']}); set it to true or leave it unset"
        )


# --------------------------------------------------------------------------------------------- features


def label_list(train_examples: list[dict], cfg: Config) -> list[str]:
    return []  # spans, not classes


def model_kwargs(cfg: Config, labels: list[str]) -> dict:
    return {}  # the QA head always has two outputs (start, end)


def encode(examples: list[dict], tokenizer, cfg: Config, labels: list[str], with_labels: bool) -> list[dict]:
    """Examples -> windows ("features"); several per example when the context is long.

    Each feature keeps "example_index" (its example's position in `examples`) and "offset_mapping":
    (char_start, char_end) in the context for context tokens, None for question and special tokens, so
    post-processing can only pick context spans. With labels, "start_positions"/"end_positions" are the
    answer's tokens when the window holds the WHOLE answer, else 0/0 ([CLS]); IGNORE when unknown.
    """
    _check_tokenizer(tokenizer)
    if not examples:
        return []
    questions = truncate_questions([ex["question"] for ex in examples], tokenizer, cfg.max_query_length)
    enc = tokenizer(
        questions,
        [ex["context"] for ex in examples],
        truncation="only_second",
        max_length=cfg.max_seq_length,
        stride=cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    features = []
    for i, example_index in enumerate(enc["overflow_to_sample_mapping"]):
        sequence_ids = enc.sequence_ids(i)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], sequence_ids)]
        feature = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
        if "token_type_ids" in enc:
            feature["token_type_ids"] = enc["token_type_ids"][i]
        feature["example_index"] = example_index
        feature["offset_mapping"] = offsets
        # The word of each context token (None elsewhere): predictions widen sub-word spans to whole words.
        feature["word_ids"] = [w if s == 1 else None for w, s in zip(enc.word_ids(i), sequence_ids)]
        if with_labels:
            example = examples[example_index]
            feature["start_positions"], feature["end_positions"] = answer_token_span(
                example["context"], example["answers"], offsets
            )
        features.append(feature)
    return features


def _check_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("tokenizer_name: QA needs a fast (Rust `tokenizers`) tokenizer for character offsets")
    if tokenizer.padding_side != "right":
        raise ConfigError(
            f"tokenizer_name: QA windows assume right padding, the tokenizer pads {tokenizer.padding_side}"
        )


def truncate_questions(questions: list[str], tokenizer, max_query_length: int) -> list[str]:
    """Cut each question text after its max_query_length-th token (so windows keep room for the context).

    Leading whitespace is stripped too: some SQuAD questions start with many spaces that would only
    shift the offsets. Cutting the text (not the ids) keeps a single tokenizer call for question + context.
    """
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for question, ids, offsets in zip(questions, enc["input_ids"], enc["offset_mapping"]):
        out.append(question if len(ids) <= max_query_length else question[: offsets[max_query_length - 1][1]])
    return out


def answer_token_span(context: str, answers: dict, offsets: list) -> tuple[int, int]:
    """(start, end) token indices of the first locatable answer inside this window.

    0/0 ([CLS]) when the question has no answer or the window does not hold the whole answer;
    IGNORE/IGNORE when the example has answers but none could be located in the context.
    """
    if not answers["text"]:
        return 0, 0
    located = [(t, s) for t, s in zip(answers["text"], answers["answer_start"]) if s >= 0]
    if not located:
        return IGNORE, IGNORE
    text, char_start = located[0]
    char_end = char_start + len(text)
    # Spaces at the edges of an answer belong to no token; trim them so the window check finds the edge tokens.
    char_start, char_end = _without_edge_spaces(context, char_start, char_end)
    context_tokens = [i for i, o in enumerate(offsets) if o is not None]
    if not context_tokens:
        return 0, 0
    first, last = context_tokens[0], context_tokens[-1]
    if not (offsets[first][0] <= char_start and offsets[last][1] >= char_end):
        return 0, 0  # the answer starts before or ends after this window
    # The tokens the answer overlaps: a character the tokenizer drops (zero-width space, soft hyphen) at an edge
    # of the answer belongs to no token, and must not pull in the token before or after it.
    overlapping = [i for i in context_tokens if offsets[i][1] > char_start and offsets[i][0] < char_end]
    if not overlapping:
        return 0, 0
    return overlapping[0], overlapping[-1]


def _without_edge_spaces(text: str, start: int, end: int) -> tuple[int, int]:
    """text[start:end] narrowed to drop the whitespace at both ends."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def collate(features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
    """Pad to the longest feature in the batch (right side); labels when the features have them."""
    length = max(len(f["input_ids"]) for f in features)
    pads = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0, "token_type_ids": 0}
    batch = {}
    for key, pad in pads.items():
        if key in features[0]:
            batch[key] = torch.tensor([f[key] + [pad] * (length - len(f[key])) for f in features], dtype=torch.long)
    for key in ("start_positions", "end_positions"):
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
    return batch


# -------------------------------------------------------------------------------------------- the model


TARGETS = ("start_positions", "end_positions")  # what loss_of reads: labelled evaluation features also give a loss


def forward(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) logits, each (B, T) in float32, padding positions pushed to -inf-ish.

    Masking the padding makes a feature's loss independent of how much its batch was padded.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    out = model(**inputs)
    pad = batch["attention_mask"] == 0  # (B, T)
    start = out.start_logits.float().masked_fill(pad, torch.finfo(torch.float32).min)
    end = out.end_logits.float().masked_fill(pad, torch.finfo(torch.float32).min)
    return start, end


def loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return loss_of(forward(model, batch), batch)


def loss_of(logits: tuple[torch.Tensor, torch.Tensor], batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over features of (CE(start) + CE(end)) / 2, number of features with a known answer position)."""
    start, end = logits  # (B, T) each
    ce = F.cross_entropy(start, batch["start_positions"], ignore_index=IGNORE, reduction="sum")
    ce = ce + F.cross_entropy(end, batch["end_positions"], ignore_index=IGNORE, reduction="sum")
    return ce / 2, (batch["start_positions"] != IGNORE).sum()


@torch.no_grad()
def outputs(model, batch: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    return outputs_of(forward(model, batch), batch)


def outputs_of(logits: tuple[torch.Tensor, torch.Tensor], batch: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (start_logits, end_logits) pair per feature, numpy float32 cut to its true length."""
    start, end = logits
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    start, end = start.cpu().numpy(), end.cpu().numpy()
    return [(start[i, :n], end[i, :n]) for i, n in enumerate(lengths)]


# ------------------------------------------------------------------------------------- post-processing


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets: list, n_best_size: int,
              max_answer_length: int) -> Optional[tuple[float, int, int]]:
    """(score, start token, end token) of the best context span in one window, or None.

    Only the n_best_size highest start and end logits are paired (the usual SQuAD search); a pair
    counts when both tokens are in the context, end >= start and the span has <= max_answer_length tokens.
    """
    n = len(offsets)
    if len(start_logits) != n or len(end_logits) != n:
        raise ValueError(f"logits of length {len(start_logits)}/{len(end_logits)} for a feature of {n} tokens")
    in_context = np.array([o is not None for o in offsets])
    starts = np.argsort(-start_logits, kind="stable")[:n_best_size]
    ends = np.argsort(-end_logits, kind="stable")[:n_best_size]
    length = ends[None, :] - starts[:, None] + 1  # (S, E) span length in tokens
    ok = in_context[starts][:, None] & in_context[ends][None, :] & (length >= 1) & (length <= max_answer_length)
    if not ok.any():
        return None
    scores = np.where(ok, start_logits[starts][:, None] + end_logits[ends][None, :], -np.inf)
    s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return float(scores[s, e]), int(starts[s]), int(ends[e])


def whole_words(first: int, last: int, word_ids: list) -> tuple[int, int]:
    """The token span widened to every token of the words its first and last tokens belong to (within the
    window: a word cut by the window's edge keeps the part inside)."""
    while first > 0 and word_ids[first - 1] is not None and word_ids[first - 1] == word_ids[first]:
        first -= 1
    while last + 1 < len(word_ids) and word_ids[last + 1] is not None and word_ids[last + 1] == word_ids[last]:
        last += 1
    return first, last


def predictions(
    examples: list[dict], features: list[dict], outputs: list, cfg: Config, labels: list[str]
) -> list[dict]:
    """One record per example: the best span over all its windows, cut from the original context.

    v2: the null score is the lowest [CLS] score (start[0] + end[0]) over the windows; the answer is ""
    when null score - best span score > null_score_diff_threshold.
    Record: {"id", "prediction_text", "start", "end" (character offsets, None for ""), "score",
    "null_score" (v2), "gold_answers" (when the example has answers)}.
    """
    if len(features) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(features)} features")
    windows: dict[int, list[int]] = {}
    for f, feature in enumerate(features):
        windows.setdefault(feature["example_index"], []).append(f)
    v2 = bool(cfg.version_2_with_negative)
    records = []
    for index, example in enumerate(examples):
        best, null_score = None, None
        for f in windows.get(index, []):
            start_logits, end_logits = outputs[f]
            offsets = features[f]["offset_mapping"]
            cls_score = float(start_logits[0] + end_logits[0])
            null_score = cls_score if null_score is None else min(null_score, cls_score)
            span = best_span(start_logits, end_logits, offsets, cfg.n_best_size, cfg.max_answer_length)
            if span is not None and (best is None or span[0] > best[0]):
                first, last = span[1], span[2]
                if getattr(cfg, "align_to_words", True) and "word_ids" in features[f]:
                    first, last = whole_words(first, last, features[f]["word_ids"])
                best = (span[0], offsets[first][0], offsets[last][1])
        record = {"id": example["id"], "prediction_text": "", "start": None, "end": None, "score": None}
        if best is not None:
            score, char_start, char_end = best
            # Tokenizers that keep untrimmed offsets (byte-level BPE with trim_offsets off) count the space
            # before a word as part of it: an answer never starts or ends with whitespace.
            char_start, char_end = _without_edge_spaces(example["context"], char_start, char_end)
            record.update(prediction_text=example["context"][char_start:char_end], start=char_start, end=char_end,
                          score=score)
        if v2:
            record["null_score"] = null_score
            if null_score is not None and (best is None or null_score - best[0] > cfg.null_score_diff_threshold):
                record.update(prediction_text="", start=None, end=None, score=null_score)
        if not example.get("_unlabelled"):
            record["gold_answers"] = list(example["answers"]["text"])
        records.append(record)
    return records


def write_squad_predictions(records: Iterable[dict], path: str) -> None:
    """The official evaluation-script format: one JSON object {id: answer text}."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({r["id"]: r["prediction_text"] for r in records}, f, ensure_ascii=False, indent=1)


def metrics(examples: list[dict], predictions: list[dict], cfg: Config, labels: list[str]) -> dict:
    """Official SQuAD exact_match and f1 (0-100); HasAns_/NoAns_ breakdowns in v2 mode."""
    from finetune.metrics import squad_scores

    gold = {ex["id"]: list(ex["answers"]["text"]) for ex in examples if not ex.get("_unlabelled")}
    if not gold:
        return {}  # an unlabelled test split: predictions only
    pred = {r["id"]: r["prediction_text"] for r in predictions if r["id"] in gold}
    return squad_scores(gold, pred, version_2=bool(cfg.version_2_with_negative))


# ------------------------------------------------------------------------------------- mlm predict


def examples_from_text(cfg: Config, **fields) -> list[dict]:
    """`mlm predict --question Q --context C`: one example without answers."""
    if fields.get("text") is not None:
        raise ConfigError("--text: the qa task takes --question and --context")
    for name in ("question", "context"):
        if not isinstance(fields.get(name), str) or not fields[name].strip():
            raise ConfigError(f"--{name}: required (and non-empty) for the qa task")
    return [_example({"id": "0", "question": fields["question"], "context": fields["context"]},
                     "--question/--context", False, None)]


def examples_from_file(path: str, cfg: Config) -> list[dict]:
    """`mlm predict --input FILE`: JSON lines with question and context (id, answers optional) or SQuAD JSON."""
    examples = read_file(path, require_answers=False)
    _check_unique_ids(examples)
    return examples


def read_labelled(path: str, cfg: Config) -> list[dict]:
    """`mlm evaluate --input FILE`: questions with answers, read as fine-tuning reads a validation file."""
    examples = read_file(path, require_answers=True)
    _check_unique_ids(examples)
    return align_answers(examples, path)
