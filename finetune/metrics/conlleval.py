"""NER entity scores: `entity_scores`, entity-level precision / recall / F1 with the chunk semantics of the CoNLL
`conlleval` Perl script (2004-01-26 version), which is also seqeval's default (non-strict) mode, and `chunks`, the
chunk reading they rest on (finetune/ner/tags.py converts tag schemes with it)."""
from __future__ import annotations

from collections import Counter
from typing import Sequence

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
