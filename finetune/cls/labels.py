"""Labels: the problem type (single-label, regression, multi-label) resolved from the training labels, label
normalisation ("1" and "1.0" are one class) and the sorted class list."""
from __future__ import annotations

import json
import math
import re
from typing import Optional

from mlm.errors import DataError
from finetune.cls.config import Config, FEW_FRACTIONAL


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
