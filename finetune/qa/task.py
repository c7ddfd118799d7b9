"""Extractive question answering (SQuAD v1.1 / v2.0): predict the answer as a span of the context.

The model reads "[CLS] question [SEP] context [SEP]" and scores every token as the start and as the end
of the answer. A context longer than max_seq_length is read in overlapping windows (doc_stride tokens
shared between neighbours), so one example becomes several features; predictions() gathers the windows
of each example again and cuts the best span out of the ORIGINAL context by character offsets.
With version 2 (unanswerable questions) the span [CLS]..[CLS] means "no answer".

    make finetune TASK=qa                                  # recipes/finetune/qa.yaml
    mlm finetune --task qa --recipe recipes/finetune/qa.yaml --model_name_or_path DIR
    mlm predict --model outputs/finetune-qa --question "..." --context "..."

Data (train_file / validation_file / test_file):
  * SQuAD JSON, v1.1 or v2.0: {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
    "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}; v2's plausible_answers are ignored.
  * JSON lines, a JSON array of records or parquet: {"id", "question", "context", "answers": {"text": [...],
    "answer_start": [...]}} per row (the Hugging Face layout), or "answers": [{"text", "answer_start"}, ...];
    "title" is optional, and "id" too (default: the line number). [] or empty texts, or "is_impossible":
    true, mean "no answer" (v2). A test file may have no "answers": it is predicted, not scored.
  * a hub dataset (dataset_name, e.g. squad / squad_v2) with the same columns.
With only the official dev file at hand, split_articles "38:10" trains on its first 38 articles and
evaluates on the next 10 (whole articles on each side, so no paragraph leaks across the split).

Every example is {"id", "question", "context", "answers": {"text": [...], "answer_start": [...]},
"title"?, "_where"}. Answer texts are trimmed of surrounding spaces. An answer_start that does not point at
its text is moved to the nearest whole-word occurrence of the text in the context; an answer whose text is
not in the context keeps answer_start -1: such examples are dropped from training and left out of the
evaluation loss (EM/F1 still use the text).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from mlm.errors import ConfigError
from finetune.qa.config import AutoModel, Config, IGNORE, UNITS
from finetune.qa.data import _check_unique_ids, _example, align_answers, load_splits, read_file
from finetune.qa.postprocess import predictions, write_squad_predictions
from finetune.qa.windows import encode
from finetune.common import no_class_names, pad_batch


HAS_CLASSES = False  # two outputs per token (start, end), not one per label
HEAD_READS_FIRST_TOKEN = False  # the head reads every token
LENGTH_FIELDS = ("doc_stride", "max_query_length")  # token counts `mlm predict` scales with max_seq_length


def write_official(records: list[dict], folder: str, name: str) -> None:
    """<folder>/<name>_squad.json: {id: answer}, the file the official SQuAD scorers read."""
    write_squad_predictions(records, os.path.join(folder, f"{name}_squad.json"))


def settings_from_hf(hf_config: dict) -> tuple[dict, list[str]]:
    """A QA model without mlm_task.json: the default settings, no classes."""
    return {}, []


rename_classes = no_class_names


def label_list(train_examples: list[dict], cfg: Config) -> list[str]:
    return []  # spans, not classes


def model_kwargs(cfg: Config, labels: list[str]) -> dict:
    return {}  # the QA head always has two outputs (start, end)


def collate(features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
    """Pad to the longest feature in the batch (right side: windows.encode refuses left-padding tokenizers);
    labels when the features have them."""
    batch = pad_batch(features, tokenizer)
    for key in ("start_positions", "end_positions"):
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.long)
    return batch


TARGETS = ("start_positions", "end_positions")  # what loss_of reads: labelled evaluation features also give a loss


def forward(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end) logits, each (B, T) in float32, padding positions pushed to -inf-ish.

    Masking the padding makes a feature's loss independent of how much its batch was padded.
    """
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    out = model(**inputs)
    pad = batch["attention_mask"] == 0  # (B, T)
    start = out.start_logits.float().masked_fill(pad, torch.finfo(torch.float32).min)
    end = out.end_logits.float().masked_fill(pad, torch.finfo(torch.float32).min)
    return start, end


def loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return loss_of(forward(model, batch), batch)


def loss_of(logits: tuple[torch.Tensor, torch.Tensor], batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum over features of (CE(start) + CE(end)) / 2, number of features with a known answer position)."""
    start, end = logits  # (B, T) each
    ce = F.cross_entropy(start, batch["start_positions"], ignore_index=IGNORE, reduction="sum")
    ce = ce + F.cross_entropy(end, batch["end_positions"], ignore_index=IGNORE, reduction="sum")
    return ce / 2, (batch["start_positions"] != IGNORE).sum()


@torch.no_grad()
def outputs(model, batch: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    return outputs_of(forward(model, batch), batch)


def outputs_of(logits: tuple[torch.Tensor, torch.Tensor], batch: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (start_logits, end_logits) pair per feature, numpy float32 cut to its true length."""
    start, end = logits
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    start, end = start.cpu().numpy(), end.cpu().numpy()
    return [(start[i, :n], end[i, :n]) for i, n in enumerate(lengths)]


def metrics(examples: list[dict], predictions: list[dict], cfg: Config, labels: list[str]) -> dict:
    """Official SQuAD exact_match and f1 (0-100); HasAns_/NoAns_ breakdowns in v2 mode."""
    from finetune.metrics.squad import squad_scores

    gold = {ex["id"]: list(ex["answers"]["text"]) for ex in examples if not ex.get("_unlabelled")}
    if not gold:
        return {}  # an unlabelled test split: predictions only
    pred = {r["id"]: r["prediction_text"] for r in predictions if r["id"] in gold}
    return squad_scores(gold, pred, version_2=bool(cfg.version_2_with_negative))


def examples_from_text(cfg: Config, **fields) -> list[dict]:
    """`mlm predict --question Q --context C`: one example without answers."""
    if fields.get("text") is not None:
        raise ConfigError("--text: the qa task takes --question and --context")
    for name in ("question", "context"):
        if not isinstance(fields.get(name), str) or not fields[name].strip():
            raise ConfigError(f"--{name}: required (and non-empty) for the qa task")
    return [_example({"id": "0", "question": fields["question"], "context": fields["context"]},
                     "--question/--context", False, None)]


def examples_from_file(path: str, cfg: Config) -> list[dict]:
    """`mlm predict --input FILE`: JSON lines with question and context (id, answers optional) or SQuAD JSON."""
    examples = read_file(path, require_answers=False)
    _check_unique_ids(examples)
    return examples


def read_labelled(path: str, cfg: Config) -> list[dict]:
    """`mlm evaluate --input FILE`: questions with answers, read as fine-tuning reads a validation file."""
    examples = read_file(path, require_answers=True)
    _check_unique_ids(examples)
    return align_answers(examples, path)
