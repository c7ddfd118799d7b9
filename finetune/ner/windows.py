"""Sentences -> features: words split into sub-words, labels on the first sub-word of each word (or all of
them), sentences longer than max_seq_length cut into overlapping windows at word boundaries, and which window
owns each word (the one where it sits most centrally)."""
from __future__ import annotations

from typing import Optional

from mlm.errors import ConfigError, DataError
from mlm.core.hf import pre_tokenizer_steps
from finetune.ner.config import Config, IGNORE
from finetune.ner.tags import _word_where


def encode(examples: list[dict], tokenizer, cfg: Config, labels: list[str], with_labels: bool) -> list[dict]:
    """Sentences -> model windows, with the bookkeeping to map token outputs back to words.

    Gold tags of a type unseen in training raise DataError (file:line of the word), with or without labels.

    Each feature: input_ids, attention_mask, [token_type_ids], [labels], plus
      example_index  the sentence it came from
      word_ids       per token, the index of its word in the sentence (None for [CLS]/[SEP])
      owned_words    the words this window predicts (each word is owned by exactly one window)
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("tokenizer: NER needs a fast tokenizer (word_ids); load it with AutoTokenizer")
    label2id = {label: i for i, label in enumerate(labels)}
    prefix, suffix = _special_frame(tokenizer)
    budget = cfg.max_seq_length - len(prefix) - len(suffix)  # content tokens per window
    # One batched call for all sentences, without specials: windows are cut from these token lists.
    words = [ex["tokens"] for ex in examples]
    if _marks_spaces_in_tokens(tokenizer):  # byte-level BPE: "Smith" alone is "S mith", " Smith" is "ĠSmith"
        words = [[" " + word for word in sentence] for sentence in words]
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    with_types = "token_type_ids" in tokenizer.model_input_names
    features = []
    for index, ex in enumerate(examples):
        word_tokens = _group_by_word(encoded["input_ids"][index], encoded.word_ids(index), len(ex["tokens"]))
        word_tokens = [ids[:budget] for ids in word_tokens]  # a single word longer than a window is cut
        if with_labels and "tags" not in ex:
            raise DataError(f"{ex.get('_where', '<input>')}: no tags to train on")
        # Gold tags are checked even without labels: evaluation would score a type the model cannot predict.
        tag_ids = _tag_ids(ex, label2id) if "tags" in ex else None
        lengths = [len(ids) for ids in word_tokens]
        windows = make_windows(lengths, budget, cfg.stride)
        owners = _owners(lengths, windows)
        for k, (start, end) in enumerate(windows):
            word_ids = [None] * len(prefix)
            for w in range(start, end):
                word_ids += [w] * lengths[w]
            word_ids += [None] * len(suffix)
            input_ids = prefix + [t for w in range(start, end) for t in word_tokens[w]] + suffix
            feature = {
                "input_ids": input_ids,
                "attention_mask": [1] * len(input_ids),
                "example_index": index,
                "word_ids": word_ids,
                "owned_words": [w for w in range(start, end) if owners[w] == k],
            }
            if with_types:
                feature["token_type_ids"] = [0] * len(input_ids)
            if with_labels:
                feature["labels"] = _token_labels(word_ids, tag_ids, labels, label2id, cfg.label_all_tokens)
            features.append(feature)
    return features


def _marks_spaces_in_tokens(tokenizer) -> bool:
    """Byte-level BPE (RoBERTa, GPT-2) without add_prefix_space: a word's tokens depend on the space before
    it, which split words do not carry, so each one needs it back (what add_prefix_space=True does)."""
    return any(step.get("type") == "ByteLevel" and not step.get("add_prefix_space", False)
               for step in pre_tokenizer_steps(tokenizer))


def _special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single sequence ([CLS] / [SEP] for BERT)."""
    enc = tokenizer(["a"], is_split_into_words=True)
    word_ids = enc.word_ids()
    first = word_ids.index(0)
    last = len(word_ids) - 1 - word_ids[::-1].index(0)
    return list(enc["input_ids"][:first]), list(enc["input_ids"][last + 1:])


def _group_by_word(input_ids: list[int], word_ids: list, n_words: int) -> list[list[int]]:
    """Token ids of each word; [] for a word that tokenizes to nothing (zero-width or control characters)."""
    groups: list[list[int]] = [[] for _ in range(n_words)]
    for token, w in zip(input_ids, word_ids):
        if w is not None:
            groups[w].append(token)
    return groups


def _tag_ids(ex: dict, label2id: dict) -> list[int]:
    ids = []
    for i, tag in enumerate(ex["tags"]):
        if tag not in label2id:
            raise DataError(
                f"{_word_where(ex, i)}: tag {tag!r} of word {ex['tokens'][i]!r} was never seen in the training data "
                f"(labels: {', '.join(label2id)})"
            )
        ids.append(label2id[tag])
    return ids


def _token_labels(word_ids, tag_ids, labels, label2id, label_all_tokens) -> list[int]:
    """The word's label on its first sub-word; later sub-words get -100, or the word's I- tag."""
    out = []
    previous = None
    for w in word_ids:
        if w is None:
            out.append(IGNORE)
        elif w != previous:
            out.append(tag_ids[w])
        elif label_all_tokens:
            tag = labels[tag_ids[w]]
            out.append(label2id["I-" + tag[2:]] if tag.startswith("B-") else tag_ids[w])
        else:
            out.append(IGNORE)
        previous = w
    return out


def make_windows(lengths: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) of the windows of a sentence whose words have `lengths` sub-words.

    Windows start and end at word boundaries, hold at most `budget` sub-words, and each one starts as far
    back as possible while overlapping the previous by at most `stride` sub-words (always moving on by
    at least one word). Words longer than `budget` must have been cut to it.
    """
    n = len(lengths)
    if sum(lengths) <= budget:
        return [(0, n)]
    windows = []
    start = 0
    while True:
        end, used = start, 0
        while end < n and used + lengths[end] <= budget:
            used += lengths[end]
            end += 1
        windows.append((start, end))
        if end == n:
            return windows
        next_start, overlap = end, 0
        while next_start - 1 > start and overlap + lengths[next_start - 1] <= stride:
            next_start -= 1
            overlap += lengths[next_start]
        start = next_start


def _owners(lengths: list[int], windows: list[tuple[int, int]]) -> list[Optional[int]]:
    """For each word, the window that predicts it: the one where it has the most context.

    A word's context in a window is min(sub-words before it, sub-words after it) inside that window (the
    "max context" rule of BERT's SQuAD code): a word near a cut edge sees only one side, so it is taken
    from the window where it sits most centrally. Ties go to the earlier window. Words with no sub-words
    are owned by nobody and predicted "O".
    """
    best: list[Optional[int]] = [None] * len(lengths)
    best_score = [-1] * len(lengths)
    for k, (start, end) in enumerate(windows):
        total = sum(lengths[start:end])
        before = 0
        for w in range(start, end):
            if lengths[w]:
                score = min(before, total - before - lengths[w])
                if score > best_score[w]:
                    best[w], best_score[w] = k, score
            before += lengths[w]
    return best
