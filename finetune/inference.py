"""Run a task's model over features in length-sorted batches, optionally sharded over processes.

Sorting by length makes dynamic padding cheap; the outputs come back in the original feature order.
With an accelerator, each rank takes a contiguous slice of the sorted order and the slices are
gathered as Python objects: no padded duplicates, so metrics equal the single-process ones.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from mlm.core.sampling import lockstep, rank_batches, to_device


def compute_outputs(task, model, features: list[dict], tokenizer, batch_size: int, accelerator=None) -> list:
    """task outputs for every feature, in the order of `features`."""
    return run_model(task, model, features, tokenizer, batch_size, accelerator)[0]


def run_model(task, model, features: list[dict], tokenizer, batch_size: int,
              accelerator=None) -> tuple[list, Optional[float]]:
    """(task outputs for every feature in the order of `features`, the task's mean loss over the features that
    carry targets, or None): one forward pass per batch gives both."""
    order = np.argsort([-len(f["input_ids"]) for f in features], kind="stable")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    # (an ONNX Runtime model, finetune/onnxrt/runtime.py, has no parameters: its batches stay on the CPU)
    device = accelerator.device if accelerator else next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    outputs = []
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, count
    with torch.no_grad():
        for positions in rank_batches(len(order), batch_size, rank, world):
            positions, counts = lockstep(positions)
            batch = to_device(task.collate([features[i] for i in order[positions.start : positions.stop]], tokenizer),
                              device)
            logits = task.forward(model, batch)
            if counts:  # (a filler batch of a rank with fewer batches runs the forward only: FSDP's lockstep)
                outputs.extend(task.outputs_of(logits, batch))
                if all(key in batch for key in task.TARGETS):
                    totals += torch.stack([t.double() for t in task.loss_of(logits, batch)])
    model.train(was_training)
    if world > 1:
        from accelerate.utils import gather_object

        outputs = gather_object(outputs)  # rank order == sorted order, each item exactly once
        totals = accelerator.reduce(totals, reduction="sum")
    result = [None] * len(features)
    for position, index in enumerate(order):
        result[index] = outputs[position]
    loss_sum, count = totals.tolist()
    return result, (loss_sum / count if count else None)


def predict_features(task, model, examples: list[dict], features: list[dict], tokenizer, cfg, labels: list[str],
                     batch_size: int, accelerator=None) -> list[dict]:
    """The task's prediction records for encoded examples."""
    outputs = compute_outputs(task, model, features, tokenizer, batch_size, accelerator)
    return task.predictions(examples, features, outputs, cfg, labels)


def score(task, model, examples: list[dict], features: list[dict], tokenizer, cfg, labels: list[str],
          batch_size: int, accelerator=None) -> tuple[dict, list[dict]]:
    """(the task's metrics, its prediction records): what fine-tuning reports and `mlm evaluate` writes. Features
    encoded with their targets also give the task's loss (`loss`: eval_loss in fine-tuning)."""
    outputs, loss = run_model(task, model, features, tokenizer, batch_size, accelerator)
    records = task.predictions(examples, features, outputs, cfg, labels)
    metrics = task.metrics(examples, records, cfg, labels)
    return ({"loss": loss, **metrics} if loss is not None else metrics), records
