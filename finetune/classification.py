"""Sequence classification: one label per text (or text pair), a score, or a set of labels.

The task reads rows with a text column, an optional second text column (sentence pairs such as
MRPC/RTE) and a label column, and fine-tunes `AutoModelForSequenceClassification` on them:

    make finetune TASK=cls                                    # SST-2, recipes/finetune/cls.yaml
    mlm finetune --task cls --train_file train.csv --validation_file dev.csv --text_column review
    mlm predict --model outputs/cls --text "a charming and often affecting journey"

Three problem types (--problem_type, default "auto", resolved from the TRAINING labels):
  * single_label  one class per example; cross-entropy; accuracy / macro F1 / MCC (two classes: also
                  precision / recall / f1 of the second, positive, class). 1, "1" and "1.0" are one class.
  * regression    one float per example (STS-B style); squared error; MSE / Pearson / Spearman.
  * multi_label   a set of classes per example, given as a JSON list or a string joined with
                  --label_separator; per-class sigmoid + binary cross-entropy; subset accuracy / F1.
"auto" picks multi_label when a label is a list or --label_separator is set, regression when some
label is a number that is not an integer (3.8), and single_label otherwise: integer-valued labels
(0/1, 1..5 stars) are classes; pass --problem_type regression to treat them as scores.

Files: .csv / .tsv / .jsonl / .parquet through mlm.core.records (or a hub dataset with --dataset_name;
ClassLabel ids become their names). Sentence-pair layouts are read as pairs: sentence1/sentence2,
premise/hypothesis, question/sentence, question1/question2, text/text_pair, text_a/text_b (also when
--text_column names the first of them; --text_pair_column none turns pairs off). Otherwise the text column
defaults to the first of "text", "sentence", "sentence1" the file has. Columns may also be given by position
(--text_column 1 --label_column 0), several text columns joined (--text_column title,description), and csv/tsv
files without a header line are read by position (see finetune/columns.py). --label_names gives numeric classes
names (finetune/label_names.py). The columns chosen are logged and saved with the model, so `mlm predict`
asks for the same inputs. The test split may have no label column at all (the GLUE test files have none), or
blank labels: it then gets predictions and no metrics.

Every example is a plain dict {"text", "text_pair"?, "label"?, "_where": "path:line"}; `load_splits`
normalises labels (class names as strings, floats for regression, lists of names for multi-label)
and fixes cfg.problem_type to the resolved type, so the saved run config records it.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from finetune.columns import column_name, column_spec, detect_header, is_index, joined_text
from finetune.config import FinetuneConfig, is_test_split
from finetune.label_names import resolve_label_names
from mlm.core.config import arg
from mlm.errors import ConfigError, DataError
from mlm.core.records import PIECE_CHARS, text_pieces
from mlm.core.records import decoded_lines, file_format, first_row, iter_records, require_columns

logger = logging.getLogger("mlm")

AutoModel = transformers.AutoModelForSequenceClassification
UNITS = ("examples", "sequences")  # what an example and a feature are, for the log

TEXT_COLUMN_CANDIDATES = ("text", "sentence", "sentence1")
# (text, text pair) column layouts of sentence-pair data (GLUE, SNLI, ...): read as pairs unless told otherwise.
PAIR_COLUMNS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"),
                ("question1", "question2"), ("text", "text_pair"), ("text_a", "text_b"))
NO_PAIR = "none"  # text_pair_column: single texts, even when the data has a pair layout
# Our problem types -> the names transformers' configs use (and `mlm predict` reads back from a model).
HF_PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "regression": "regression",
    "multi_label": "multi_label_classification",
}
DELIMITER_ALIASES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
FEW_FRACTIONAL = 10  # problem_type auto: fewer than 1 in 10 fractional labels among integers is ambiguous
ENCODE_CHUNK = 1024  # examples per tokenizer call: big enough for the fast tokenizer, small in memory


@dataclass
class Config(FinetuneConfig):
    """Fine-tune an encoder for sequence classification (single-label, regression or multi-label)."""

    text_column: Optional[str] = arg(
        None, "Column with the text: a name or a position (0 = first); several separated by commas are joined with "
        "a space, e.g. title,description or 1,2 (default: the first of text, sentence, sentence1 that the data has)."
    )
    text_pair_column: Optional[str] = arg(
        None, "Column with the second text of sentence-pair tasks, a name or position (default: the partner of a known "
        "pair layout such as sentence1/sentence2, premise/hypothesis, question/sentence, question1/question2; 'none': "
        "no pair)."
    )
    label_column: str = arg(
        "label", "Column with the label (class name, number, or list for multi-label): a name or a position (0 = first)."
    )
    no_header: Optional[bool] = arg(
        None, "csv/tsv files have no header line (columns by position: --text_column 1 --label_column 0); 'false': "
        "line 1 is always the header (default: detected per file, e.g. a number in line 1 means data).",
        nargs="?", const=True,  # `--no_header` alone means true (HfArgumentParser does that only for non-None defaults)
    )
    problem_type: Literal["auto", "single_label", "regression", "multi_label"] = arg(
        "auto",
        "auto: multi_label for list labels or with label_separator, regression when a training label is a "
        "non-integer number, else single_label.",
    )
    label_separator: Optional[str] = arg(
        None, "Multi-label data as one string per example, e.g. '|' for 'sports|politics' (implies multi_label)."
    )
    label_names: Optional[str] = arg(
        None, "Names for the classes, for config.json's id2label and the predictions: 'negative,positive' (one per "
        "class, numbers ascending, else alphabetical), '0=negative,1=positive', or a file of such lines."
    )
    delimiter: Optional[str] = arg(
        None, "Field delimiter of csv/tsv files: a character or tab/comma/semicolon/pipe (default: by extension)."
    )

    def __post_init__(self):
        super().__post_init__()
        if self.delimiter is not None:
            self.delimiter = DELIMITER_ALIASES.get(self.delimiter, self.delimiter)
            if len(self.delimiter) != 1:
                raise ConfigError(f"delimiter: expected one character or tab/comma/semicolon/pipe, got {self.delimiter!r}")
        if self.label_separator is not None and self.problem_type in ("single_label", "regression"):
            raise ConfigError(f"label_separator: only used with problem_type multi_label, not {self.problem_type}")
        if self.label_separator == "":
            raise ConfigError("label_separator: must not be empty")
        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise ConfigError(f"text_pair_column: same as text_column ({self.text_column!r})")
        if self.dataset_name is not None and self.train_file is not None:
            raise ConfigError("dataset_name and train_file are both set: choose one")


# ------------------------------------------------------------------------------------------ reading data


def load_splits(cfg: Config) -> dict[str, list[dict]]:
    """Raw examples of train / validation / test, labels normalised for the resolved problem type."""
    splits = _load_hub(cfg) if cfg.dataset_name else _load_files(cfg)
    if not splits.get("train"):
        raise DataError(f"{cfg.dataset_name or cfg.train_file}: no training split")
    resolved = resolve_problem_type(splits["train"], cfg)
    if cfg.problem_type == "auto":
        logger.info("problem_type auto -> %s (from the training labels)", resolved)
    cfg.problem_type = resolved
    for examples in splits.values():
        _normalise_labels(examples, cfg)
    if cfg.label_names is not None:
        name_classes(splits, cfg)
    return splits


def name_classes(splits: dict[str, list[dict]], cfg: Config) -> None:
    """--label_names: every split's labels renamed; cfg.label_names becomes the {class: name} JSON the run saves."""
    if cfg.problem_type == "regression":
        raise ConfigError("label_names: a regression model predicts scores, not classes")
    classes = sort_labels(_class_names(splits["train"], cfg.problem_type, cfg.label_separator))
    mapping = resolve_label_names(cfg.label_names, classes, key=label_name)
    cfg.label_names = json.dumps(mapping, ensure_ascii=False)
    logger.info("label names: %s", ", ".join(f"{c} = {n}" for c, n in mapping.items()))
    for examples in splits.values():
        _rename_labels(examples, mapping, cfg.problem_type)


def _rename_labels(examples: list[dict], mapping: dict[str, str], kind: str) -> None:
    """In place; a class without a name stays as it is (and fails as unseen in training, naming its line)."""
    for ex in examples:
        if "label" in ex:
            value = ex["label"]
            ex["label"] = [mapping.get(n, n) for n in value] if kind == "multi_label" else mapping.get(value, value)


def _load_files(cfg: Config) -> dict[str, list[dict]]:
    splits = {}
    for split, path in cfg.data_files():
        # Training and validation need gold labels; a test file may be unlabeled (predictions only).
        splits[split] = read_table(path, cfg, label_required=not is_test_split(split))
    return splits


def read_table(path: str, cfg: Config, label_required: bool) -> list[dict]:
    """Examples of one csv/tsv/jsonl/parquet file; raw labels (see `_normalise_labels`)."""
    delimited = file_format(path) in ("csv", "tsv")
    header = has_header(path, cfg) if delimited else True
    examples, columns = [], None
    for line, row in iter_records(path, cfg.delimiter, header):
        if columns is None:
            # For csv/tsv the columns come from the header, line 1; jsonl/parquet name the first row.
            where = f"{path}:1" if delimited else f"{path}:{line}"
            columns = resolve_columns(list(row), cfg, label_required, where, delimited and header)
        examples.append(_example(row, columns, f"{path}:{line}", path, line, label_required))
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty or holds only a header)")
    return examples


def has_header(path: str, cfg: Config) -> bool:
    """Whether line 1 of a csv/tsv file names the columns: --no_header, else detected (and logged when not)."""
    if cfg.no_header is not None:
        return not cfg.no_header
    pair = cfg.text_pair_column if cfg.text_pair_column != NO_PAIR else None
    specs = column_spec(cfg.text_column) + column_spec(pair) + column_spec(cfg.label_column)
    named = {spec for spec in specs if not is_index(spec)}
    by_position_only = any(is_index(spec) for spec in specs) and named <= {"label"}  # (the default label name)
    known = named | {"label", *TEXT_COLUMN_CANDIDATES, *sum(PAIR_COLUMNS, ())}
    header, why = detect_header(first_row(path, cfg.delimiter), known, by_position_only, path)
    if not header:
        logger.info("%s: no header line (%s): columns by position, 0 = first", path, why)
    return header


def resolve_columns(names: list[str], cfg: Config, label_required: bool, where: str, header_line: bool = False):
    """([text columns], [text pair columns] or None, label column or None) among the data's columns `names`.

    Side effect: what was chosen automatically is written to cfg, so the other splits, the saved run config
    and `mlm predict` read the same kind of input: single texts as text_pair_column 'none' (the text column
    itself is still found per file: SST-2's "sentence" in one file, "text" in another), pairs as both columns.
    """
    available = ", ".join(map(str, names))

    def missing(what: str, column: str, flag: str) -> DataError:
        hint = f"; set --{flag} NAME or POSITION"
        if header_line and len(names) == 1:
            hint = _delimiter_hint(str(names[0])) or hint
        elif header_line:
            hint += " (line 1 was read as the header; --no_header if it is data)"
        return DataError(f"{where}: missing {what} column {column!r} (columns: {available}){hint}")

    def find(value: str, what: str, flag: str) -> list[str]:
        found = []
        for spec in column_spec(value):
            name = column_name(spec, names)
            if name is None:
                raise missing(what, spec, flag)
            found.append(name)
        return found

    text = find(cfg.text_column, "text", "text_column") or None
    pair = None if cfg.text_pair_column == NO_PAIR else find(cfg.text_pair_column, "text pair", "text_pair_column") or None
    if cfg.text_pair_column is None:  # a known pair layout: ignoring its second text would be silent garbage
        partner = dict(PAIR_COLUMNS)
        if text is None:
            layout = next(((a, b) for a, b in PAIR_COLUMNS if a in names and b in names), None)
            text, pair = ([layout[0]], [layout[1]]) if layout else (None, None)
        elif len(text) == 1 and partner.get(text[0]) in names:
            pair = [partner[text[0]]]
    if text is None:
        first = next((c for c in TEXT_COLUMN_CANDIDATES if c in names), None)
        if first is None:
            raise missing("text", " / ".join(TEXT_COLUMN_CANDIDATES), "text_column")
        text = [first]
    label = column_name(cfg.label_column, names)
    if label is None and label_required:
        raise missing("label", cfg.label_column, "label_column")
    shown = " + ".join(map(repr, text))
    if pair and cfg.text_pair_column is None:
        logger.info("%s: text pairs from columns %s and %r", where, shown, pair[0])
        cfg.text_column, cfg.text_pair_column = cfg.text_column or text[0], pair[0]
    elif not pair and cfg.text_pair_column is None:
        logger.info("%s: single texts from column%s %s", where, "s" if len(text) > 1 else "", shown)
        cfg.text_pair_column = NO_PAIR
    return text, pair, label


def _delimiter_hint(header: str) -> str:
    """A one-column header that contains another delimiter means the file was split on the wrong one."""
    for char, name in (("\t", "tab"), (",", "comma"), (";", "semicolon"), ("|", "pipe")):
        if char in header:
            return f"; the header is one column containing a {name}: wrong delimiter? set --delimiter {name}"
    return ""


def _example(row: dict, columns, where: str, path: str, line: int, label_required: bool) -> dict:
    """{"text", "text_pair"?, "label"?, "_where"}; jsonl rows may differ, so every row is checked."""
    text_cols, pair_cols, label_col = columns
    needed = [*text_cols, *(pair_cols or []), label_col if label_required else None]
    require_columns(path, line, row, [c for c in needed if c is not None])
    example = {"text": joined_text(row, text_cols, where), "_where": where}
    if pair_cols is not None:
        example["text_pair"] = joined_text(row, pair_cols, where)
    value = row.get(label_col) if label_col is not None else None
    if value is not None and not (not label_required and isinstance(value, str) and not value.strip()):
        example["label"] = value  # (a test file's blank label cell means "no gold", not an empty class)
    elif label_required:  # a null in jsonl / parquet
        raise DataError(f"{where}: column {label_col!r}: missing label (null)")
    return example


def _load_hub(cfg: Config) -> dict[str, list[dict]]:
    """A hub dataset through datasets.load_dataset; ClassLabel ids become their names."""
    import datasets

    try:
        data = datasets.load_dataset(cfg.dataset_name, cfg.dataset_config_name)
    except Exception as e:  # network, unknown name, bad config: all one line for the user
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{cfg.dataset_name}: could not load the dataset ({message})") from None
    splits = {}
    # MNLI names its dev split validation_matched; a few community datasets use "dev".
    for split, candidates in (("train", ("train",)), ("validation", ("validation", "validation_matched", "dev")),
                              ("test", ("test",))):
        name = next((c for c in candidates if c in data), None)
        if name is not None:
            splits[split] = _hub_examples(data[name], cfg, f"{cfg.dataset_name}[{name}]", split != "test")
    return splits


def _hub_examples(dataset, cfg: Config, source: str, label_required: bool) -> list[dict]:
    columns = resolve_columns(dataset.column_names, cfg, label_required, source)
    to_names = _class_label_names(dataset.features.get(columns[2])) if columns[2] else None
    examples = []
    for i, row in enumerate(dataset, 1):
        if to_names is not None:
            row[columns[2]] = to_names(row[columns[2]])
        examples.append(_example(row, columns, f"{source}:{i}", source, i, label_required))
    if not examples:
        raise DataError(f"{source}: no examples")
    return examples


def _class_label_names(feature):
    """A function mapping ClassLabel ids (or lists of them) to names; None if the column is not ClassLabel.

    Negative ids mean "no label" in the datasets convention (GLUE test splits hold -1)."""
    inner = getattr(feature, "feature", None)  # Sequence(ClassLabel) / List(ClassLabel) for multi-label
    if hasattr(feature, "int2str"):
        return lambda v: feature.int2str(v) if v is not None and v >= 0 else None
    if inner is not None and hasattr(inner, "int2str"):
        return lambda vs: None if vs is None else [inner.int2str(v) for v in vs]
    return None


# ---------------------------------------------------------------------------------------------- labels


def resolve_problem_type(train_examples: list[dict], cfg: Config) -> str:
    """cfg.problem_type, with "auto" decided from the training labels (see the module docstring)."""
    if cfg.problem_type != "auto":
        return cfg.problem_type
    labelled = [ex for ex in train_examples if ex.get("label") is not None]
    lists = [ex for ex in labelled if isinstance(ex["label"], (list, tuple))]
    if cfg.label_separator is not None or (lists and len(lists) == len(labelled)):
        return "multi_label"
    if lists:  # one stray list must not turn a classification task into a multi-label one
        raise _ambiguous(lists[0], f"a list, but {len(labelled) - len(lists)} of {len(labelled)} training labels are "
                         "single values", "multi_label (single values then count as sets of one)")
    fractional = [ex for ex in labelled if _is_fractional(ex["label"])]
    if not fractional:
        return "single_label"
    # Scores (STS-B: steps of 0.2) are mostly fractional; fewer than one label in FEW_FRACTIONAL among classes
    # is as likely a typo, and would turn the whole task into regression.
    if len(fractional) * FEW_FRACTIONAL < len(labelled):
        raise _ambiguous(fractional[0], f"fractional, but only {len(fractional)} of {len(labelled)} training labels "
                         "are (classes or scores?)", "regression if the labels are scores, single_label for classes")
    return "regression"


def _ambiguous(example: dict, what: str, choice: str) -> DataError:
    return DataError(f"{example['_where']}: label {example['label']!r} is {what}: problem_type auto cannot tell "
                     f"the kind of task; fix the label, or set --problem_type {choice}")


def _is_missing(value) -> bool:
    """NaN (pandas' missing value, which JSON writers and CSV exports spell NaN / nan) or an infinity: never a class."""
    try:
        return not isinstance(value, bool) and not math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _is_fractional(value) -> bool:
    """A finite number (or numeric string) that is not an integer: 3.8 yes, 4.0 / "4" / "pos" no."""
    if isinstance(value, bool):
        return False
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(number) and not number.is_integer()


def problem_type(cfg: Config, labels: list[str]) -> str:
    """The concrete problem type; when cfg still says "auto" (no load_splits, e.g. predict), guess from labels."""
    if cfg.problem_type != "auto":
        return cfg.problem_type
    return "regression" if labels == ["score"] else "single_label"


_INTEGRAL_FLOAT = re.compile(r"[+-]?\d+\.0*")


def label_name(value) -> str:
    """One class label as a string, so 1, 1.0, "1" and "1.0" (pandas writes integer labels so when a column has
    a NaN) are the same class."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    name = str(value).strip()
    return str(int(float(name))) if _INTEGRAL_FLOAT.fullmatch(name) else name


def _normalise_labels(examples: list[dict], cfg: Config) -> None:
    """In place: single_label -> name, regression -> float, multi_label -> list of names."""
    kind = cfg.problem_type
    for ex in examples:
        if "label" not in ex:
            continue
        value, where = ex["label"], ex["_where"]
        column = f"column {cfg.label_column!r}"
        if kind == "regression":
            ex["label"] = _regression_target(value, f"{where}: {column}")
        elif kind == "multi_label":
            ex["label"] = _label_set(value, cfg.label_separator)
        else:
            if isinstance(value, (list, tuple, dict)):
                raise DataError(f"{where}: {column}: label {value!r} is not one class (multi-label? set "
                                "--problem_type multi_label)")
            ex["label"] = label_name(value)
            if not ex["label"]:
                raise DataError(f"{where}: {column}: empty label")
        names = ex["label"] if kind == "multi_label" else [ex["label"]]
        missing = next((name for name in names if _is_missing(name)), None) if kind != "regression" else None
        if missing is not None:
            raise DataError(f"{where}: {column}: label {missing!r} is NaN or infinite, not a class (a missing "
                            "value?); fill it in or drop the row")


def _regression_target(value, where: str) -> float:
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number):
        raise DataError(f"{where}: non-numeric regression target {value!r}")
    return number


def _label_set(value, separator: Optional[str]) -> list[str]:
    """A multi-label value (list, separator-joined string, or one label) -> distinct label names."""
    if isinstance(value, str):
        parts = value.split(separator) if separator is not None else [value]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]  # a bare number in multi-label data is a set of one
    names = [label_name(p) for p in parts]
    return list(dict.fromkeys(n for n in names if n))  # drop empties and duplicates, keep order


def label_list(train_examples: list[dict], cfg: Config) -> list[str]:
    """Label names of the training split: in --label_names' order when given, else numeric order for integer names
    ("2" before "10"), else sorted."""
    kind = resolve_problem_type(train_examples, cfg)
    if kind == "regression":
        return ["score"]
    names = _class_names(train_examples, kind, cfg.label_separator)
    source = train_examples[0]["_where"].rpartition(":")[0] if train_examples else "train"
    if not names:
        raise DataError(f"{source}: the training data has no labels")
    if kind == "single_label" and len(names) == 1:
        raise DataError(f"{source}: every training label is {next(iter(names))!r}: a classifier needs at least two "
                        "classes (wrong --label_column?)")
    if cfg.label_names is not None:
        return [n for n in json.loads(cfg.label_names).values() if n in names]
    return sort_labels(names)


def _class_names(examples: list[dict], kind: str, separator: Optional[str]) -> set[str]:
    names = set()
    for ex in examples:
        if ex.get("label") is None:
            continue
        if kind == "multi_label":
            names.update(_label_set(ex["label"], separator))
        else:
            names.add(label_name(ex["label"]))
    return names


def sort_labels(names) -> list[str]:
    names = list(names)
    if all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def model_kwargs(cfg: Config, labels: list[str]) -> dict:
    """Head size, label names (saved in config.json, so predictions name classes) and the loss kind."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
        "problem_type": HF_PROBLEM_TYPES[problem_type(cfg, labels)],
    }


# -------------------------------------------------------------------------------------------- features


def encode(examples: list[dict], tokenizer, cfg: Config, labels: list[str], with_labels: bool = True) -> list[dict]:
    """Tokenize (pairs truncated longest_first), no padding; features keep "example_index".

    Every gold label is checked against `labels` (DataError at its file:line when training never saw
    it); with_labels adds the model target as "labels"."""
    kind = problem_type(cfg, labels)
    label2id = {name: i for i, name in enumerate(labels)}
    features, truncated = [], 0
    for start in range(0, len(examples), ENCODE_CHUNK):
        chunk = examples[start:start + ENCODE_CHUNK]
        encoded, n_truncated = _tokenize(chunk, tokenizer, cfg.max_seq_length)
        truncated += n_truncated
        for offset, ex in enumerate(chunk):
            feature = {key: encoded[key][offset] for key in ("input_ids", "attention_mask", "token_type_ids")
                       if key in encoded}
            feature["example_index"] = start + offset
            if ex.get("label") is not None:
                # Checked even without with_labels: evaluation features carry no labels, but a gold label
                # the model cannot predict must fail here, naming its line, not later inside the metrics.
                target = _target(ex, kind, label2id, labels, cfg.label_separator)
                if with_labels:
                    feature["labels"] = target
            features.append(feature)
    if examples:
        logger.info("%d of %d examples truncated to max_seq_length=%d", truncated, len(examples), cfg.max_seq_length)
    return features


def _tokenize(chunk: list[dict], tokenizer, max_length: int) -> tuple[dict, int]:
    """Tokenize once in full to learn which examples are too long, then re-tokenize only those truncated.

    (Asking the tokenizer for overflowing tokens would count them too, but fast tokenizers refuse
    that for pairs with longest_first.)"""
    has_pair = ["text_pair" in ex for ex in chunk]
    if any(has_pair) and not all(has_pair):
        raise DataError(f"{chunk[has_pair.index(False)]['_where']}: no text pair, but other examples have one")
    texts = [_enough_text(ex["text"], tokenizer, max_length) for ex in chunk]
    pairs = [_enough_text(ex["text_pair"], tokenizer, max_length) for ex in chunk] if all(has_pair) else None
    # verbose=False: the untruncated pass would warn about sequences longer than model_max_length.
    encoded = dict(tokenizer(texts, pairs, truncation=False, verbose=False))
    too_long = [i for i, ids in enumerate(encoded["input_ids"]) if len(ids) > max_length]
    if too_long:
        redo = tokenizer([texts[i] for i in too_long], [pairs[i] for i in too_long] if pairs else None,
                         truncation="longest_first", max_length=max_length)
        for key in encoded:
            for j, i in enumerate(too_long):
                encoded[key][i] = redo[key][j]
    return encoded, len(too_long)


def _enough_text(text: str, tokenizer, max_length: int) -> str:
    """`text`, or its first pieces once they hold more than max_length tokens: truncation (longest_first too) then
    keeps the same ids as from the whole text, and a text of megabytes on one line is not tokenised whole (the
    tokenizer keeps ~100 bytes per character). Pieces as pretraining cuts a huge line (mlm.pretrain.packing.text_pieces)."""
    if len(text) <= PIECE_CHARS:
        return text
    kept, tokens = [], 0
    for piece in text_pieces(text, PIECE_CHARS):
        kept.append(piece)
        tokens += len(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if tokens > max_length:
            return "".join(kept)
    return text


def _target(example: dict, kind: str, label2id: dict, labels: list[str], separator: Optional[str]):
    """The model target of one example: class id, float, or a multi-hot list over `labels`."""
    where = example.get("_where", "?")
    if kind == "regression":
        return _regression_target(example["label"], where)
    if kind == "multi_label":
        names = _label_set(example["label"], separator)
    else:
        names = [label_name(example["label"])]
    for name in names:
        if name not in label2id:
            raise DataError(f"{where}: label {name!r} does not occur in the training data "
                            f"(training labels: {', '.join(labels)})")
    if kind == "multi_label":
        hot = [0.0] * len(labels)
        for name in names:
            hot[label2id[name]] = 1.0
        return hot
    return label2id[names[0]]


def collate(features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
    """Pad to the longest feature in the batch with the tokenizer's pad id; labels keep their kind.

    labels: (B,) long for classes, (B,) float for regression, (B, C) float for multi-label."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token")
    left = getattr(tokenizer, "padding_side", "right") == "left"
    longest = max(len(f["input_ids"]) for f in features)

    def padded(key: str, value: int) -> torch.Tensor:
        rows = []
        for f in features:
            fill = [value] * (longest - len(f[key]))
            rows.append(fill + list(f[key]) if left else list(f[key]) + fill)
        return torch.tensor(rows, dtype=torch.long)  # (B, T)

    batch = {"input_ids": padded("input_ids", pad_id), "attention_mask": padded("attention_mask", 0)}
    if "token_type_ids" in features[0]:
        batch["token_type_ids"] = padded("token_type_ids", getattr(tokenizer, "pad_token_type_id", 0))
    with_labels = ["labels" in f for f in features]
    if any(with_labels):
        if not all(with_labels):
            raise ValueError("a batch mixes features with and without labels")
        targets = [f["labels"] for f in features]
        # ints are class ids; floats (or lists of floats) are regression targets / multi-hot vectors.
        is_class = all(isinstance(t, int) and not isinstance(t, bool) for t in targets)
        batch["labels"] = torch.tensor(targets, dtype=torch.long if is_class else torch.float32)
    return batch


# ------------------------------------------------------------------------------------- loss and outputs


TARGETS = ("labels",)  # the batch keys loss_of reads: evaluation features that have them also give a loss


def forward(model, batch: dict) -> torch.Tensor:
    """(B, C) logits in fp32, so a bf16 autocast does not round the loss."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits.float()


def loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return loss_of(forward(model, batch), batch)


def loss_of(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-example losses, number of examples); the loop divides by the global count.

    The kind comes from the labels (long (B,) classes, float (B,) scores, float (B, C) multi-hot),
    which also works for a model wrapped by DDP/FSDP that hides `.config`."""
    labels = batch["labels"]
    if labels.dtype == torch.long:
        total = F.cross_entropy(logits, labels, reduction="sum")
    elif labels.dim() == 1:
        if logits.shape[-1] != 1:
            raise ValueError(f"regression targets need a 1-output head, the model has {logits.shape[-1]}")
        total = ((logits.squeeze(-1) - labels) ** 2).sum()
    else:
        # Mean over classes per example (as BCEWithLogitsLoss does), summed over examples.
        total = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=-1).sum()
    return total, torch.tensor(labels.shape[0], device=logits.device)


@torch.no_grad()
def outputs(model, batch: dict) -> list[np.ndarray]:
    return outputs_of(forward(model, batch), batch)


def outputs_of(logits: torch.Tensor, batch: dict) -> list[np.ndarray]:
    """The logits of each feature, (C,) float32 arrays in batch order."""
    return list(logits.cpu().numpy())


def predictions(examples: list[dict], features: list[dict], outputs: list, cfg: Config, labels: list[str]) -> list[dict]:
    """One JSON-able record per encoded example, in example order.

    single_label: label, score (its softmax probability), probabilities {name: p}
    regression:   score
    multi_label:  labels (sigmoid > 0.5), scores (theirs), probabilities {name: p}
    plus text, text_pair and gold where the example has them, and source (file:line of the input row)."""
    if len(features) != len(outputs):
        raise ValueError(f"{len(features)} features but {len(outputs)} outputs")
    kind = problem_type(cfg, labels)
    records = []
    for feature, logits in sorted(zip(features, outputs), key=lambda pair: pair[0]["example_index"]):
        example = examples[feature["example_index"]]
        record = {"text": example["text"]}
        if "text_pair" in example:
            record["text_pair"] = example["text_pair"]
        record.update(_decode(np.asarray(logits, dtype=np.float64), kind, labels))
        if example.get("label") is not None:
            record["gold"] = _gold(example["label"], kind, cfg, example.get("_where", "?"))
        if "_where" in example:  # file:line, to join predictions back to input rows
            record["source"] = example["_where"]
        records.append(record)
    return records


def _decode(logits: np.ndarray, kind: str, labels: list[str]) -> dict:
    if kind == "regression":
        return {"score": float(logits[0])}
    if kind == "multi_label":
        probs = 1.0 / (1.0 + np.exp(-logits))
        chosen = [i for i, p in enumerate(probs) if p > 0.5]
        return {"labels": [labels[i] for i in chosen], "scores": [float(probs[i]) for i in chosen],
                "probabilities": {name: float(p) for name, p in zip(labels, probs)}}
    probs = np.exp(logits - logits.max())  # softmax, shifted so exp cannot overflow
    probs /= probs.sum()
    best = int(np.argmax(probs))
    return {"label": labels[best], "score": float(probs[best]),
            "probabilities": {name: float(p) for name, p in zip(labels, probs)}}


def _gold(value, kind: str, cfg: Config, where: str):
    """The gold label in the form of the prediction (labels from `mlm predict --input` arrive raw)."""
    if kind == "regression":
        return _regression_target(value, where)
    if kind == "multi_label":
        return _label_set(value, cfg.label_separator)
    return label_name(value)


def metrics(examples: list[dict], predictions: list[dict], cfg: Config, labels: list[str]) -> dict:
    """Task scores over the predictions that have a gold label; {} for an unlabeled (test) split."""
    from finetune.metrics import classification_metrics, multilabel_metrics, regression_metrics

    scored = [p for p in predictions if "gold" in p]
    if not scored:
        return {}
    kind = problem_type(cfg, labels)
    if kind == "regression":
        return regression_metrics([p["gold"] for p in scored], [p["score"] for p in scored])
    index = {name: i for i, name in enumerate(labels)}
    if kind == "multi_label":
        def hot(names):
            row = [0] * len(labels)
            for name in names:
                row[index[name]] = 1
            return row
        return multilabel_metrics([hot(p["gold"]) for p in scored], [hot(p["labels"]) for p in scored], labels)
    return classification_metrics([index[p["gold"]] for p in scored], [index[p["label"]] for p in scored], labels)


# ---------------------------------------------------------------------------------------- mlm predict


def is_pair_model(cfg: Config) -> bool:
    return cfg.text_pair_column not in (None, NO_PAIR)


def examples_from_text(cfg: Config, text: Optional[str] = None, text_pair: Optional[str] = None, **other) -> list[dict]:
    """`mlm predict --text ... [--text_pair ...]` -> one example."""
    unused = [name for name, value in other.items() if value is not None]
    if unused:
        raise ConfigError(f"--{unused[0]}: not used by the cls task (it takes --text and optionally --text_pair)")
    if text is None or not text.strip():
        raise ConfigError("--text: empty text")
    if is_pair_model(cfg) and text_pair is None:
        raise ConfigError(f"--text_pair: this model classifies text pairs ({cfg.text_column} + {cfg.text_pair_column}); "
                          "pass the second text with --text_pair")
    if cfg.text_pair_column == NO_PAIR and text_pair is not None:
        raise ConfigError(f"--text_pair: this model classifies single texts ({cfg.text_column}), not pairs")
    example = {"text": text, "_where": "--text"}
    if text_pair is not None:
        if not text_pair.strip():
            raise ConfigError("--text_pair: empty text")
        example["text_pair"] = text_pair
    return [example]


def examples_from_file(path: str, cfg: Config) -> list[dict]:
    """`mlm predict --input FILE`: a table with the text column (labels, if present, become "gold"),
    or a .txt file with one text per line (blank lines skipped)."""
    if not path.lower().endswith((".txt", ".txt.gz")):
        return _read_gold_table(path, cfg, label_required=False)
    if is_pair_model(cfg):
        raise DataError(f"{path}: a .txt file has one text per line; this model classifies text pairs "
                        f"({cfg.text_column} + {cfg.text_pair_column}): use a csv/tsv/jsonl file with those columns")
    examples = []
    for line_no, line in enumerate(decoded_lines(path), 1):
        if line.strip():
            examples.append({"text": line.rstrip("\r\n"), "_where": f"{path}:{line_no}"})
    if not examples:
        raise DataError(f"{path}: no text (the file is empty)")
    return examples


def read_labelled(path: str, cfg: Config) -> list[dict]:
    """`mlm evaluate --input FILE`: a table read as fine-tuning reads a validation file (every row labelled)."""
    return _read_gold_table(path, cfg, label_required=True)


def _read_gold_table(path: str, cfg: Config, label_required: bool) -> list[dict]:
    """A table's examples, gold labels in the model's form: normalised for its problem type, named as in training."""
    examples = read_table(path, cfg, label_required)
    if cfg.problem_type != "auto":  # else the gold labels stay raw and `predictions` reads them per model
        _normalise_labels(examples, cfg)
        if cfg.label_names is not None:
            _rename_labels(examples, json.loads(cfg.label_names), cfg.problem_type)
    return examples
