"""THE training loop, shared by pretraining and every fine-tuning task.

    result = train(cfg, accelerator, model, train_data, collate_fn, loss_fn, evaluate=evaluate, export=export)

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
import datetime
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from mlm.core.checkpoint import checkpoint_path, load_best_weights, load_checkpoint, save_checkpoint
from mlm.core.config import TrainingConfig
from mlm.errors import ConfigError, DataError
from mlm.core.precision import describe, resolve_precision
from mlm.core.resume_settings import settings_of
from mlm.core.run_dir import run_directory
from mlm.core.runlog import RunLog, logger, setup_console_logging
from mlm.core.safe_state import own_state
from mlm.core.signals import Preempted, StopRequest
from mlm.core.threads import use_threads
from mlm.core.trackers import resolve_trackers

LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------------- setup


def make_accelerator(cfg: TrainingConfig):
    """An Accelerator with the precision picked per device (mlm.core.precision): bf16 where the GPU has it, fp32 on
    CPUs, or what was asked for where it can run."""
    from accelerate import Accelerator

    force_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    precision, source = resolve_precision(cfg.mixed_precision, use_gpu=_has_device() and not force_cpu)
    kwargs = {}
    if cfg.torch_compile:
        kwargs["dynamo_backend"] = "inductor"
    trackers = resolve_trackers(cfg.report_to, cfg.output_dir)
    if trackers:
        kwargs["log_with"] = trackers
        kwargs["project_dir"] = cfg.output_dir
    # Started by a launcher (torchrun / accelerate launch: LOCAL_RANK is set) on a machine without a GPU,
    # accelerate joins a CPU (gloo) group only when ACCELERATE_USE_CPU=1; otherwise every process runs
    # alone, each one a complete single-process job writing to the same output_dir.
    launched = int(os.environ.get("WORLD_SIZE", "1")) if "LOCAL_RANK" in os.environ else 1
    if os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true" and not _has_device():
        # accelerate 1.16 takes its DeepSpeed branch only off the CPU: here it would train as plain data parallel
        # (or not join the ranks at all) while the launch config says DeepSpeed. DeepSpeed itself runs ZeRO-2/3
        # on gloo; the blocker is accelerate (README, "Scaling out").
        raise ConfigError("the launch config asks for DeepSpeed, which accelerate runs only on GPUs; on CPUs use "
                          "recipes/accelerate/fsdp-cpu-2proc.yaml (sharded) or cpu-2proc.yaml")
    # Rank 0 may spend long on tokenizer training and packing while the others wait at a barrier.
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.ddp_timeout))
    accelerator = Accelerator(mixed_precision=precision, cpu=launched > 1 and not _has_device(),
                              kwargs_handlers=[timeout], **kwargs)
    if accelerator.distributed_type == DistributedType.MULTI_CPU and os.environ.get("ACCELERATE_USE_FSDP") == "true":
        _fsdp_on_cpu(accelerator)
    setup_console_logging(accelerator.is_main_process)
    logger.info("precision: %s (%s)", describe(accelerator.mixed_precision, accelerator.device), source)
    use_threads(cfg.num_threads)
    # (mpirun sets no LOCAL_RANK, so `launched` stays 1 there; accelerate forms that group itself)
    if launched > 1 and accelerator.num_processes != launched:
        raise ConfigError(
            f"the launcher started {launched} processes but they did not join one group (each has "
            f"{accelerator.num_processes}); on CPUs set ACCELERATE_USE_CPU=1"
        )
    return accelerator


def _fsdp_on_cpu(accelerator) -> None:
    """Turn a CPU (gloo) group into an FSDP2 one, as the launch config asked.

    accelerate only shards on accelerator devices: on CPUs it drops the FSDP plugin of the launch config and
    gives a plain MULTI_CPU group. torch's FSDP2 (fully_shard) runs on gloo, and accelerate's FSDP2 code does
    not look at the device, so the plugin is put back in the (shared) accelerator state before prepare(). (An
    accelerate that keeps FSDP on CPUs never gets here.) tests/test_scale_out.py checks that the result trains.
    """
    from accelerate.state import PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* environment, as accelerate builds it
    if plugin.fsdp_version != 2:
        raise ConfigError("fsdp_version: FSDP on CPUs needs version 2 (fully_shard); set fsdp_version: 2 in the "
                          "launch config")
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP
    # As AcceleratorState.__init__ does: every later AcceleratorState() copies PartialState's type back in.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def shards_parameters(accelerator) -> bool:
    """FSDP or DeepSpeed ZeRO-3: a module's weights are whole only inside that module's own forward."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin is not None and plugin.zero_stage == 3


def distributed_type(accelerator) -> str:
    """How the run is spread, for its log and metrics.json: NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED, ..."""
    return str(accelerator.distributed_type).split(".")[-1]


def _has_device() -> bool:
    """Whether torch sees a GPU-like accelerator (CUDA, XPU, MPS, ...)."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def matmul_peak_flops(device, dtype=torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-N FLOP/s of a square matmul here: the denominator of model FLOPs utilisation (MFU)."""
    g = torch.Generator(device=device).manual_seed(0)  # never the global RNG: a resumed run must not drift
    a = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=g)
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms up the kernels
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


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
    """Linear warmup, then linear / cosine decay to 0, or constant."""
    from transformers import get_scheduler

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


# ------------------------------------------------------------------------------------------------ data


class ShardedBatchSampler:
    """This rank's share of each global batch, from one seeded permutation per epoch.

    With `lengths`, examples of similar length are grouped (within windows of 50 global batches) so that
    dynamic padding wastes little, and the order of the global batches is then shuffled.
    """

    def __init__(self, num_examples, per_device_batch, rank=0, world=1, seed=0, shuffle=True, lengths=None):
        self.n, self.per_device, self.rank, self.world = num_examples, per_device_batch, rank, world
        self.seed, self.shuffle = seed, shuffle
        self.lengths = None if lengths is None else np.asarray(lengths)

    @property
    def global_batch(self) -> int:
        return self.per_device * self.world

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        order = np.arange(self.n)
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            order = rng.permutation(self.n)
        if self.lengths is not None:
            window = self.global_batch * 50
            chunks = [order[i : i + window] for i in range(0, self.n, window)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + self.global_batch] for i in range(0, self.n, self.global_batch)]
        if len(batches[-1]) < self.world:  # a rank would get nothing: drop the scrap
            batches.pop()
        if self.lengths is not None and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's slice of every global batch of the epoch (a short last batch is split evenly)."""
        out = []
        for batch in self.global_batches(epoch):
            if len(batch) == self.global_batch:
                part = batch[self.rank * self.per_device : (self.rank + 1) * self.per_device]
            else:
                part = np.array_split(batch, self.world)[self.rank]
            out.append(part.tolist())
        return out

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.global_batch)
        return full + (1 if rest >= self.world else 0)


class KeyedDataset(Dataset):
    """Adds `example_id = epoch * len + index` to dict items: a key for per-example randomness (masks)."""

    def __init__(self, data, epoch: int):
        self.data, self.epoch = data, epoch

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        item = self.data[index]
        if isinstance(item, dict):
            item = {**item, "example_id": self.epoch * len(self.data) + index}
        return item


def micro_batches(sampler, data, collate_fn, epoch: int, position: int, num_workers: int = 0):
    """Endless stream of (epoch, position after this batch, batch), starting at a data position."""
    while True:
        batches = sampler.epoch_batches(epoch)[position:]
        # Its own generator: a DataLoader draws a base seed, which must not consume the global RNG
        # (dropout) differently in a resumed run.
        generator = torch.Generator().manual_seed(sampler.seed + epoch)
        loader = DataLoader(KeyedDataset(data, epoch), batch_sampler=batches, collate_fn=collate_fn,
                            num_workers=num_workers, generator=generator)
        for batch in loader:
            position += 1
            yield epoch, position, batch
        epoch, position = epoch + 1, 0


def shard_range(n: int, rank: int, world: int) -> range:
    """Contiguous, near-equal shard of range(n) for evaluation (no padding, no duplicates)."""
    bounds = np.linspace(0, n, world + 1).round().astype(int)
    return range(bounds[rank], bounds[rank + 1])


def rank_batches(n: int, batch_size: int, rank: int, world: int) -> list[range]:
    """This rank's evaluation batches: its shard of range(n) cut into near-equal contiguous ranges.

    Every rank gets the same number of batches (shards differ by at most one item), some of them empty where a
    shard is shorter than the others' batch count (fewer items than ranks, batch size 1): under FSDP each forward
    is a collective, and a rank with one forward less would leave the others waiting forever. Run an empty one
    through `lockstep`.
    """
    shard = shard_range(n, rank, world)
    count = math.ceil(math.ceil(n / world) / batch_size)
    bounds = np.linspace(shard.start, shard.stop, count + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def lockstep(rows: range) -> tuple[range, bool]:
    """(rows to run, whether their results count): an empty batch runs item 0 and drops it, so that every rank
    takes part in every forward (the collectives of FSDP)."""
    return (rows, True) if len(rows) else (range(0, 1), False)


def eval_batches(data, collate_fn, batch_size: int, accelerator):
    """(batch on the device, whether it counts) for this rank's evaluation batches; gather results in rank order."""
    for rows in rank_batches(len(data), batch_size, accelerator.process_index, accelerator.num_processes):
        rows, counts = lockstep(rows)
        yield to_device(collate_fn([data[i] for i in rows]), accelerator.device), counts


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------ loop


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
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    best_metrics: Optional[dict] = None
    evals_without_improvement: int = 0
    num_processes: int = 1
    total_steps: int = 0


def plan_steps(cfg: TrainingConfig, batches_per_epoch: int, accumulation: int) -> tuple[int, int]:
    """(total optimizer steps, steps per epoch)."""
    steps_per_epoch = max(1, batches_per_epoch // accumulation)
    if cfg.max_steps > 0:
        return cfg.max_steps, steps_per_epoch
    return max(1, math.ceil(cfg.num_train_epochs * steps_per_epoch)), steps_per_epoch


def check_plan(cfg: TrainingConfig, accelerator, num_examples: int) -> None:
    """What train() can refuse, checked before output_dir is touched: a bad setting must cost nothing."""
    cfg.accumulation_steps(accelerator.num_processes)
    if num_examples < accelerator.num_processes:
        raise DataError(f"training data has {num_examples} examples: fewer than the {accelerator.num_processes} "
                        "processes")


def train(
    cfg: TrainingConfig,
    accelerator,
    model: torch.nn.Module,
    train_data,
    collate_fn: Callable,
    loss_fn: LossFn,
    evaluate: Optional[Callable[[torch.nn.Module], dict]] = None,
    export: Optional[Callable[[torch.nn.Module, dict, str], None]] = None,
    lengths: Optional[np.ndarray] = None,
    flops_per_token: Optional[float] = None,
) -> dict:
    """Train `model` on `train_data`; evaluate, checkpoint, early-stop; export the final model to output_dir.

    `export(unwrapped_model, state_dict, output_dir)` writes the final model (main process only).
    Returns the metrics of the run: global_step, train_loss, throughput, and eval_* of the final (or best)
    model. `evaluate(model)` runs on every rank and returns the same metrics everywhere.
    """
    check_plan(cfg, accelerator, len(train_data))
    # From here on SIGTERM / SIGUSR1 / the launcher's death are recorded: the loop saves at its next step and stops.
    with run_directory(cfg, accelerator) as resume, StopRequest() as preemption:
        return _train(cfg, accelerator, resume, preemption, model, train_data, collate_fn, loss_fn, evaluate, export,
                      lengths, flops_per_token)


def _train(cfg, accelerator, resume, preemption, model, train_data, collate_fn, loss_fn, evaluate, export, lengths,
           flops_per_token) -> dict:
    world, rank = accelerator.num_processes, accelerator.process_index
    accumulation = cfg.accumulation_steps(world)
    sampler = ShardedBatchSampler(len(train_data), cfg.per_device_train_batch_size, rank, world, cfg.seed, True, lengths)
    total_steps, steps_per_epoch = plan_steps(cfg, len(sampler), accumulation)
    eval_every = _interval(cfg.eval_strategy, cfg.eval_steps, steps_per_epoch)
    select_best = bool(cfg.metric_for_best_model and evaluate is not None)
    if cfg.metric_for_best_model and evaluate is None:
        logger.warning("metric_for_best_model %s: there is no validation data, so no evaluation, best-model choice "
                       "or early stopping", cfg.metric_for_best_model)
    elif select_best and cfg.save_steps and cfg.save_steps != eval_every:
        logger.warning("save_steps %d ignored: with metric_for_best_model a checkpoint is saved at every evaluation "
                       "(eval_steps %d), so the best one exists", cfg.save_steps, eval_every)
    save_every = eval_every if select_best else _interval(cfg.save_strategy, cfg.save_steps or eval_every,
                                                          steps_per_epoch)

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    # The scheduler is not prepared: an AcceleratedScheduler would step once per process per optimizer step.
    model, optimizer = accelerator.prepare(model, optimizer)
    objects = (model, optimizer, scheduler)

    state = TrainState(num_processes=world, total_steps=total_steps)
    if resume:
        saved = load_checkpoint(accelerator, objects, resume)  # refuses another number of processes
        state = TrainState(**{**saved, "total_steps": total_steps})
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume, state.step, state.epoch, state.position)
    if accelerator.log_with:
        accelerator.init_trackers(cfg.run_name or os.path.basename(os.path.abspath(cfg.output_dir)),
                                  config=settings_of(cfg))

    run_log = RunLog(cfg.output_dir, accelerator.is_main_process, accelerator, resume_step=state.step)
    global_batch = cfg.per_device_train_batch_size * world * accumulation
    logger.info(
        "training %d steps on %d processes (%s): %d sequences, global batch %d = %d per device x %d processes x %d "
        "accumulation; %d steps per epoch", total_steps, world, distributed_type(accelerator), len(train_data),
        global_batch, cfg.per_device_train_batch_size, world, accumulation, steps_per_epoch,
    )

    peak_flops = None
    if flops_per_token:
        dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
        peak_flops = matmul_peak_flops(accelerator.device, dtype, size=4096 if accelerator.device.type == "cuda" else 1024)
        logger.info("matmul peak here: %.0f GFLOP/s (%s); MFU is measured against it", peak_flops / 1e9, dtype)
    stream = micro_batches(sampler, train_data, collate_fn, state.epoch, state.position, cfg.dataloader_num_workers)
    params = [p for p in model.parameters() if p.requires_grad]
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    progress = _progress_bar(cfg, accelerator, total_steps, state.step)
    interval = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # loss sum, count, tokens, examples
    interval_start, last_eval_step, last_metrics = time.perf_counter(), None, None
    stop = False

    while state.step < total_steps and not stop:
        model.train()
        step_start = time.perf_counter()
        local = torch.zeros(5, dtype=torch.float64, device=accelerator.device)  # + [4]: stop requested
        for micro in range(accumulation):
            epoch, position, batch = next(stream)
            batch = to_device(batch, accelerator.device)
            sync = micro == accumulation - 1
            with nullcontext() if sync else accelerator.no_sync(model):
                loss_sum, count = loss_fn(model, batch)
                if deepspeed:  # DeepSpeed owns the gradients: fall back to the per-micro-batch mean
                    accelerator.backward(loss_sum / count.clamp(min=1))
                else:
                    # A constant divisor keeps the backward pass in a sane range; the exact global
                    # normalisation is applied to the gradients below, once the step's count is known.
                    accelerator.backward(loss_sum / cfg.per_device_train_batch_size)
            local[:4] += torch.stack([loss_sum.detach().double(), count.double(), *_batch_size(batch)])
        local[4] = preemption.requested()
        totals = accelerator.reduce(local, reduction="sum")
        loss_total, targets, tokens, examples, stop_votes = totals.tolist()  # the step's one read of its counters
        preempted = stop_votes > 0  # on any rank: all stop at this step
        scale = cfg.per_device_train_batch_size * world / targets if targets > 0 else 0.0
        grads = [p.grad for p in params if p.grad is not None] if not deepspeed else []
        if grads and scale != 1.0:  # 1.0: every example has one target (classification) and no accumulation
            torch._foreach_mul_(grads, scale)
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        state.step += 1
        state.epoch, state.position = epoch, position
        state.tokens += int(tokens)
        state.examples += int(examples)
        state.train_seconds += time.perf_counter() - step_start
        state.loss_sum += loss_total / targets if targets > 0 else 0.0
        interval += totals[:4]
        progress.update(1)

        if state.step % cfg.logging_steps == 0 or state.step == total_steps:
            seconds = time.perf_counter() - interval_start
            record = {
                "step": state.step,
                "epoch": _epochs_done(state, len(sampler)),
                "loss": (interval[0] / interval[1]).item() if interval[1] > 0 else float("nan"),
                "learning_rate": scheduler.get_last_lr()[0],
                "tokens_per_second": interval[2].item() / seconds,
                "examples_per_second": interval[3].item() / seconds,
            }
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            if flops_per_token:
                record["tflops"] = record["tokens_per_second"] * flops_per_token / 1e12
                # tokens_per_second counts every rank's tokens; peak_flops is one device's
                record["mfu"] = record["tokens_per_second"] * flops_per_token / (peak_flops * world)
            run_log.log(record)
            progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['learning_rate']:.2e}",
                                 tok_s=f"{record['tokens_per_second']:.0f}",
                                 **({"mfu": f"{record['mfu']:.0%}"} if "mfu" in record else {}), refresh=False)
            interval.zero_()
            interval_start = time.perf_counter()

        pause = time.perf_counter()  # evaluation and checkpoint time is not training throughput
        if evaluate is not None and (_due(state.step, eval_every) or state.step == total_steps):
            last_metrics = _evaluate(evaluate, model, state, run_log)
            last_eval_step = state.step
            stop = _update_best(cfg, state, last_metrics)
        if (save_every and (state.step % save_every == 0 or state.step == total_steps or stop)) or preempted:
            _save(cfg, accelerator, objects, state, export)
        if preempted:
            progress.close()
            raise _preempted(cfg, state, preemption)
        interval_start += time.perf_counter() - pause
    progress.close()

    if stop:
        logger.info("early stopping at step %d: no improvement of %s in %d evaluations",
                    state.step, cfg.metric_for_best_model, cfg.early_stopping_patience)
    if evaluate is not None and last_eval_step != state.step:
        last_metrics = _evaluate(evaluate, model, state, run_log)
    use_best = bool(cfg.metric_for_best_model and cfg.load_best_model_at_end and state.best_step is not None)
    if use_best and state.best_step != state.step:
        logger.info("restoring the best checkpoint (step %d, %s = %.4f)", state.best_step,
                    cfg.metric_for_best_model, state.best_metric)
        load_best_weights(accelerator, model, checkpoint_path(cfg.output_dir, state.best_step))
    final = {"global_step": state.step, **((state.best_metrics if use_best else last_metrics) or {})}
    if use_best:
        final["best_step"] = state.best_step

    final.update({
        "train_loss": state.loss_sum / max(state.step, 1),
        "epoch": _epochs_done(state, len(sampler)),
        "train_runtime": round(state.train_seconds, 3),
        "train_tokens_per_second": state.tokens / max(state.train_seconds, 1e-9),
        "train_examples_per_second": state.examples / max(state.train_seconds, 1e-9),
        "train_tokens": state.tokens,
        "global_batch_size": global_batch,
        "num_processes": world,
        "distributed_type": distributed_type(accelerator),
    })
    if export is not None:
        accelerator.wait_for_everyone()
        state_dict = accelerator.get_state_dict(model)  # every rank takes part (FSDP gathers shards here)
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            export(unwrapped, own_state(unwrapped, state_dict), cfg.output_dir)
    accelerator.wait_for_everyone()
    if accelerator.log_with:
        accelerator.end_training()
    return final


def _due(step: int, every: Optional[int]) -> bool:
    return every is not None and step % every == 0


def _interval(strategy: Optional[str], steps: Optional[int], steps_per_epoch: int) -> Optional[int]:
    """Steps between evaluations or saves: none for "no", an epoch for "epoch", else `steps` (default an epoch)."""
    return {"no": None, "epoch": steps_per_epoch}.get(strategy, steps or steps_per_epoch)


def _epochs_done(state: TrainState, batches_per_epoch: int) -> float:
    return round(state.epoch + state.position / max(1, batches_per_epoch), 4)


def _batch_size(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(real tokens, examples) in a batch, for throughput."""
    mask = batch.get("attention_mask")
    ids = batch["input_ids"]
    tokens = mask.sum() if mask is not None else torch.tensor(ids.numel())
    return tokens.double().to(ids.device), torch.tensor(float(ids.shape[0]), dtype=torch.float64, device=ids.device)


def _evaluate(evaluate, model, state: TrainState, run_log: RunLog) -> dict:
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
    run_log.log({"step": state.step, **flat})
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

    import sys

    # In a log file (no terminal) redraw rarely, or the log fills with bars.
    interval = 0.1 if sys.stderr.isatty() else 30.0
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=interval,
                disable=cfg.disable_tqdm or not accelerator.is_main_process)
