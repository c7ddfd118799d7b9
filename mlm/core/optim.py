"""The optimizer (AdamW with decoupled weight decay off biases and norms, or Adafactor) and the learning-rate
schedule."""
from __future__ import annotations

import math
import re

import torch

from mlm.core.budget import budget_scheduler
from mlm.core.config import TrainingConfig
from mlm.core.runlog import logger
from mlm.errors import ConfigError


# The numbered block a parameter belongs to, across HF encoders: bert.encoder.layer.3., distilbert.transformer.layer.3.,
# deberta.encoder.layer.3., model.layers.3. (ModernBERT).
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layer|layers)\.(\d+)\.")


def layer_depths(names: list[str]) -> dict[str, int]:
    """{parameter name: depth}: 0 for embeddings, i + 1 for encoder layer i, the number of layers + 1 for everything
    above (pooler, task head, final norm). Raises ValueError when no name has a layer number."""
    index = {name: int(m.group(1)) for name in names if (m := _LAYER_INDEX.search(name))}
    if not index:
        raise ValueError("no numbered encoder layers (...layer.N. / ...layers.N.) in the model's parameter names")
    top = max(index.values()) + 2
    return {name: index[name] + 1 if name in index else 0 if "embed" in name else top for name in names}


def parameter_groups(model: torch.nn.Module, cfg: TrainingConfig) -> list[dict]:
    """AdamW's groups: biases and normalisation weights (every 1-D parameter) get no weight decay; with
    layer_lr_decay < 1, one group per depth and kind, its lr learning_rate x decay ** (depths above it)."""
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    depths = layer_depths([name for name, _ in named]) if cfg.layer_lr_decay < 1 else {name: 0 for name, _ in named}
    top = max(depths.values())
    groups = {}
    for name, param in named:
        key = (top - depths[name], param.ndim >= 2)  # (depths below the head, decayed): the head's groups first
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": cfg.weight_decay if key[1] else 0.0,
                           "lr": cfg.learning_rate * cfg.layer_lr_decay ** key[0]}
        groups[key]["params"].append(param)
    return [groups[key] for key in sorted(groups, key=lambda k: (k[0], not k[1]))]


def build_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """cfg.optim (AdamW by default) over parameter_groups (weight decay off biases and norms, layer-wise rates)."""
    try:
        groups = parameter_groups(model, cfg)
    except ValueError as e:
        raise ConfigError(f"layer_lr_decay: {e}") from None
    if cfg.optim == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate)
    if cfg.optim == "adafactor":  # as Trainer builds it: the schedule sets the rate, no relative step size
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=cfg.learning_rate, scale_parameter=False, relative_step=False)
    # fused: one kernel over all parameters instead of a Python loop per tensor (+11% steps/s on the tiny
    # shape on CPU, bench/results/pretrain_throughput.json).
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_epsilon, fused=cfg.optim == "adamw_torch_fused")


def build_scheduler(optimizer, cfg: TrainingConfig, total_steps: int):
    """Linear warmup, then linear / cosine decay to 0, or constant; with max_time, the same shapes on the fraction
    of the budget used (mlm.core.budget)."""
    from transformers import get_scheduler

    if cfg.max_time is not None:
        return budget_scheduler(optimizer, cfg.lr_scheduler_type, cfg.warmup_ratio or 0.0)

    if cfg.warmup_steps is not None:
        warmup = cfg.warmup_steps
    else:
        warmup = math.ceil((cfg.warmup_ratio or 0.0) * total_steps)
    if warmup >= total_steps > 0:
        logger.warning("warmup_steps %d >= the run's %d steps: the learning rate never reaches its peak %g",
                       warmup, total_steps, cfg.learning_rate)
    if cfg.lr_scheduler_type == "constant" and warmup:
        logger.warning("lr_scheduler_type constant ignores the %d warmup steps (Trainer's meaning); "
                       "constant_with_warmup uses them", warmup)
    return get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)
