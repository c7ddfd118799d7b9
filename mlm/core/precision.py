"""The numeric precision a run really uses, decided once, logged, and refused where it cannot run.

`--mixed_precision auto` (the default) is bf16 autocast on a GPU that has bf16, fp32 elsewhere, unless a launch
config asked for one (accelerate launch passes it as ACCELERATE_MIXED_PRECISION). A precision that was asked
for, by flag, by `--fp16` / `--bf16` or by a launch config, is used or refused: accelerate itself would run a
CPU "fp16" run in fp32 without a word, and bf16 on a CPU without bf16 instructions ~100x slower.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch

from mlm.errors import ConfigError

CHOICES = ("no", "fp16", "bf16")


@lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: the CPU instructions that make bf16 matmuls fast (Linux /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_precision(requested: str, use_gpu: bool) -> tuple[str, str]:
    """(precision for accelerate: no / fp16 / bf16, where the choice came from); ConfigError when impossible."""
    source = "--mixed_precision"
    if requested == "auto":
        launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
        if launcher in CHOICES:
            requested, source = launcher, "the launch config (ACCELERATE_MIXED_PRECISION)"
        else:
            gpu_bf16 = use_gpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            return ("bf16", "auto: the GPU has bf16") if gpu_bf16 else ("no", f"auto: {'no bf16 on this GPU' if use_gpu else 'CPU'}")
    if requested == "fp16" and not (use_gpu and torch.cuda.is_available()):
        raise ConfigError(f"mixed_precision: fp16 (from {source}) needs a CUDA GPU and this run has none; "
                          "pass --mixed_precision no for fp32" + (" or bf16" if cpu_has_native_bf16() else ""))
    if requested == "bf16":
        if use_gpu and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"mixed_precision: bf16 (from {source}) is not supported by this GPU; "
                              "pass --mixed_precision fp16 or no")
        if not use_gpu and not cpu_has_native_bf16():
            raise ConfigError(f"mixed_precision: bf16 (from {source}) on a CPU without bf16 instructions "
                              "(avx512_bf16 / amx_bf16) runs ~100x slower than fp32; pass --mixed_precision no")
    return requested, source


def describe(precision: str, device) -> str:
    """The log line's words: 'bf16 autocast on cuda:0', 'fp32 on cpu'."""
    return f"{'fp32' if precision == 'no' else precision + ' autocast'} on {device}"
