"""What `mlm predict` and `mlm evaluate` read for NER: raw text, a text file, CoNLL or records files (with
gold tags for evaluate)."""
from __future__ import annotations

import itertools

from mlm.errors import ConfigError, DataError
from mlm.core.records import decoded_lines, iter_records
from mlm.core.user_files import require_file
from finetune.ner.config import CONLL_SUFFIXES, Config, DOCSTART, RECORD_SUFFIXES
from finetune.ner.tags import _TAG_RE, _convert_to_iob2
from finetune.ner.data import _check_word_list, _conll_columns, _pick_tags_key, _read_conll, _refuse_csv, read_file
from finetune.ner.windows import encode
from finetune.ner.text import split_words


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
