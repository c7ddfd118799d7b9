"""Examples -> features: texts (and pairs) tokenised in chunks, truncated to max_seq_length, with their targets
(class id, regression value or multi-hot vector)."""
from __future__ import annotations

import re
from typing import Optional

from mlm.errors import DataError
from mlm.core.records import PIECE_CHARS, text_pieces
from finetune.cls.config import Config, ENCODE_CHUNK, logger
from finetune.cls.labels import _label_set, _regression_target, label_name, problem_type


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
