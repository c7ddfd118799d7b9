"""How many CPU threads torch's operators use (intra-op parallelism): --num_threads.

More threads help only while each has a core to itself. On a machine shared with other jobs, a thread that
has to wait for a busy core holds up every operator it takes part in, so fewer threads can run faster (one
thread has run 2-4x faster than two on a loaded 2-core machine). The default is the cores this process may
run on (os.sched_getaffinity: a container's or taskset's limit, not the machine's count), shared among the
processes a launcher starts on this machine, unless OMP_NUM_THREADS says otherwise.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

logger = logging.getLogger("mlm")


def usable_cores() -> int:
    """The cores this process may be scheduled on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def default_threads() -> tuple[int, str]:
    """(threads, why): OMP_NUM_THREADS when set, else the usable cores shared among this machine's processes."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = usable_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    if local > 1:
        return max(1, cores // local), f"{cores} usable cores / {local} processes here"
    return cores, f"{cores} usable cores"


def use_threads(requested: Optional[int]) -> int:
    """Set torch's intra-op threads to `requested` (None: the default) and log the choice; returns the number."""
    import torch

    threads, why = (requested, "--num_threads") if requested is not None else default_threads()
    torch.set_num_threads(threads)
    logger.info("threads: %d (%s; --num_threads N to change: fewer can be faster on a busy machine)", threads, why)
    return threads
