"""What a run reports: readable console logs, `log.jsonl`, `metrics.json`, optional trackers, a loss plot.

Only the main process writes; other ranks get a RunLog that does nothing.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys

logger = logging.getLogger("mlm")


def setup_console_logging(is_main: bool) -> None:
    """One readable line per event on the main process; warnings only elsewhere."""
    if logger.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    # transformers and datasets are chatty about things the user did on purpose
    for name in ("transformers", "datasets", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # per-file "Loading weights" / "Writing model shards" bars drown the run's own progress bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (it may have been replaced since, e.g. by a test)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def write_json(path: str, data: dict, sort_keys: bool = True) -> None:
    """Write JSON atomically (temp file + rename): a crash never leaves a truncated file."""
    from mlm.core.fsutil import written_whole

    with written_whole(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=sort_keys, default=_jsonable)
        f.write("\n")


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class RunLog:
    """log.jsonl lines (train and eval), console lines, tracker calls; inert on non-main ranks."""

    def __init__(self, output_dir: str, active: bool, accelerator=None, resume_step: int = 0):
        self.active = active
        self.accelerator = accelerator
        self.path = os.path.join(output_dir, "log.jsonl")
        if active:
            os.makedirs(output_dir, exist_ok=True)
            if resume_step:
                self._truncate_after(resume_step)
            elif os.path.exists(self.path):
                os.remove(self.path)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint: they will be logged again."""
        if not os.path.exists(self.path):
            return
        kept = [line.rstrip("\n") + "\n" for line in self._readable_lines() if json.loads(line).get("step", 0) <= step]
        with open(self.path, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def _readable_lines(self) -> list[str]:
        """The log's lines; a partial last line (the run was killed while writing it) is dropped with a warning."""
        from mlm.errors import DataError

        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.strip()]
        for number, line in enumerate(lines, 1):
            try:
                json.loads(line)
            except ValueError:
                if number < len(lines):
                    raise DataError(f"{self.path}:{number}: not a JSON line; repair or remove it") from None
                logger.warning("%s:%d: dropped a partial last line (the run stopped while writing it)",
                               self.path, number)
                return lines[:-1]
        return lines

    def log(self, record: dict) -> None:
        if not self.active:
            return
        record = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=_jsonable) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            from mlm.core.trackers import tracker_key

            numbers = {tracker_key(k): v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(numbers, step=record.get("step"))

    def records(self) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]


def plot_losses(log_path: str, out_path: str) -> str | None:
    """Training loss (and eval loss when logged) against step, as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    with open(log_path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    save_figure(fig, ax, "step", "loss", out_path, dpi=110)
    return out_path


def save_figure(fig, ax, xlabel: str, ylabel: str, path: str, dpi: int = 120) -> None:
    """Label, grid and legend the axes, write the figure to `path` and close it (every plot here ends so)."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
