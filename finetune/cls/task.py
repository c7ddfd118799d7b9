"""Sequence classification: one label per text (or text pair), a score, or a set of labels.

The task reads rows with a text column, an optional second text column (sentence pairs such as
MRPC/RTE) and a label column, and fine-tunes `AutoModelForSequenceClassification` on them:

    make finetune TASK=cls                                    # SST-2, recipes/finetune/cls.yaml
    mlm finetune --task cls --train_file train.csv --validation_file dev.csv --text_column review
    mlm predict --model outputs/cls --text "a charming and often affecting journey"

Three problem types (--problem_type, default "auto", resolved from the TRAINING labels):
  * single_label  one class per example; cross-entropy; accuracy / macro F1 / MCC (two classes: also
                  precision / recall / f1 of the second, positive, class). 1, "1" and "1.0" are one class.
  * regression    one float per example (STS-B style); squared error; MSE / Pearson / Spearman.
  * multi_label   a set of classes per example, given as a JSON list or a string joined with
                  --label_separator; per-class sigmoid + binary cross-entropy; subset accuracy / F1.
"auto" picks multi_label when a label is a list or --label_separator is set, regression when some
label is a number that is not an integer (3.8), and single_label otherwise: integer-valued labels
(0/1, 1..5 stars) are classes; pass --problem_type regression to treat them as scores.

Files: .csv / .tsv / .jsonl / .parquet through mlm.core.records (or a hub dataset with --dataset_name;
ClassLabel ids become their names). Sentence-pair layouts are read as pairs: sentence1/sentence2,
premise/hypothesis, question/sentence, question1/question2, text/text_pair, text_a/text_b (also when
--text_column names the first of them; --text_pair_column none turns pairs off). Otherwise the text column
defaults to the first of "text", "sentence", "sentence1" the file has. Columns may also be given by position
(--text_column 1 --label_column 0), several text columns joined (--text_column title,description), and csv/tsv
files without a header line are read by position (see finetune/cls/columns.py). --label_names gives numeric classes
names (finetune/cls/label_names.py). The columns chosen are logged and saved with the model, so `mlm predict`
asks for the same inputs. The test split may have no label column at all (the GLUE test files have none), or
blank labels: it then gets predictions and no metrics.

Every example is a plain dict {"text", "text_pair"?, "label"?, "_where": "path:line"}; `load_splits`
normalises labels (class names as strings, floats for regression, lists of names for multi-label)
and returns the resolved problem type (and columns) beside the examples, so the saved run config records it.
"""
from __future__ import annotations

import json
import numpy as np
import torch
import torch.nn.functional as F

from finetune.cls.config import AutoModel, Config, HF_PROBLEM_TYPES, UNITS
from finetune.cls.labels import _label_set, _regression_target, label_list, label_name, problem_type
from finetune.cls.data import load_splits
from finetune.cls.features import encode
from finetune.cls.label_names import resolve_label_names
from finetune.common import labels_from_id2label, no_official_format, pad_batch
from mlm.errors import ConfigError
from finetune.cls.inputs import examples_from_file, examples_from_text, read_labelled


HAS_CLASSES = True
HEAD_READS_FIRST_TOKEN = True  # the pooler / classification head reads the first token's row only
LENGTH_FIELDS = ()  # no token counts besides max_seq_length
write_official = no_official_format


def settings_from_hf(hf_config: dict) -> tuple[dict, list[str]]:
    """A sequence-classification model without mlm_task.json: its id2label classes, and its problem type in our
    names (multi-label, regression) when config.json gives one."""
    ours = {hf: name for name, hf in HF_PROBLEM_TYPES.items()}
    settings = {"problem_type": ours[hf_config["problem_type"]]} if hf_config.get("problem_type") in ours else {}
    return settings, labels_from_id2label(hf_config)


def rename_classes(cfg: Config, labels: list[str], value: str) -> tuple[list[str], dict]:
    """--label_names: (the model's classes (in id order) under new names, {"label_names": JSON mapping the data's
    labels (as trained on, or the model's class names) to them}, the setting that renames gold labels read from
    --input tables)."""
    if problem_type(cfg, labels) == "regression":
        raise ConfigError("--label_names: only a cls model with classes has labels to name")
    mapping = resolve_label_names(value, labels, key=label_name)
    trained = json.loads(cfg.label_names) if cfg.label_names else {}
    names = json.dumps({**mapping, **{raw: mapping.get(name, name) for raw, name in trained.items()}})
    return [mapping[label] for label in labels], {"label_names": names}


def model_kwargs(cfg: Config, labels: list[str]) -> dict:
    """Head size, label names (saved in config.json, so predictions name classes) and the loss kind."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
        "problem_type": HF_PROBLEM_TYPES[problem_type(cfg, labels)],
    }


def collate(features: list[dict], tokenizer) -> dict[str, torch.Tensor]:
    """Pad to the longest feature in the batch with the tokenizer's pad id; labels keep their kind.

    labels: (B,) long for classes, (B,) float for regression, (B, C) float for multi-label."""
    batch = pad_batch(features, tokenizer, left=getattr(tokenizer, "padding_side", "right") == "left")
    with_labels = ["labels" in f for f in features]
    if any(with_labels):
        if not all(with_labels):
            raise ValueError("a batch mixes features with and without labels")
        targets = [f["labels"] for f in features]
        # ints are class ids; floats (or lists of floats) are regression targets / multi-hot vectors.
        is_class = all(isinstance(t, int) and not isinstance(t, bool) for t in targets)
        batch["labels"] = torch.tensor(targets, dtype=torch.long if is_class else torch.float32)
    return batch


TARGETS = ("labels",)  # the batch keys loss_of reads: evaluation features that have them also give a loss


def forward(model, batch: dict) -> torch.Tensor:
    """(B, C) logits in fp32, so a bf16 autocast does not round the loss."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs).logits.float()


def loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return loss_of(forward(model, batch), batch)


def loss_of(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of per-example losses, number of examples); the loop divides by the global count.

    The kind comes from the labels (long (B,) classes, float (B,) scores, float (B, C) multi-hot),
    which also works for a model wrapped by DDP/FSDP that hides `.config`."""
    labels = batch["labels"]
    if labels.dtype == torch.long:
        total = F.cross_entropy(logits, labels, reduction="sum")
    elif labels.dim() == 1:
        if logits.shape[-1] != 1:
            raise ValueError(f"regression targets need a 1-output head, the model has {logits.shape[-1]}")
        total = ((logits.squeeze(-1) - labels) ** 2).sum()
    else:
        # Mean over classes per example (as BCEWithLogitsLoss does), summed over examples.
        total = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(dim=-1).sum()
    return total, torch.tensor(labels.shape[0], device=logits.device)


@torch.no_grad()
def outputs(model, batch: dict) -> list[np.ndarray]:
    return outputs_of(forward(model, batch), batch)


def outputs_of(logits: torch.Tensor, batch: dict) -> list[np.ndarray]:
    """The logits of each feature, (C,) float32 arrays in batch order."""
    return list(logits.cpu().numpy())


def predictions(examples: list[dict], features: list[dict], outputs: list, cfg: Config, labels: list[str]) -> list[dict]:
    """One JSON-able record per encoded example, in example order.

    single_label: label, score (its softmax probability), probabilities {name: p}
    regression:   score
    multi_label:  labels (sigmoid > 0.5), scores (theirs), probabilities {name: p}
    plus text, text_pair and gold where the example has them, and source (file:line of the input row)."""
    if len(features) != len(outputs):
        raise ValueError(f"{len(features)} features but {len(outputs)} outputs")
    kind = problem_type(cfg, labels)
    records = []
    for feature, logits in sorted(zip(features, outputs), key=lambda pair: pair[0]["example_index"]):
        example = examples[feature["example_index"]]
        record = {"text": example["text"]}
        if "text_pair" in example:
            record["text_pair"] = example["text_pair"]
        record.update(_decode(np.asarray(logits, dtype=np.float64), kind, labels))
        if example.get("label") is not None:
            record["gold"] = _gold(example["label"], kind, cfg, example.get("_where", "?"))
        if "_where" in example:  # file:line, to join predictions back to input rows
            record["source"] = example["_where"]
        records.append(record)
    return records


def _decode(logits: np.ndarray, kind: str, labels: list[str]) -> dict:
    if kind == "regression":
        return {"score": float(logits[0])}
    if kind == "multi_label":
        probs = 1.0 / (1.0 + np.exp(-logits))
        chosen = [i for i, p in enumerate(probs) if p > 0.5]
        return {"labels": [labels[i] for i in chosen], "scores": [float(probs[i]) for i in chosen],
                "probabilities": {name: float(p) for name, p in zip(labels, probs)}}
    probs = np.exp(logits - logits.max())  # softmax, shifted so exp cannot overflow
    probs /= probs.sum()
    best = int(np.argmax(probs))
    return {"label": labels[best], "score": float(probs[best]),
            "probabilities": {name: float(p) for name, p in zip(labels, probs)}}


def _gold(value, kind: str, cfg: Config, where: str):
    """The gold label in the form of the prediction (labels from `mlm predict --input` arrive raw)."""
    if kind == "regression":
        return _regression_target(value, where)
    if kind == "multi_label":
        return _label_set(value, cfg.label_separator)
    return label_name(value)


def metrics(examples: list[dict], predictions: list[dict], cfg: Config, labels: list[str]) -> dict:
    """Task scores over the predictions that have a gold label; {} for an unlabeled (test) split."""
    from finetune.metrics.classification import classification_metrics, multilabel_metrics, regression_metrics

    scored = [p for p in predictions if "gold" in p]
    if not scored:
        return {}
    kind = problem_type(cfg, labels)
    if kind == "regression":
        return regression_metrics([p["gold"] for p in scored], [p["score"] for p in scored])
    index = {name: i for i, name in enumerate(labels)}
    if kind == "multi_label":
        def hot(names):
            row = [0] * len(labels)
            for name in names:
                row[index[name]] = 1
            return row
        return multilabel_metrics([hot(p["gold"]) for p in scored], [hot(p["labels"]) for p in scored], labels)
    return classification_metrics([index[p["gold"]] for p in scored], [index[p["label"]] for p in scored], labels)
