"""Reading QA data: SQuAD JSON, JSON lines / parquet records and hub datasets as examples
{id, question, context, answers}; answers located in their context (align_answers), SQuAD v2 detected, a
validation split carved out by article."""
from __future__ import annotations

import json
from typing import Optional

from finetune.config import is_test_split
from mlm.errors import ConfigError, DataError
from mlm.core.records import iter_records
from mlm.core.user_files import parse_json, read_text, require_file
from finetune.qa.config import Config, SHOW_IDS, logger, parse_split_articles


def load_splits(cfg: Config) -> tuple[dict[str, list[dict]], dict]:
    """(raw examples of the configured splits, validated, answer offsets checked; the settings the data resolved).

    The second value is {"version_2_with_negative": True/False} when cfg leaves it None (auto), else {}: the
    runner records it, so the saved run config and `mlm predict` make the same choice as training.
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
    version_2 = _resolve_version_2(cfg, splits)
    return splits, ({} if version_2 == cfg.version_2_with_negative else {"version_2_with_negative": version_2})


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
    from mlm.core.hub import load_hub_dataset

    ds = load_hub_dataset(cfg.dataset_name, cfg.dataset_config_name)
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


def _resolve_version_2(cfg: Config, splits: dict[str, list[dict]]) -> bool:
    """cfg.version_2_with_negative, or when None (auto) whether some question has no answer."""
    unanswerable = [ex for examples in splits.values() for ex in examples
                    if not ex["answers"]["text"] and not ex.get("_unlabelled")]
    if cfg.version_2_with_negative is None:
        if unanswerable:  # a warning: one stray empty answer in v1 data changes training and scoring
            logger.warning("version_2_with_negative: on, %d questions have no answer (first: %s id %s); set it to "
                           "false to refuse such data", len(unanswerable), unanswerable[0]["_where"],
                           unanswerable[0]["id"])
    elif unanswerable and not cfg.version_2_with_negative:
        raise ConfigError(
            f"version_2_with_negative: false, but the data has {len(unanswerable)} questions without an answer "
            f"(first: {unanswerable[0]['_where']} id {unanswerable[0]['id']}); set it to true or leave it unset"
        )
    return bool(unanswerable) if cfg.version_2_with_negative is None else cfg.version_2_with_negative
