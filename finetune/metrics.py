"""Pure metric functions for the fine-tuning tasks: no torch, no model, no hub downloads.

`evaluate.load("accuracy" | "seqeval" | "squad")` needs the hub, so the three task families compute
their scores here instead:

* sequence classification: `classification_metrics`, `regression_metrics`, `multilabel_metrics`
  (scikit-learn / scipy, imported lazily so that NER and QA do not pay for them);
* NER: `entity_scores`, entity-level precision / recall / F1 with the chunk semantics of the CoNLL
  `conlleval` Perl script (2004-01-26 version), which is also seqeval's default (non-strict) mode;
  `chunks` and the tag-scheme converters `convert_tags`, `to_iob2`, `iobes_to_iob2`;
* extractive QA: `normalize_answer`, `exact_match`, `f1`, `squad_scores`, identical to the official
  SQuAD v1.1 and v2.0 evaluation scripts.

Every function returns plain Python floats / ints / dicts (JSON-able). Tests: tests/finetune/test_metrics.py.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------
# Sequence classification
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# NER: conlleval chunks
# --------------------------------------------------------------------------------------------------
#
# How conlleval reads a tag sequence. A tag is "O" or PREFIX-TYPE, split at the FIRST hyphen (so a
# type may itself contain hyphens, as in the 2004 script and seqeval). Between every two adjacent
# tokens the script asks endOfChunk / startOfChunk. Written out for the prefixes B, I, E, S, O those
# rules collapse to one statement:
#
#     the current token CONTINUES the previous token's chunk  iff
#         previous prefix is B or I,  current prefix is I or E,  and the two types are equal.
#
# Otherwise the previous chunk (if any) ends, and a new chunk starts at the current token unless its
# tag is O. Consequences worth knowing:
#   * I-X after O (or at the start of a sentence) starts a chunk: IOB1 input and sloppy IOB2
#     predictions are read without repair, exactly like conlleval.
#   * A type change ends a chunk even without a B: "I-PER I-ORG" is two chunks.
#   * E and S close their chunk; B and S always open one (IOBES).
# For sequences of B / I / O only this is the Perl script exactly. The Perl script predates IOBES:
# it has no rule for S (it would read "S-PER S-PER" as one chunk) and reads E as in IOE; for E and S
# we follow seqeval's IOBES-aware extension of the same rules, so valid IOBES scores as expected.
# The Perl script's "[", "]" and "." tags (open/close-bracket chunking formats) are not supported.
#
# Tags without a prefix ("PER"): the Perl script reads them as prefix "PER" with an empty type, which
# makes no chunks at all, and seqeval splits them into prefix "P" and type "ER"; both are silent
# garbage, so we raise ValueError. IO-scheme data ("PER PER O") goes through
# convert_tags(tags, "io") first. BILOU's L- and U- are read as E- and S-.
#
# A correct chunk has the same type, first token and last token in gold and prediction. Sentences
# are independent: a chunk never crosses a sentence boundary. conlleval gets this by reading the
# blank line between sentences as a token tagged O in both columns that is not counted in the token
# accuracy; seqeval, given a list of sentences, appends an "O" to each sentence before flattening,
# which is the same thing. (A single flat list is one sentence to both, and to us.)

_PREFIX_ALIASES = {"L": "E", "U": "S"}  # BILOU -> IOBES


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''); 'B' -> ('B', '') (a chunk with an empty type)."""
    if tag == "O":
        return "O", ""
    prefix, _, type_ = tag.partition("-")
    prefix = _PREFIX_ALIASES.get(prefix, prefix)
    if prefix not in ("B", "I", "E", "S"):
        raise ValueError(
            f"tag {tag!r} is neither 'O' nor PREFIX-TYPE with a B/I/E/S (or L/U) prefix; "
            "convert IO-scheme tags first with convert_tags(tags, 'io')"
        )
    return prefix, type_


def _continues(prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    """Does the current token extend the chunk the previous token is in? (see the note above)"""
    return prev[0] in ("B", "I") and cur[0] in ("I", "E") and prev[1] == cur[1]


def chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Chunks of ONE sentence as (type, start, end_exclusive), in order, read the conlleval way.

    >>> chunks(["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG"])
    [('PER', 0, 2), ('PER', 2, 3), ('LOC', 4, 5), ('ORG', 5, 6)]
    """
    spans: list[tuple[str, int, int]] = []
    start, prev = None, ("O", "")  # start: first token of the open chunk, None when outside
    for i, tag in enumerate(tags):
        cur = _split_tag(tag)
        if start is not None and not _continues(prev, cur):
            spans.append((prev[1], start, i))
            start = None
        if start is None and cur[0] != "O":
            start = i
        prev = cur
    if start is not None:  # the sentence end closes the last chunk
        spans.append((prev[1], start, len(tags)))
    return spans


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """conlleval entity-level scores over a list of sentences (a flat list of tags is one sentence).

    Returns precision, recall, f1 (micro over all chunks, fractions in [0, 1], 0.0 where the
    denominator is 0, as conlleval prints), accuracy (token accuracy: tags equal as strings),
    per_type = {TYPE: {precision, recall, f1, support = number of gold chunks}} for every type seen
    in gold or prediction, and the counts gold_chunks, predicted_chunks, correct_chunks, tokens.
    Equal to seqeval's precision/recall/f1_score, accuracy_score and classification_report in the
    default mode. No tokens at all gives accuracy 0.0.
    """
    gold, pred = _as_sentences(gold), _as_sentences(pred)
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    n_gold, n_pred, n_correct = Counter(), Counter(), Counter()  # per type
    tokens = correct_tags = 0
    for k, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {k}: {len(g)} gold tags but {len(p)} predicted")
        g_spans, p_spans = set(chunks(g)), set(chunks(p))
        n_gold.update(t for t, _, _ in g_spans)
        n_pred.update(t for t, _, _ in p_spans)
        # Chunks of one sentence never overlap, so "same type, start and end" is set intersection.
        n_correct.update(t for t, _, _ in g_spans & p_spans)
        tokens += len(g)
        correct_tags += sum(a == b for a, b in zip(g, p))

    total_gold, total_pred, total_correct = sum(n_gold.values()), sum(n_pred.values()), sum(n_correct.values())
    scores = _prf(total_correct, total_pred, total_gold)
    per_type = {}
    for type_ in sorted(set(n_gold) | set(n_pred)):
        p_, r_, f_ = _prf(n_correct[type_], n_pred[type_], n_gold[type_])
        per_type[type_] = {"precision": p_, "recall": r_, "f1": f_, "support": n_gold[type_]}
    return {
        "precision": scores[0],
        "recall": scores[1],
        "f1": scores[2],
        "accuracy": correct_tags / tokens if tokens else 0.0,
        "per_type": per_type,
        "gold_chunks": total_gold,
        "predicted_chunks": total_pred,
        "correct_chunks": total_correct,
        "tokens": tokens,
    }


def _as_sentences(tags) -> list[Sequence[str]]:
    tags = list(tags)
    return [tags] if tags and isinstance(tags[0], str) else tags


def _prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
    """precision, recall, F1 with 0/0 -> 0; F1 as 2PR/(P+R), the formula of conlleval and seqeval
    (rather than 2C/(G+P)) so that the floats agree with them to the last bit."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    f1_ = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1_


# --------------------------------------------------------------------------------------------------
# NER: tag-scheme conversion (the NER task stores every dataset as IOB2 internally)
# --------------------------------------------------------------------------------------------------

SCHEMES_FROM = ("io", "iob1", "iob2", "iobes", "bilou")
SCHEMES_TO = ("iob1", "iob2", "iobes")


def convert_tags(tags: Sequence[str], scheme_from: str = "iob1", scheme_to: str = "iob2") -> list[str]:
    """Rewrite ONE sentence's tags into another scheme without changing its chunks.

    The tags are read with `chunks` (which understands IOB1, IOB2, IOBES and BILOU alike, so for
    those `scheme_from` only documents the input) and written back in `scheme_to`:
      iob2: B- on the first token of every chunk, I- on the rest;
      iob1: I- on the first token unless the previous token ends a chunk of the same type;
      iobes: S- for one-token chunks, else B-, I-..., E-.
    scheme_from="io" reads bare labels ("PER PER O LOC") as I-PER I-PER O I-LOC, so a run of one
    label is one entity. (conlleval's -r option instead makes every bare token its own chunk.)
    Because the chunks are unchanged, entity_scores gives the same entity scores before and after.
    """
    if scheme_from not in SCHEMES_FROM:
        raise ValueError(f"unknown tag scheme {scheme_from!r}; expected one of {SCHEMES_FROM}")
    if scheme_to not in SCHEMES_TO:
        raise ValueError(f"cannot write tag scheme {scheme_to!r}; expected one of {SCHEMES_TO}")
    tags = list(tags)
    if scheme_from == "io":
        tags = [t if t == "O" or t.startswith("I-") else f"I-{t}" for t in tags]

    out = ["O"] * len(tags)
    prev_end, prev_type = -1, None  # the chunk just written, for IOB1's B- rule
    for type_, start, end in chunks(tags):
        suffix = f"-{type_}" if type_ else ""  # a chunk with an empty type is written as a bare prefix
        first = "B"
        if scheme_to == "iob1" and not (prev_end == start and prev_type == type_):
            first = "I"
        for i in range(start, end):
            out[i] = ("I" if i > start else first) + suffix
        if scheme_to == "iobes":
            if end - start == 1:
                out[start] = "S" + suffix
            else:
                out[end - 1] = "E" + suffix
        prev_end, prev_type = end, type_
    return out


def to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 (or already IOB2) tags of one sentence -> IOB2: every chunk starts with B-."""
    return convert_tags(tags, "iob1", "iob2")


def iobes_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOBES (or BILOU) tags of one sentence -> IOB2: S- becomes B-, E- becomes I-."""
    return convert_tags(tags, "iobes", "iob2")


# --------------------------------------------------------------------------------------------------
# Extractive QA: the SQuAD v1.1 / v2.0 official scores
# --------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)  # ASCII only: curly quotes, dashes etc. are kept
_ARTICLES = re.compile(r"\b(a|an|the)\b")  # whole words; \b is Unicode-aware for str patterns


def normalize_answer(s: str) -> str:
    """The official SQuAD normalisation, in its order: lower-case, drop ASCII punctuation characters
    (so "a-team" becomes "ateam" and keeps its "a"), replace the whole words a/an/the by a space,
    then collapse all whitespace runs to single spaces and strip the ends."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str, version_2: bool = False) -> float:
    """Token-level F1 between the normalised answers, counting repeated tokens (bag of words).

    When a side normalises to no tokens the two official scripts differ: v1.1 gives 0.0 (no token
    in common), v2.0 gives 1.0 if both are empty (a correct "no answer") and 0.0 otherwise.
    """
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version_2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(gold: dict[str, list[str]], pred: dict[str, str], version_2: bool = False) -> dict:
    """SQuAD scores (0-100) of predictions against the gold answers of every question.

    Each question scores the max over its gold answers. A question missing from `pred` scores 0 and
    still counts in `total` (the v1.1 script's rule; the v2.0 script would stop with a KeyError);
    `missing` says how many. Predictions for unknown ids are ignored, as by both scripts.

    version_2=False (v1.1): returns exact_match, f1, total, missing; every question needs >= 1 answer.
    version_2=True (v2.0): a question whose gold list is empty or holds only "" is unanswerable, and
    the right prediction for it is "". As in the v2.0 script, gold answers that normalise to nothing
    are dropped and an emptied list becomes [""]; HasAns_* / NoAns_* (exact, f1, total) are added
    for whichever group is non-empty, plus `exact` (= exact_match). The script's no-answer
    probability thresholds (--na-prob-file) are not implemented: the predictions are taken as given.
    """
    em_by_id, f1_by_id, has_answer = {}, {}, {}
    for qid, answers in gold.items():
        answers = list(answers)
        if version_2:
            has_answer[qid] = any(a != "" for a in answers)
            answers = [a for a in answers if normalize_answer(a)] or [""]
        elif not answers:
            raise ValueError(f"question {qid!r} has no gold answer (unanswerable questions need version_2=True)")
        if qid not in pred:
            em_by_id[qid] = f1_by_id[qid] = 0.0
            continue
        em_by_id[qid] = max(exact_match(pred[qid], a) for a in answers)
        f1_by_id[qid] = max(f1(pred[qid], a, version_2=version_2) for a in answers)

    def summary(ids: list[str]) -> tuple[float, float, int]:
        n = len(ids)
        if n == 0:
            return 0.0, 0.0, 0
        return 100.0 * sum(em_by_id[i] for i in ids) / n, 100.0 * sum(f1_by_id[i] for i in ids) / n, n

    em, f1_, total = summary(list(gold))
    scores = {"exact_match": em, "f1": f1_, "total": total, "missing": sum(q not in pred for q in gold)}
    if version_2:
        scores["exact"] = em
        for group, wanted in (("HasAns", True), ("NoAns", False)):
            ids = [q for q in gold if has_answer[q] == wanted]
            if ids:  # the v2.0 script reports a group only when it has questions
                g_em, g_f1, g_n = summary(ids)
                scores.update({f"{group}_exact": g_em, f"{group}_f1": g_f1, f"{group}_total": g_n})
    return scores
