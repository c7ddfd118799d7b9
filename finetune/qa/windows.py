"""Questions and contexts -> features: the question truncated to max_query_length, the context cut into
windows overlapping by doc_stride, each labelled with the answer's token span (or [CLS] when it is not inside)."""
from __future__ import annotations

from mlm.errors import ConfigError
from finetune.qa.config import Config, IGNORE


def encode(examples: list[dict], tokenizer, cfg: Config, labels: list[str], with_labels: bool) -> list[dict]:
    """Examples -> windows ("features"); several per example when the context is long.

    Each feature keeps "example_index" (its example's position in `examples`) and "offset_mapping":
    (char_start, char_end) in the context for context tokens, None for question and special tokens, so
    post-processing can only pick context spans. With labels, "start_positions"/"end_positions" are the
    answer's tokens when the window holds the WHOLE answer, else 0/0 ([CLS]); IGNORE when unknown.
    """
    _check_tokenizer(tokenizer)
    if not examples:
        return []
    questions = truncate_questions([ex["question"] for ex in examples], tokenizer, cfg.max_query_length)
    enc = tokenizer(
        questions,
        [ex["context"] for ex in examples],
        truncation="only_second",
        max_length=cfg.max_seq_length,
        stride=cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    features = []
    for i, example_index in enumerate(enc["overflow_to_sample_mapping"]):
        sequence_ids = enc.sequence_ids(i)
        offsets = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][i], sequence_ids)]
        feature = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
        if "token_type_ids" in enc:
            feature["token_type_ids"] = enc["token_type_ids"][i]
        feature["example_index"] = example_index
        feature["offset_mapping"] = offsets
        # The word of each context token (None elsewhere): predictions widen sub-word spans to whole words.
        feature["word_ids"] = [w if s == 1 else None for w, s in zip(enc.word_ids(i), sequence_ids)]
        if with_labels:
            example = examples[example_index]
            feature["start_positions"], feature["end_positions"] = answer_token_span(
                example["context"], example["answers"], offsets
            )
        features.append(feature)
    return features


def _check_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("tokenizer_name: QA needs a fast (Rust `tokenizers`) tokenizer for character offsets")
    if tokenizer.padding_side != "right":
        raise ConfigError(
            f"tokenizer_name: QA windows assume right padding, the tokenizer pads {tokenizer.padding_side}"
        )


def truncate_questions(questions: list[str], tokenizer, max_query_length: int) -> list[str]:
    """Cut each question text after its max_query_length-th token (so windows keep room for the context).

    Leading whitespace is stripped too: some SQuAD questions start with many spaces that would only
    shift the offsets. Cutting the text (not the ids) keeps a single tokenizer call for question + context.
    """
    questions = [q.lstrip() for q in questions]
    enc = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for question, ids, offsets in zip(questions, enc["input_ids"], enc["offset_mapping"]):
        out.append(question if len(ids) <= max_query_length else question[: offsets[max_query_length - 1][1]])
    return out


def answer_token_span(context: str, answers: dict, offsets: list) -> tuple[int, int]:
    """(start, end) token indices of the first locatable answer inside this window.

    0/0 ([CLS]) when the question has no answer or the window does not hold the whole answer;
    IGNORE/IGNORE when the example has answers but none could be located in the context.
    """
    if not answers["text"]:
        return 0, 0
    located = [(t, s) for t, s in zip(answers["text"], answers["answer_start"]) if s >= 0]
    if not located:
        return IGNORE, IGNORE
    text, char_start = located[0]
    char_end = char_start + len(text)
    # Spaces at the edges of an answer belong to no token; trim them so the window check finds the edge tokens.
    char_start, char_end = _without_edge_spaces(context, char_start, char_end)
    context_tokens = [i for i, o in enumerate(offsets) if o is not None]
    if not context_tokens:
        return 0, 0
    first, last = context_tokens[0], context_tokens[-1]
    if not (offsets[first][0] <= char_start and offsets[last][1] >= char_end):
        return 0, 0  # the answer starts before or ends after this window
    # The tokens the answer overlaps: a character the tokenizer drops (zero-width space, soft hyphen) at an edge
    # of the answer belongs to no token, and must not pull in the token before or after it.
    overlapping = [i for i in context_tokens if offsets[i][1] > char_start and offsets[i][0] < char_end]
    if not overlapping:
        return 0, 0
    return overlapping[0], overlapping[-1]


def _without_edge_spaces(text: str, start: int, end: int) -> tuple[int, int]:
    """text[start:end] narrowed to drop the whitespace at both ends."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
