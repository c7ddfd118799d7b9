"""Raw text -> words for `mlm predict --text`: a Penn-Treebank-like split (abbreviations and titles kept
whole, English clitics split off, one CJK ideograph per word), with each word's character span."""
from __future__ import annotations

import re
import unicodedata


def split_words(text: str) -> tuple[list[str], list[list[int]]]:
    """Words of raw text, the way NER corpora (CoNLL, OntoNotes: Penn Treebank style) tokenise, and their
    [start, end) offsets.

    Whitespace separates words; punctuation and symbols at a word's edges are words of their own ("Paris," ->
    Paris ,), a run of one mark as one word ("--", "..."); inside a word they stay ("Boutros-Ghali", "10,000").
    Abbreviations keep their period ("U.S.", "J.", "St."), and clitics are split off ("Clinton's" -> Clinton
    's, "don't" -> do n't): a model trained on such words labels only their first piece, so splitting text
    otherwise would leave pieces unpredicted. CJK ideographs are one word each (as in BERT and Chinese NER
    data); combining marks (Devanagari vowel signs, decomposed accents) belong to the word they follow.
    """
    spans: list[tuple[int, int]] = []
    for chunk in _CHUNK_RE.finditer(text):
        start, end = chunk.span()
        while start < end and _is_edge_punctuation(text[start]):  # leading marks, a run of one mark at a time
            run = start + 1
            while run < end and text[run] == text[start]:
                run += 1
            spans.append((start, run))
            start = run
        trailing: list[tuple[int, int]] = []
        while end > start and _is_edge_punctuation(text[end - 1]) and not _is_abbreviation(text[start:end]):
            run = end - 1
            while run > start and text[run - 1] == text[end - 1]:
                run -= 1
            trailing.append((run, end))
            end = run
        clitic = _CLITIC_RE.search(text, start, end)
        if clitic and clitic.start() > start:
            trailing.append((clitic.start(), end))
            end = clitic.start()
        if start < end:
            spans.append((start, end))
        spans.extend(reversed(trailing))
    return [text[s:e] for s, e in spans], [[s, e] for s, e in spans]


def _is_abbreviation(word: str) -> bool:
    return bool(_ABBREVIATION_RE.fullmatch(word)) or word.lower() in _TITLES


# Abbreviations with a final period: U.S., e.g., Ph.D., and initials: J. (not "said...")
_ABBREVIATION_RE = re.compile(r"(?:[^\W\d_]{1,3}\.){2,}|[^\W\d_]\.")


# Titles and company forms written with a period, kept whole as the Penn Treebank does.
_TITLES = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "gen.", "col.", "lt.", "sgt.", "capt.", "gov.",
           "sen.", "rep.", "rev.", "inc.", "corp.", "co.", "ltd.", "bros.", "no.", "vs.", "mt.", "ft.", "jan.", "feb.",
           "mar.", "apr.", "jun.", "jul.", "aug.", "sep.", "sept.", "oct.", "nov.", "dec."}


# English clitics split off the word before them: 's 're 've 'll 'd 'm n't (straight or curly apostrophe).
_CLITIC_RE = re.compile(r"(?:['\u2019](?:s|re|ve|ll|d|m)|n['\u2019]t)\Z", re.IGNORECASE)


# A run of non-space characters, or one CJK ideograph (CJK Unified Ideographs, Extension A, Compatibility).
_CHUNK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


def _is_edge_punctuation(char: str) -> bool:
    return unicodedata.category(char)[0] in "PS"  # punctuation and symbols ($, %, emoji)
