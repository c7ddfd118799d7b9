"""Tag schemes: detect IOB1 / IOB2 / IOBES / BILOU / IO per file and convert every sentence to IOB2, with
one-line errors for transitions a scheme does not allow; `convert_tags` (and `to_iob2`, `iobes_to_iob2`) rewrite a
sentence's tags in another scheme, its chunks (as conlleval reads them: finetune/metrics/conlleval.chunks) kept."""
from __future__ import annotations

import re

from typing import Sequence

from finetune.metrics.conlleval import chunks
from mlm.errors import DataError
from finetune.ner.config import logger


# The B/I/E/S prefixes each scheme may use; anything else is an error, not a silent guess.
SCHEME_PREFIXES = {"iob1": "BI", "iob2": "BI", "iobes": "BIES", "bilou": "BILU"}


def detect_scheme(tag_sequences: list[list[str]]) -> str:
    """iobes if any E-/S- tag; bilou if any L-/U- tag; io if no tag has a prefix at all; else iob1 if some
    entity starts with I- (as in CoNLL-2003); else iob2.

    iob1 and iob2 convert to IOB2 by the same rule, so the distinction only matters for messages.
    """
    return explain_scheme(tag_sequences)[0]


def explain_scheme(tag_sequences: list[list[str]]) -> tuple[str, str]:
    """(detect_scheme's choice, why: the tag that decided it), for the log."""
    iob1 = prefixed = bare = None
    for tags in tag_sequences:
        previous = "O"
        for tag in tags:
            if tag[:2] in ("E-", "S-"):
                return "iobes", f"an E-/S- tag ({tag})"
            if tag[:2] in ("L-", "U-"):
                return "bilou", f"an L-/U- tag ({tag})"
            if tag.startswith("I-") and previous[2:] != tag[2:] and iob1 is None:
                iob1 = f"{tag} after {previous}"
            if tag != "O":
                has_prefix = tag[1:2] == "-" and tag[0] in "BI"  # "B-" too: a malformed prefixed tag
                if has_prefix:
                    prefixed = prefixed or tag
                else:
                    bare = bare or tag
            previous = tag
    if bare and not prefixed:
        return "io", f"no tag has a B-/I- prefix ({bare})"
    if iob1:
        return "iob1", f"an entity starts with I- ({iob1})"
    return "iob2", "every entity starts with B-" if prefixed else "every tag is O"


def _convert_to_iob2(sentences: list[dict], scheme: str) -> list[dict]:
    """Check every tag against the scheme (auto: detected over the whole file), then rewrite it in IOB2, in place."""
    detected = scheme == "auto"
    if detected:
        scheme, why = explain_scheme([s["tags"] for s in sentences])
        if sentences:
            logger.info("%s: tag_scheme auto -> %s: %s", sentences[0].get("_where", "").rpartition(":")[0] or "data", scheme, why)
    allowed = SCHEME_PREFIXES.get(scheme)  # io: any label is a bare entity type
    how = " (detected from the file; set tag_scheme to choose)" if detected else ""
    if scheme in ("iob1", "iob2"):
        _warn_entities_starting_with_i(sentences)
    for s in sentences:
        for i, tag in enumerate(s["tags"]):
            if allowed and tag != "O" and not (len(tag) > 2 and tag[0] in allowed and tag[1] == "-"):
                expected = "O or " + "/".join(f"{p}-TYPE" for p in allowed)
                raise DataError(f"{_word_where(s, i)}: tag {tag!r} is not {scheme}{how}: expected {expected}")
        if scheme in ("iobes", "bilou"):
            _check_transitions(s, scheme, how)
        # Rewritten from the chunks as conlleval reads them, so the result is always valid IOB2.
        s["tags"] = convert_tags(s["tags"], scheme, "iob2")
    return sentences


def _warn_entities_starting_with_i(sentences: list[dict]) -> None:
    """An I-X that starts an entity (after O, or B-LOC I-PER) is read as B-X, as conlleval does: the rule in IOB1,
    but in a file that mostly starts entities with B- (IOB2) likely a mistake, so it is warned about there."""
    starts = []  # (file:line, "previous tag") of every entity start, and its prefix
    for s in sentences:
        for i, (previous, tag) in enumerate(zip(["O", *s["tags"]], s["tags"])):
            if tag[:2] in ("B-", "I-") and previous[2:] != tag[2:]:
                starts.append((tag[0], _word_where(s, i), f"{previous} {tag}"))
    with_i = [(where, pair) for prefix, where, pair in starts if prefix == "I"]
    if with_i and len(with_i) * 2 < len(starts):
        where, pair = with_i[0]
        logger.warning("%s: %d tags I-X continue no X entity though the file starts entities with B- (first: %s, "
                       "%s); each was read as the start of a new entity, B-X", where.rpartition(":")[0], len(with_i),
                       where, pair)


def _check_transitions(sentence: dict, scheme: str, how: str) -> None:
    """IOBES / BILOU say where every entity ends: B-X continues with I-X or ends with E-X / L-X, a single word is
    S-X / U-X, and I-/E-/L- never start one. Anything else (a BIO file read as BILOU, IOB1 tags in an IOBES file)
    is an error at its word, not a guess."""
    last, single = ("E", "S") if scheme == "iobes" else ("L", "U")
    tags = sentence["tags"]
    open_type = None  # the type of the entity a B-/I- tag left open
    for i, tag in enumerate([*tags, "O"]):  # the sentence end must find no entity open
        prefix, type_ = (tag[0], tag[2:]) if tag != "O" else ("O", None)
        if open_type is not None and (prefix not in ("I", last) or type_ != open_type):
            expected = f"I-{open_type} or {last}-{open_type}"
            got = "the sentence end" if i == len(tags) else repr(tag)
            raise DataError(f"{_word_where(sentence, min(i, len(tags) - 1))}: {got} after {tags[i - 1]!r} is not "
                            f"{scheme}{how}: expected {expected}")
        if open_type is None and prefix in ("I", last):
            previous = tags[i - 1] if i else "the sentence start"
            raise DataError(f"{_word_where(sentence, i)}: tag {tag!r} after {previous!r} is not {scheme}{how}: an "
                            f"entity starts with B- or {single}-")
        open_type = type_ if prefix in ("B", "I") else None


def _word_where(example: dict, i: int) -> str:
    """'path:line' of word i (CoNLL files have one line per word; other sources one line per sentence)."""
    lines = example.get("_lines")
    if not lines:
        return example.get("_where", "<input>")
    path = example["_where"].rpartition(":")[0]
    return f"{path}:{lines[i]}"


_TAG_RE = re.compile(r"O|[%s]-\S+" % "".join(sorted(set("".join(SCHEME_PREFIXES.values())))))


# The NER task stores every dataset as IOB2 internally.
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
