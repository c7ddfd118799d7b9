"""Run a task's model over features in length-sorted batches, optionally sharded over processes.

Sorting by length makes dynamic padding cheap; the outputs come back in the original feature order.
With an accelerator, each rank takes a contiguous slice of the sorted order and the slices are
gathered as Python objects: no padded duplicates, so metrics equal the single-process ones.
"""
from __future__ import annotations

import numpy as np
import torch

from mlm.loop import lockstep, rank_batches, to_device


def compute_outputs(task, model, features: list[dict], tokenizer, batch_size: int, accelerator=None) -> list:
    """task.outputs(...) for every feature, in the order of `features`."""
    order = np.argsort([-len(f["input_ids"]) for f in features], kind="stable")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs = []
    with torch.no_grad():
        for positions in rank_batches(len(order), batch_size, rank, world):
            positions, counts = lockstep(positions)
            batch = task.collate([features[i] for i in order[positions.start : positions.stop]], tokenizer)
            result = task.outputs(model, to_device(batch, device))
            if counts:
                outputs.extend(result)
    model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        outputs = gather_object(outputs)  # rank order == sorted order, each item exactly once
    result = [None] * len(features)
    for position, index in enumerate(order):
        result[index] = outputs[position]
    return result


def predict_features(task, model, examples: list[dict], features: list[dict], tokenizer, cfg, labels: list[str],
                     batch_size: int, accelerator=None) -> list[dict]:
    """The task's prediction records for encoded examples."""
    outputs = compute_outputs(task, model, features, tokenizer, batch_size, accelerator)
    return task.predictions(examples, features, outputs, cfg, labels)


def score(task, model, examples: list[dict], features: list[dict], tokenizer, cfg, labels: list[str],
          batch_size: int, accelerator=None) -> tuple[dict, list[dict]]:
    """(the task's metrics, its prediction records): what fine-tuning reports and `mlm evaluate` writes."""
    records = predict_features(task, model, examples, features, tokenizer, cfg, labels, batch_size, accelerator)
    return task.metrics(examples, records, cfg, labels), records
