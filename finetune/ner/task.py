"""Named-entity recognition as token classification: one tag per word, entities scored conlleval-style.

Run it (CoNLL-2003, three epochs):

    make finetune TASK=ner                                     # recipes/finetune/ner.yaml
    mlm finetune --task ner --recipe recipes/finetune/ner.yaml --model_name_or_path outputs/pretrain-demo
    mlm predict --model outputs/finetune-ner --text "John Smith visited Paris."   # or --input FILE

Data (`load_splits`):
  * CoNLL column files (`eng.train`, `*.conll`, `*.txt`, `*.tsv`): one word per line, columns separated by
    spaces or tabs, a blank line between sentences, `-DOCSTART-` lines skipped. The word and the tag are
    read from `token_column` and `tag_column` (Python indices, -1 = last column). `mlm predict --input`
    reads CoNLL files by suffix (.conll, .iob, .bio, .tsv, ...), with tags (shown as gold) or words only.
  * JSON lines / parquet (`*.jsonl`, `*.json`, `*.parquet`): one sentence per row,
    `{"tokens": [...], "tags": [...]}` (keys `tokens_key`, `tags_key`).
  * A hub dataset (`dataset_name`): columns `tokens_key` and `tags_key` (falling back to `ner_tags`);
    integer ClassLabel tags are mapped to their names.
  Tags may be IOB1 (the original CoNLL-2003), IOB2, IOBES, BILOU or IO (bare types: PER, LOC); every split
  is converted to IOB2 as it is read, so everything downstream (labels, model, metrics, predictions) speaks
  IOB2 only.

Model side (`encode` .. `predictions`): words are split into sub-words by the fast tokenizer; the label
sits on the first sub-word of each word (the others get -100, or the word's I- tag with
label_all_tokens). A sentence longer than max_seq_length becomes several overlapping windows, and each
word is predicted from the one window where it has the most context on both sides (see `_owners`).

Output (`predictions`, one JSON record per sentence): tokens, predicted_tags (IOB2; the argmax is repaired
so that an I-X not continuing an X entity becomes B-X), gold_tags when known, and entities
[{type, start_word, end_word (exclusive), text, score}], score = mean over the entity's words of the
probability the model gave its chosen label. Raw text (`mlm predict --text`) is split into words by
`split_words`, and its entities also carry character offsets start/end (exclusive) into the text.
"""
from __future__ import annotations

import bisect
import numpy as np
import torch
import torch.nn.functional as F

from finetune.metrics.conlleval import chunks, entity_scores
from finetune.ner.tags import to_iob2
from mlm.errors import DataError
from finetune.ner.config import AutoModel, Config, IGNORE, UNITS
from finetune.ner.data import load_splits
from finetune.ner.windows import encode
from finetune.common import labels_from_id2label, no_class_names, no_official_format, pad_batch
from finetune.ner.inputs import examples_from_file, examples_from_text, read_labelled


HAS_CLASSES = True
HEAD_READS_FIRST_TOKEN = False  # the head reads every token
LENGTH_FIELDS = ("stride",)  # token counts `mlm predict` scales with max_seq_length
write_official = no_official_format
rename_classes = no_class_names


def settings_from_hf(hf_config: dict) -> tuple[dict, list[str]]:
    """A token-classification model without mlm_task.json: the default settings, its id2label classes."""
    return {}, labels_from_id2label(hf_config)


def label_list(train_examples: list[dict], cfg: Config) -> list[str]:
    """["O", "B-T1", "I-T1", "B-T2", ...]: entity types sorted, both B- and I- for every type seen.

    Both prefixes even when train only shows one, so the model can predict a whole entity of any type.
    """
    types = sorted({tag[2:] for ex in train_examples for tag in ex["tags"] if tag != "O"})
    if not types:
        source = train_examples[0]["_where"].rpartition(":")[0] if train_examples else "training data"
        raise DataError(f"{source}: no entity tags (every tag is O): nothing to learn")
    return ["O"] + [f"{prefix}-{t}" for t in types for prefix in "BI"]


def model_kwargs(cfg: Config, labels: list[str]) -> dict:
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def collate(features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
    """Right-pad to the longest feature (outputs() relies on right padding); labels padded with -100."""
    return pad_batch(features, tokenizer, {"labels": IGNORE})


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


TARGETS = ("labels",)  # the batch keys loss_of reads: evaluation features that have them also give a loss


def forward(model, batch: dict) -> torch.Tensor:
    """(B, T, C) logits in fp32 (a bf16 autocast does not round the loss)."""
    return model(**_model_inputs(batch)).logits.float()


def loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return loss_of(forward(model, batch), batch)


def loss_of(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy over labelled sub-words, how many there are) for exact global averaging."""
    labels = batch["labels"]  # (B, T)
    # Sum (not mean) so a batch with no labels gives 0, not NaN.
    total = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    return total, (labels != IGNORE).sum()


@torch.no_grad()
def outputs(model, batch: dict) -> list[np.ndarray]:
    return outputs_of(forward(model, batch), batch)


def outputs_of(logits: torch.Tensor, batch: dict) -> list[np.ndarray]:
    """Per feature, its (T_i, C) logits as float32 numpy, padding cut off."""
    logits = logits.cpu().numpy()  # (B, T, C)
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    return [logits[i, :n] for i, n in enumerate(lengths)]


def predictions(
    examples: list[dict], features: list[dict], outputs: list, cfg: Config, labels: list[str]
) -> list[dict]:
    """One record per sentence: tags per word (valid IOB2) and the entities they make.

    Entity score: the mean, over the entity's words, of the softmax probability of the label the model
    chose for that word (its argmax, before the IOB2 repair).
    """
    word_logits = _word_logits(examples, features, outputs)
    records = []
    for ex, logits in zip(examples, word_logits):
        n = len(ex["tokens"])
        tags, confidence = ["O"] * n, np.zeros(n)
        for w, row in logits.items():
            probs = _softmax(row)
            best = int(probs.argmax())
            tags[w], confidence[w] = labels[best], float(probs[best])
        _fill_words_without_pieces(tags, confidence, logits)
        tags = to_iob2(tags)  # an I-X after O or after another type becomes B-X
        record = {}
        if "text" in ex:
            record["text"] = ex["text"]
        record["tokens"] = ex["tokens"]
        record["predicted_tags"] = tags
        if "tags" in ex or "gold_tags" in ex:
            record["gold_tags"] = ex.get("tags", ex.get("gold_tags"))
        if "_where" in ex:  # file:line, to join predictions back to input rows
            record["source"] = ex["_where"]
        # chunks: (type, start_word, end_word exclusive) in sentence order.
        record["entities"] = [_entity(ex, kind, start, end, confidence) for kind, start, end in chunks(tags)]
        records.append(record)
    return records


def _fill_words_without_pieces(tags: list[str], confidence: np.ndarray, predicted: dict) -> None:
    """A word the tokenizer maps to no piece (a lone combining mark, a zero-width space) has no logits: inside
    an entity (the next predicted word continues the previous one's type) it is I-X, else O."""
    known = sorted(predicted)
    for w in range(len(tags)):
        if w in predicted:
            continue
        i = bisect.bisect_left(known, w)
        before, after = (known[i - 1] if i else None), (known[i] if i < len(known) else None)
        if before is not None and after is not None and tags[after].startswith("I-") \
                and tags[before] != "O" and tags[before][2:] == tags[after][2:]:
            tags[w], confidence[w] = tags[after], confidence[after]


def _word_logits(examples, features, outputs) -> list[dict[int, np.ndarray]]:
    """Per example, {word: logits of its first sub-word in the window that owns it}."""
    per_example: list[dict[int, np.ndarray]] = [{} for _ in examples]
    for feature, logits in zip(features, outputs):
        owned = set(feature["owned_words"])
        previous = None
        for t, w in enumerate(feature["word_ids"]):
            if w is not None and w != previous and w in owned:
                per_example[feature["example_index"]][w] = np.asarray(logits[t])
            previous = w
    return per_example


def _softmax(row: np.ndarray) -> np.ndarray:
    z = np.exp(row - row.max())
    return z / z.sum()


def _entity(ex: dict, kind: str, start: int, end: int, confidence: np.ndarray) -> dict:
    """end_word and end are exclusive: tokens[start_word:end_word], text[start:end]."""
    entity = {"type": kind, "start_word": start, "end_word": end,
              "text": " ".join(ex["tokens"][start:end]),
              "score": round(float(confidence[start:end].mean()), 6)}
    if "offsets" in ex:
        begin, finish = ex["offsets"][start][0], ex["offsets"][end - 1][1]
        entity.update(start=begin, end=finish, text=ex["text"][begin:finish])
    return entity


def metrics(examples: list[dict], predictions: list[dict], cfg: Config, labels: list[str]) -> dict:
    """conlleval entity precision / recall / F1 (micro), token accuracy and per-type scores."""
    gold = [ex["tags"] for ex in examples if "tags" in ex]
    if not gold:
        return {}
    pred = [p["predicted_tags"] for ex, p in zip(examples, predictions) if "tags" in ex]
    return entity_scores(gold, pred)
