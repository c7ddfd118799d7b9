"""THE training loop, shared by pretraining and every fine-tuning task.

    result = train(cfg, accelerator, model, train_data, LoopParts(collate_fn, loss_fn, evaluate=evaluate, export=export))

`loss_fn(model, batch) -> (loss_sum, count)` returns a SUM over the batch's targets (masked tokens,
labelled tokens, examples) and how many there were. The loop normalises gradients by the number of
targets in the whole optimizer step (all micro-batches on all processes), so a step's update does not
depend on how the global batch is split into processes and accumulation steps.

Data order is ours, not accelerate's: one seeded permutation per epoch is cut into global batches of
per_device x processes examples and rank r takes slice r. One process with batch 2B and two processes
with batch B therefore see the same examples at every step, and the data position of a checkpoint is
just (epoch, batch index).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from accelerate.utils import DistributedType

from mlm.core.accel import distributed_type, matmul_peak_flops
from mlm.core.checkpoint import checkpoint_path, load_best_weights, load_checkpoint, save_checkpoint
from mlm.core.config import TrainingConfig
from mlm.core.host_read import LaggedRead
from mlm.errors import ConfigError
from mlm.core.resume_settings import settings_of
from mlm.core.run_dir import run_directory
from mlm.core.runlog import RunLog, logger
from mlm.core.safe_state import own_state
from mlm.core.optim import build_optimizer, build_scheduler
from mlm.core.plan import UNBOUNDED, check_plan, eval_and_save_intervals, plan_steps, run_length
from mlm.core.sampling import ShardedBatchSampler, loader_settings, micro_batches, to_device
from mlm.core.signals import Preempted, StopRequest


LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LoopParts:
    """What a track hands the loop besides the config, the model and the data. A new knob goes here, with a
    default, so that no caller's call changes."""

    collate_fn: Callable  # list of examples -> batch dict
    loss_fn: LossFn  # (model, batch) -> (loss SUM over the batch's targets, number of targets)
    evaluate: Optional[Callable[[torch.nn.Module], dict]] = None  # runs on every rank, same metrics everywhere
    export: Optional[Callable[[torch.nn.Module, dict, str], None]] = None  # (model, state_dict, output_dir), main rank
    lengths: Optional[np.ndarray] = None  # per-example lengths: batches grouped by length (fine-tuning)
    flops_per_token: Optional[float] = None  # training FLOPs per token: tflops and MFU in the log (pretraining)


@dataclass
class TrainState:
    """Everything beyond model/optimizer/scheduler/RNG that an exact resume needs (mlm_state.json)."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # micro-batches of `epoch` already consumed
    tokens: int = 0
    examples: int = 0
    train_seconds: float = 0.0
    loss_sum: float = 0.0  # of each step's mean loss: train_loss is the run's average step loss, as Trainer's
    elapsed: float = 0.0  # the budget clock: the loop's wall time, evaluations and checkpoints included
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    best_metrics: Optional[dict] = None
    evals_without_improvement: int = 0
    num_processes: int = 1
    total_steps: int = 0


def train(cfg: TrainingConfig, accelerator, model: torch.nn.Module, train_data, parts: LoopParts) -> dict:
    """Train `model` on `train_data`; evaluate, checkpoint, early-stop; export the final model to output_dir.

    Returns the metrics of the run: global_step, train_loss, throughput, and eval_* of the final (or best)
    model.
    """
    check_plan(cfg, accelerator, len(train_data))
    # From here on SIGTERM / SIGUSR1 / the launcher's death are recorded: the loop saves at its next step and stops.
    with run_directory(cfg, accelerator) as resume, StopRequest() as preemption:
        run = _Run(cfg, accelerator, resume, preemption, model, train_data, parts)
        while not run.finished() and not run.stop:
            run.step()
            pause = time.perf_counter()  # evaluation and checkpoint time is not training throughput
            run.maybe_evaluate_and_save()
            run.interval_start += time.perf_counter() - pause
        run.progress.close()
        return run.finish()


class _Run:
    """One call of train(): setup in __init__, then step / log / maybe_evaluate_and_save, then finish."""

    def __init__(self, cfg, accelerator, resume, preemption, model, train_data, parts: LoopParts):
        self.cfg, self.accelerator, self.preemption, self.parts = cfg, accelerator, preemption, parts
        self.world = world = accelerator.num_processes
        self.accumulation = cfg.accumulation_steps(world)
        self.sampler = ShardedBatchSampler(len(train_data), cfg.per_device_train_batch_size, accelerator.process_index,
                                           world, cfg.seed, True, parts.lengths)
        self.total_steps, steps_per_epoch = plan_steps(cfg, len(self.sampler), self.accumulation)
        self.budget = cfg.time_budget()  # seconds, or None
        self.eval_every, self.save_every = eval_and_save_intervals(cfg, parts.evaluate is not None, steps_per_epoch,
                                                                    self.total_steps)

        optimizer = build_optimizer(model, cfg)
        self.scheduler = build_scheduler(optimizer, cfg, self.total_steps)
        # The scheduler is not prepared: an AcceleratedScheduler would step once per process per optimizer step.
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.objects = (self.model, self.optimizer, self.scheduler)
        self.state = _resume_state(accelerator, self.objects, resume, world, self.total_steps)
        if accelerator.log_with:
            accelerator.init_trackers(cfg.run_name or os.path.basename(os.path.abspath(cfg.output_dir)),
                                      config=settings_of(cfg))
        self.run_log = RunLog(cfg.output_dir, accelerator.is_main_process, accelerator, resume_step=self.state.step)
        self.global_batch = cfg.per_device_train_batch_size * world * self.accumulation
        logger.info(
            "training %s on %d processes (%s): %d sequences, global batch %d = %d per device x %d processes x "
            "%d accumulation; %d steps per epoch", run_length(cfg, self.total_steps), world, distributed_type(accelerator),
            len(train_data), self.global_batch, cfg.per_device_train_batch_size, world, self.accumulation,
            steps_per_epoch,
        )
        self.peak_flops = _peak_flops(accelerator) if parts.flops_per_token else None
        self.stream = micro_batches(self.sampler, train_data, parts.collate_fn, self.state.epoch, self.state.position,
                                    **loader_settings(cfg.dataloader_num_workers, accelerator.device))
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
        self.progress = _progress_bar(cfg, accelerator, None if self.total_steps == UNBOUNDED else self.total_steps,
                                      self.state.step)
        # loss sum, count, tokens, examples since the last log record: on the device, read at logging steps only
        self.interval = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
        # The step's reduction (figures, stop votes, rank 0's clock) is read on the host one step late, never inside
        # the step: a read there would stall the GPU every step. A fixed one-step lag, the same on every rank, keeps
        # the ranks' decisions (stop, budget) identical; every figure is caught up (flushed) before a log record, an
        # evaluation or a checkpoint, so those and an exact resume see every step. Reading every N steps instead
        # would stretch a signal's or the budget's reaction to N steps.
        self.reads = LaggedRead()
        self.interval_start, self.last_eval_step, self.last_metrics = time.perf_counter(), None, None
        self.stop = self.preempted = False
        self.logged_step, self.grad_norm = self.state.step, None
        # The budget clock: the loop's wall time (evaluations and checkpoints included), continued by a resume.
        self.clock_start = time.perf_counter() - self.state.elapsed
        self.progress_before = self.progress_now = self._progress()

    def _progress(self) -> float:
        """How much of the run is done, in [0, 1]: steps of max_steps, or with a budget the larger of that and the
        time spent of the budget. The budget's learning-rate curve and fractional eval/save intervals run on it."""
        steps = self.state.step / self.total_steps if self.budget is None or self.cfg.max_steps > 0 else 0.0
        return min(1.0, max(steps, self.state.elapsed / self.budget if self.budget else 0.0))

    def finished(self) -> bool:
        return self.state.step >= self.total_steps or (self.budget is not None and self.state.elapsed >= self.budget)

    def _due(self, every) -> bool:
        """Whether an evaluation or checkpoint interval (steps, or a fraction of the budget) ends at this step."""
        if every is None:
            return False
        if isinstance(every, float):
            return math.floor(self.progress_now / every) > math.floor(self.progress_before / every)
        return self.state.step % every == 0

    def step(self) -> None:
        """One optimizer step over `accumulation` micro-batches, gradients normalised by the step's global count of
        targets; then the step's log record when one is due."""
        cfg, accelerator, model, state = self.cfg, self.accelerator, self.model, self.state
        model.train()
        step_start = time.perf_counter()
        # loss sum, count, tokens, examples, [4] stop requested, [5] the budget clock (rank 0's: all ranks agree)
        local = torch.zeros(6, dtype=torch.float64, device=accelerator.device)
        for micro in range(self.accumulation):
            epoch, position, batch = next(self.stream)
            batch = to_device(batch, accelerator.device)
            sync = micro == self.accumulation - 1
            with nullcontext() if sync else accelerator.no_sync(model):
                loss_sum, count = self.parts.loss_fn(model, batch)
                if self.deepspeed:  # DeepSpeed owns the gradients: fall back to the per-micro-batch mean
                    accelerator.backward(loss_sum / count.clamp(min=1))
                else:
                    # A constant divisor keeps the backward pass in a sane range; the exact global
                    # normalisation is applied to the gradients below, once the step's count is known.
                    accelerator.backward(loss_sum / cfg.per_device_train_batch_size)
            local[:2] += torch.stack([loss_sum.detach().double(), torch.as_tensor(count).to(local)])
            local[2] += _tokens(batch)
            local[3] += batch["input_ids"].shape[0]
        local[4] = self.preemption.requested()
        if accelerator.is_main_process:
            local[5] = time.perf_counter() - self.clock_start
        totals = accelerator.reduce(local, reduction="sum")  # stays on the device: nothing here waits for it
        targets = totals[1]
        grads = [p.grad for p in self.params if p.grad is not None] if not self.deepspeed else []
        if grads:  # exact normalisation: per_device x processes / the step's global count (0 without targets)
            scale = torch.where(targets > 0, cfg.per_device_train_batch_size * self.world / targets, 0.0)
            torch._foreach_mul_(grads, scale.to(grads[0].dtype))
        grad_norm = accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        self.optimizer.step()
        state.step += 1
        self.progress_before = self.progress_now
        self._catch_up(self.reads.push(totals))  # the previous step's figures
        logging = state.step % cfg.logging_steps == 0 or self.finished()
        if logging:  # this step's too, before the rate is set: the record and the next rate see the newest clock
            self._catch_up(self.reads.flush())
        if self.budget is not None:
            self.scheduler.lr_lambdas[0].progress = self.progress_now  # the rate for the next step
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

        state.epoch, state.position = epoch, position
        state.train_seconds += time.perf_counter() - step_start
        self.interval += totals[:4]
        self.progress.update(1)
        self.grad_norm = grad_norm
        if logging:
            self.log(grad_norm)

    def _catch_up(self, totals: Optional[list[float]]) -> None:
        """Fold a step's reduction, read on the host (LaggedRead), into the state: figures, stop votes, clock."""
        if totals is not None:
            state = self.state
            loss_total, targets, tokens, examples, stop_votes, elapsed = totals
            self.preempted = self.preempted or stop_votes > 0  # on any rank: all stop at the same step
            state.elapsed = elapsed
            state.tokens += int(tokens)
            state.examples += int(examples)
            state.loss_sum += loss_total / targets if targets > 0 else 0.0
        self.progress_now = self._progress()

    def log(self, grad_norm) -> None:
        """The log record of the steps since the last one: loss, learning rate, throughput (and MFU)."""
        interval, flops_per_token = self.interval, self.parts.flops_per_token
        seconds = time.perf_counter() - self.interval_start
        loss_sum, count, tokens, examples = interval.tolist()  # a logging step: the one read of these
        record = {
            "step": self.state.step,
            "epoch": _epochs_done(self.state, len(self.sampler)),
            "loss": loss_sum / count if count > 0 else float("nan"),
            "learning_rate": self.scheduler.get_last_lr()[0],
            "tokens_per_second": tokens / seconds,
            "examples_per_second": examples / seconds,
        }
        if grad_norm is not None:
            record["grad_norm"] = float(grad_norm)
        if self.budget is not None:
            record["elapsed_s"] = round(self.state.elapsed, 2)
        if flops_per_token:
            record["tflops"] = record["tokens_per_second"] * flops_per_token / 1e12
            # tokens_per_second counts every rank's tokens; peak_flops is one device's
            record["mfu"] = record["tokens_per_second"] * flops_per_token / (self.peak_flops * self.world)
        self.run_log.log(record)
        self.logged_step = self.state.step
        self.progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}",
                                  tok_s=f"{record['tokens_per_second']:.0f}",
                                  **({"mfu": f"{record['mfu']:.0%}"} if "mfu" in record else {}), refresh=False)
        interval.zero_()
        self.interval_start = time.perf_counter()

    def maybe_evaluate_and_save(self) -> None:
        """Evaluate, track the best model and early stopping, and checkpoint when due; stop when preempted."""
        state, cfg = self.state, self.cfg
        due_eval = self.parts.evaluate is not None and bool(self.eval_every) and self._due(self.eval_every)
        due_save = bool(self.save_every) and self._due(self.save_every)
        if due_eval or due_save or self.preempted or self.finished():
            self._catch_up(self.reads.flush())  # what follows sees every step's figures (and the newest clock)
        last = self.finished()
        if self.parts.evaluate is not None and (due_eval or last):
            self.last_metrics = _evaluate(self.parts.evaluate, self.model, state, self.run_log, self.budget)
            self.last_eval_step = state.step
            self.stop = _update_best(cfg, state, self.last_metrics)
        if self.save_every and (due_save or last or self.stop) or self.preempted:
            _save(cfg, self.accelerator, self.objects, state, self.parts.export)
        if self.preempted:
            self.progress.close()
            raise _preempted(cfg, state, self.preemption)

    def finish(self) -> dict:
        """The final evaluation, the best model restored, the run's metrics; the model exported."""
        cfg, accelerator, state, model = self.cfg, self.accelerator, self.state, self.model
        self._catch_up(self.reads.flush())
        if self.logged_step != state.step and self.finished():  # a budget end seen late (LaggedRead): the last record
            self.log(self.grad_norm)
        if self.stop:
            logger.info("early stopping at step %d: no improvement of %s in %d evaluations",
                        state.step, cfg.metric_for_best_model, cfg.early_stopping_patience)
        if self.parts.evaluate is not None and self.last_eval_step != state.step:
            self.last_metrics = _evaluate(self.parts.evaluate, model, state, self.run_log, self.budget)
        use_best = bool(cfg.metric_for_best_model and cfg.load_best_model_at_end and state.best_step is not None)
        if use_best and state.best_step != state.step:
            logger.info("restoring the best checkpoint (step %d, %s = %.4f)", state.best_step,
                        cfg.metric_for_best_model, state.best_metric)
            load_best_weights(accelerator, model, checkpoint_path(cfg.output_dir, state.best_step))
        final = {"global_step": state.step, **((state.best_metrics if use_best else self.last_metrics) or {})}
        if use_best:
            final["best_step"] = state.best_step
        final.update({
            "train_loss": state.loss_sum / max(state.step, 1),
            "epoch": _epochs_done(state, len(self.sampler)),
            "train_runtime": round(state.train_seconds, 3),
            "train_tokens_per_second": state.tokens / max(state.train_seconds, 1e-9),
            "train_examples_per_second": state.examples / max(state.train_seconds, 1e-9),
            "train_tokens": state.tokens,
            "global_batch_size": self.global_batch,
            "num_processes": self.world,
            "distributed_type": distributed_type(accelerator),
        })
        if self.budget is not None:
            final.update({"max_time_s": self.budget, "elapsed_s": round(state.elapsed, 2)})
        if self.parts.export is not None:
            accelerator.wait_for_everyone()
            state_dict = accelerator.get_state_dict(model)  # every rank takes part (FSDP gathers shards here)
            if accelerator.is_main_process:
                unwrapped = accelerator.unwrap_model(model)
                self.parts.export(unwrapped, own_state(unwrapped, state_dict), cfg.output_dir)
        accelerator.wait_for_everyone()
        if accelerator.log_with:
            accelerator.end_training()
        return final


def _resume_state(accelerator, objects: tuple, resume: Optional[str], world: int, total_steps: int) -> TrainState:
    """A fresh TrainState, or the one of the checkpoint `resume` with its model, optimizer, scheduler and RNG."""
    if not resume:
        return TrainState(num_processes=world, total_steps=total_steps)
    saved = load_checkpoint(accelerator, objects, resume)  # refuses another number of processes
    state = TrainState(**{**saved, "total_steps": total_steps})
    logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume, state.step, state.epoch, state.position)
    return state


def _peak_flops(accelerator) -> float:
    dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
    peak = matmul_peak_flops(accelerator.device, dtype, size=4096 if accelerator.device.type == "cuda" else 1024)
    logger.info("matmul peak here: %.0f GFLOP/s (%s); MFU is measured against it", peak / 1e9, dtype)
    return peak


def _epochs_done(state: TrainState, batches_per_epoch: int) -> float:
    return round(state.epoch + state.position / max(1, batches_per_epoch), 4)


def _tokens(batch: dict):
    """Real tokens in a batch, for throughput: a device tensor or an int, never read on the host here."""
    mask = batch.get("attention_mask")
    return mask.sum() if mask is not None else batch["input_ids"].numel()


def _evaluate(evaluate, model, state: TrainState, run_log: RunLog, budget: Optional[float] = None) -> dict:
    start = time.perf_counter()
    # DDP's first forward after a training step broadcasts buffers: a collective, which deadlocks when the
    # ranks run different numbers of evaluation batches (e.g. fewer examples than processes). Every rank
    # holds the whole model, so evaluate the local replica (under torch.compile's wrapper, which is outside DDP).
    inner = getattr(model, "_orig_mod", model)
    if isinstance(inner, torch.nn.parallel.DistributedDataParallel):
        model = inner.module
    model.eval()
    with torch.no_grad():
        raw = evaluate(model)
    model.train()
    metrics = {k if k.startswith("eval_") else f"eval_{k}": v for k, v in raw.items()}
    metrics["eval_runtime"] = round(time.perf_counter() - start, 3)
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    run_log.log({"step": state.step, **flat, **({"elapsed_s": round(state.elapsed, 2)} if budget else {})})
    shown = ", ".join(f"{k[5:]} {v:.4f}" for k, v in flat.items() if k != "eval_runtime")
    logger.info("eval at step %d: %s", state.step, shown)
    return metrics


def check_metric(cfg: TrainingConfig, metrics: dict) -> str:
    """The key of metric_for_best_model among evaluation metrics (`eval_` optional in the name); ConfigError
    listing the usable ones. Runners call it with a first evaluation's metrics before training starts."""
    name = cfg.metric_for_best_model
    key = name if name.startswith("eval_") else f"eval_{name}"
    metrics = {k if k.startswith("eval_") else f"eval_{k}": v for k, v in metrics.items()}
    if key not in metrics:
        usable = sorted(k.removeprefix("eval_") for k, v in metrics.items()
                        if isinstance(v, (int, float)) and k != "eval_runtime")
        raise ConfigError(f"metric_for_best_model: {name!r} is not among this task's metrics ({', '.join(usable)})")
    return key


def _update_best(cfg: TrainingConfig, state: TrainState, metrics: dict) -> bool:
    """Track the best evaluation; return True when early stopping should end the run."""
    if not cfg.metric_for_best_model:
        return False
    value = float(metrics[check_metric(cfg, metrics)])
    better = state.best_metric is None or (value > state.best_metric if cfg.greater_is_better else value < state.best_metric)
    if better:
        state.best_metric, state.best_step, state.best_metrics = value, state.step, metrics
        state.evals_without_improvement = 0
        return False
    state.evals_without_improvement += 1
    patience = cfg.early_stopping_patience
    return patience is not None and state.evals_without_improvement >= patience


def _save(cfg: TrainingConfig, accelerator, objects: tuple, state: TrainState, export) -> None:
    keep = set()
    if state.best_step is not None:
        keep.add(checkpoint_path(cfg.output_dir, state.best_step))
    save_checkpoint(accelerator, objects, cfg.output_dir, state.step, dataclasses.asdict(state), settings_of(cfg),
                    cfg.save_total_limit, keep, export)


def _preempted(cfg: TrainingConfig, state: TrainState, preemption: StopRequest) -> Preempted:
    path = checkpoint_path(cfg.output_dir, state.step)
    return Preempted(f"{preemption.reason()} at step {state.step}: checkpoint written to {path}; continue with "
                     "--resume_from_checkpoint latest", preemption.exit_code())


def _progress_bar(cfg, accelerator, total: int, initial: int):
    from tqdm.auto import tqdm

    # In a log file (no terminal) redraw rarely, or the log fills with bars.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=interval,
                disable=cfg.disable_tqdm or not accelerator.is_main_process)
