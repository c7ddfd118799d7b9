"""Preemption: SIGTERM / SIGUSR1, or the death of the launcher, ask a run to stop after the current step.

The loop adds `stop.requested()` of every rank into the step's all-reduce, so a signal that reaches one
rank stops them all at the same step; they then write a checkpoint together and raise `Preempted`.

A rank started by a launcher (torchrun, accelerate launch) notices the launcher's death by its parent
process changing: the ranks would otherwise train on, unsupervised, to the end.
"""
from __future__ import annotations

import os
import signal
import threading

from mlm.errors import UserError

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(UserError):
    """The run stopped on request after writing a checkpoint; the CLI exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopRequest:
    """Context manager: while inside, SIGTERM and SIGUSR1 are recorded instead of killing the process."""

    def __init__(self):
        self.signum = None
        self.parent = os.getppid() if "LOCAL_RANK" in os.environ else None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def _record(self, signum, frame):
        self.signum = signum

    def launcher_gone(self) -> bool:
        return self.parent is not None and os.getppid() != self.parent

    def requested(self) -> float:
        """1.0 when this rank was asked to stop (a float: it travels in the step's all-reduce)."""
        return 1.0 if self.signum is not None or self.launcher_gone() else 0.0

    def reason(self) -> str:
        if self.signum is not None:
            return f"stopped by {signal.Signals(self.signum).name}"
        if self.launcher_gone():
            return f"stopped: the launcher (pid {self.parent}) is gone"
        return "stopped: another rank was asked to stop"

    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)
