"""The accelerate side of a run: the Accelerator for a TrainingConfig (precision, trackers, threads, FSDP on
CPUs, the process-group timeout), what kind of run it is, and the matmul peak that MFU is measured against."""
from __future__ import annotations

import datetime
import os
import time
import torch
from accelerate.utils import DistributedType, InitProcessGroupKwargs

from mlm.core.config import TrainingConfig
from mlm.errors import ConfigError
from mlm.core.precision import describe, resolve_precision
from mlm.core.runlog import logger, setup_console_logging
from mlm.core.threads import use_threads
from mlm.core.trackers import resolve_trackers


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
