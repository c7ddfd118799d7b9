"""Window logits -> answers: the best valid span over every window of a question (n-best, max answer
length, no-answer threshold for SQuAD v2), widened to whole words, and the official {id: answer} file."""
from __future__ import annotations

import json
import os
from typing import Iterable, Optional
import numpy as np

from finetune.qa.config import Config
from finetune.qa.windows import _without_edge_spaces


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
