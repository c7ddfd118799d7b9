"""Extractive QA scores: `normalize_answer`, `exact_match`, `f1`, `squad_scores`, identical to the official SQuAD
v1.1 and v2.0 evaluation scripts."""
from __future__ import annotations

import re
import string
from collections import Counter

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
