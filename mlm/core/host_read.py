"""A small device tensor's values on the host one step later, without stalling the device.

    reads = LaggedRead()
    previous = reads.push(totals)   # starts the copy of this step's totals; returns the previous step's (or None)
    now = reads.flush()             # this step's, waiting for them (at logging, evaluation and checkpoint steps)

Reading a CUDA tensor (`.item()`, `.tolist()`, `float()`) waits for every kernel queued before it: the host stops
feeding the GPU until the step is done, and the GPU then idles while the host prepares the next one. A copy into
pinned memory with non_blocking=True, waited on only a step later, costs nothing: by then the GPU has long
finished it while running the next step's kernels.
"""
from __future__ import annotations

from typing import Optional

import torch


class _HostCopy:
    def __init__(self, tensor: torch.Tensor):
        self.event = None
        if tensor.device.type == "cuda":
            self.host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self.host.copy_(tensor.detach(), non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:  # CPU: nothing runs ahead; other devices: a plain (waiting) copy
            self.host = tensor.detach().to("cpu", copy=True)

    def values(self) -> list[float]:
        if self.event is not None:
            self.event.synchronize()
        return self.host.numpy().tolist()  # a host tensor: numpy reads it without any device wait


class LaggedRead:
    """One pending host copy at a time: push returns the values of the one before."""

    def __init__(self):
        self.pending: Optional[_HostCopy] = None

    def push(self, tensor: torch.Tensor) -> Optional[list[float]]:
        previous, self.pending = self.pending, _HostCopy(tensor)
        return None if previous is None else previous.values()

    def flush(self) -> Optional[list[float]]:
        previous, self.pending = self.pending, None
        return None if previous is None else previous.values()
