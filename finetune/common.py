"""Pieces every task shares: reading a model's classes from its config.json, the hooks that a task without
classes or without an official prediction format provides, writing prediction records."""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from mlm.errors import ConfigError


def pad_batch(features: list[dict], tokenizer, sequence_pads: Optional[dict] = None, left: bool = False) -> dict:
    """The model inputs of `features` padded to the longest one: input_ids with the tokenizer's pad id,
    attention_mask with 0, token_type_ids with the tokenizer's pad token type, and each key of `sequence_pads`
    (per-token labels) with its value; on the right, or the left. Keys the features lack are left out."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has no pad token")
    pads = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
            **(sequence_pads or {})}
    longest = max(len(f["input_ids"]) for f in features)
    batch = {}
    for key, pad in pads.items():
        if key in features[0]:
            rows = []
            for f in features:
                fill = [pad] * (longest - len(f[key]))
                rows.append(fill + list(f[key]) if left else list(f[key]) + fill)
            batch[key] = torch.tensor(rows, dtype=torch.long)  # (B, T)
    return batch


def labels_from_id2label(hf_config: dict) -> list[str]:
    """A Hugging Face model's class names in id order (config.json `id2label`)."""
    id2label = hf_config.get("id2label") or {}
    return [id2label[str(i)] for i in range(len(id2label))]


def no_official_format(records: list[dict], folder: str, name: str) -> None:
    """write_official of a task whose prediction records are the only format."""


def no_class_names(cfg, labels: list[str], value: str) -> tuple[list[str], dict]:
    """rename_classes of a task whose classes cannot be renamed."""
    raise ConfigError("--label_names: only a cls model with classes has labels to name")


def write_predictions(folder: str, name: str, records: list[dict], task) -> None:
    """<folder>/<name>.jsonl, one record per example, and whatever official format the task writes beside it
    (QA: <name>_squad.json, the {id: answer} file the official SQuAD scorers read)."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.jsonl"), "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    task.write_official(records, folder, name)
