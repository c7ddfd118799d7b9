"""Sequence-classification scores: `classification_metrics` (accuracy, macro F1, MCC, per class),
`regression_metrics` (MSE, Pearson, Spearman), `multilabel_metrics` (subset accuracy, F1). scikit-learn / scipy
are imported lazily, so that NER and QA do not pay for them."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], label_names: list[str]) -> dict:
    """Single-label classification scores over ALL classes in `label_names`.

    Returns accuracy, macro_precision, macro_recall, macro_f1, mcc (Matthews correlation) and
    per_class = {name: {precision, recall, f1, support}}. Class ids are positions in `label_names`.
    With two classes also precision, recall and f1 of the second one, the positive class of sorted binary
    names (1, pos, positive, true, yes): the F1 that GLUE reports for MRPC and QQP.
    Macro averages run over every class, including classes absent from both y_true and y_pred, and a
    0/0 precision or recall counts as 0 (scikit-learn's zero_division=0): a model that never predicts
    a class is penalised for it instead of the class silently dropping out of the average.
    """
    from sklearn.metrics import accuracy_score, matthews_corrcoef, precision_recall_fscore_support

    y_true, y_pred = _check_class_ids(y_true, y_pred, len(label_names))
    labels = list(range(len(label_names)))
    precision, recall, f1_, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    binary = {"precision": float(precision[1]), "recall": float(recall[1]), "f1": float(f1_[1])} if len(labels) == 2 else {}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        **binary,
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1_)),
        # scikit-learn returns 0.0 (not NaN) when MCC is undefined, e.g. a constant prediction.
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(label_names, precision, recall, f1_, support)
        },
    }


def _check_class_ids(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-d and of equal length, got {y_true.shape} and {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("no examples to score")
    for name, ids in (("y_true", y_true), ("y_pred", y_pred)):
        if ids.min() < 0 or ids.max() >= num_classes:
            raise ValueError(f"{name} holds class ids outside [0, {num_classes}): {sorted(set(ids.tolist()))}")
    return y_true, y_pred


def regression_metrics(y_true: Sequence[float], y_pred: Sequence[float]) -> dict:
    """mse, pearson and spearman correlation (the STS-B metrics).

    A correlation is undefined when either side is constant (zero variance) or has fewer than two
    items; scipy then returns NaN with a warning. We return 0.0 instead ("no linear / rank relation
    measured"), because a NaN in metrics.json breaks best-checkpoint selection and JSON consumers.
    """
    from scipy.stats import pearsonr, spearmanr

    t, p = np.asarray(y_true, dtype=np.float64).ravel(), np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    if t.size == 0:
        raise ValueError("no examples to score")
    defined = t.size >= 2 and np.ptp(t) > 0 and np.ptp(p) > 0
    return {
        "mse": float(np.mean((t - p) ** 2)),
        "pearson": float(pearsonr(t, p)[0]) if defined else 0.0,
        "spearman": float(spearmanr(t, p)[0]) if defined else 0.0,
    }


def multilabel_metrics(y_true, y_pred, label_names: list[str]) -> dict:
    """Multi-label scores from (N, C) 0/1 indicator matrices.

    micro_f1 pools every (example, label) decision; macro_f1 averages the per-label F1 over all C
    labels (0/0 counts as 0, as in `classification_metrics`); accuracy is subset accuracy: an example
    counts only if its whole label set is exactly right.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.ndim != 2 or t.shape != p.shape or t.shape[1] != len(label_names):
        raise ValueError(f"expected two (N, {len(label_names)}) matrices, got {t.shape} and {p.shape}")
    if t.shape[0] == 0:
        raise ValueError("no examples to score")
    if not (np.isin(t, (0, 1)).all() and np.isin(p, (0, 1)).all()):
        raise ValueError("multi-label targets and predictions must be 0/1 (threshold the scores first)")
    t, p = t.astype(np.int64), p.astype(np.int64)
    precision, recall, f1_, support = precision_recall_fscore_support(t, p, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(t, p)),
        "micro_f1": float(f1_score(t, p, average="micro", zero_division=0)),
        "macro_f1": float(np.mean(f1_)),
        "per_class": {
            name: {"precision": float(pr), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, pr, r, f, s in zip(label_names, precision, recall, f1_, support)
        },
    }
