"""The optimizer (AdamW with decoupled weight decay off biases and norms, or Adafactor) and the learning-rate
schedule."""
from __future__ import annotations

import math
import torch

from mlm.core.budget import budget_scheduler
from mlm.core.config import TrainingConfig
from mlm.core.runlog import logger


def build_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """cfg.optim (AdamW by default); biases and normalisation weights (every 1-D parameter) get no weight decay."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
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
