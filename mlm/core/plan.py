"""How long a run is and when it evaluates and checkpoints: steps, epochs, or a time budget (--max_time).

A budget run has no step count (UNBOUNDED) unless max_steps caps it; its intervals may be fractions of the budget.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

from mlm.core.config import TrainingConfig
from mlm.core.runlog import logger
from mlm.errors import DataError

UNBOUNDED = 2**62  # the steps of a run that only its time budget ends


def plan_steps(cfg: TrainingConfig, batches_per_epoch: int, accumulation: int) -> tuple[int, int]:
    """(total optimizer steps, steps per epoch)."""
    steps_per_epoch = max(1, batches_per_epoch // accumulation)
    if cfg.max_steps > 0:
        return cfg.max_steps, steps_per_epoch
    if cfg.max_time is not None:  # the budget ends the run
        return UNBOUNDED, steps_per_epoch
    return max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch)), steps_per_epoch


def check_plan(cfg: TrainingConfig, accelerator, num_examples: int) -> None:
    """What train() can refuse, checked before output_dir is touched: a bad setting must cost nothing."""
    cfg.accumulation_steps(accelerator.num_processes)
    if num_examples < accelerator.num_processes:
        raise DataError(f"training data has {num_examples} examples: fewer than the {accelerator.num_processes} "
                        "processes")


def eval_and_save_intervals(cfg: TrainingConfig, has_evaluate: bool, steps_per_epoch: int, total_steps: int):
    """(between evaluations, between checkpoints): a number of steps, or with a budget a fraction of it (a float);
    with metric_for_best_model a checkpoint is saved at every evaluation, so the best one exists."""
    interval = functools.partial(_interval, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                                 budget=cfg.max_time is not None)
    eval_every = interval(cfg.eval_strategy, cfg.eval_steps)
    select_best = bool(cfg.metric_for_best_model and has_evaluate)
    if cfg.metric_for_best_model and not has_evaluate:
        logger.warning("metric_for_best_model %s: there is no validation data, so no evaluation, best-model choice "
                       "or early stopping", cfg.metric_for_best_model)
    elif select_best and cfg.save_steps and cfg.save_steps != eval_every:
        logger.warning("save_steps %s ignored: with metric_for_best_model a checkpoint is saved at every evaluation "
                       "(eval_steps %s), so the best one exists", cfg.save_steps, eval_every)
    save_every = eval_every if select_best else interval(cfg.save_strategy, cfg.save_steps or eval_every)
    return eval_every, save_every


def run_length(cfg: TrainingConfig, total_steps: int) -> str:
    """The run's length, for the log: its steps, its budget, or both."""
    steps = f"{total_steps} steps"
    if cfg.max_time is None:
        return steps
    return f"for {cfg.max_time}" + (f" (at most {steps})" if total_steps != UNBOUNDED else "")


def _interval(strategy: Optional[str], steps, steps_per_epoch: int, total_steps: int, budget: bool):
    """Steps between evaluations or saves: none for "no", an epoch for "epoch", else `steps` (default an epoch);
    `steps` below 1 is a fraction of the run: of the budget when there is one (kept a float), else of its steps."""
    every = {"no": None, "epoch": steps_per_epoch}.get(strategy, steps or steps_per_epoch)
    if every is None or every >= 1:
        return None if every is None else int(every)
    return float(every) if budget else max(1, math.ceil(every * total_steps))
