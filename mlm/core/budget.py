"""A wall-clock training budget (--max_time): its parsing, and a learning-rate curve on the fraction used.

With a budget the run does not know its number of steps: that depends on the machine. So the schedule is a
function of progress p in [0, 1], the larger of steps done / max steps and time spent / budget; warmup and
decay end when the budget does, on a laptop or a GPU node alike (Cramming's budget does the same).
"""
from __future__ import annotations

import math
import re

from mlm.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
BUDGET_SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")


def parse_duration(text, key: str = "max_time") -> float:
    """Seconds in '90', '90s', '15m', '2h', '1h30m' or '1.5h'; ConfigError naming `key` otherwise."""
    value = str(text).strip().lower().replace(" ", "")
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ConfigError(f"{key}: {text!r} is not a duration (e.g. 90s, 15m, 2h, 1h30m)") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0 or math.isinf(seconds):
        raise ConfigError(f"{key}: must be a positive duration, got {text!r}")
    return seconds


def check_budget_schedule(kind: str) -> None:
    """ConfigError unless lr_scheduler_type `kind` has a form on the fraction of a budget."""
    if kind not in BUDGET_SCHEDULES:
        raise ConfigError(f"lr_scheduler_type: {kind!r} has no time-budget form (with max_time choose from "
                          f"{', '.join(BUDGET_SCHEDULES)})")


class ProgressCurve:
    """The learning-rate multiplier as a function of progress (set by the loop before each scheduler step).

    A LambdaLR calls it with its step count, which it ignores; being an object, its state (progress included)
    is saved and restored with the scheduler's state_dict, so a resumed run continues the same curve.
    """

    def __init__(self, kind: str, warmup: float):
        check_budget_schedule(kind)
        self.kind, self.warmup, self.progress = kind, warmup, 0.0

    def __call__(self, _step: int) -> float:
        p, w = min(max(self.progress, 0.0), 1.0), self.warmup
        if self.kind == "constant":
            return 1.0
        if p < w:
            return p / w
        if self.kind == "constant_with_warmup":
            return 1.0
        rest = (p - w) / (1.0 - w) if w < 1 else 1.0
        return 1.0 - rest if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * rest))


def budget_scheduler(optimizer, kind: str, warmup_ratio: float):
    """A LambdaLR following ProgressCurve; `scheduler.lr_lambdas[0].progress` is the loop's handle."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, ProgressCurve(kind, warmup_ratio))
