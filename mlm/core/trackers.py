"""Experiment trackers (--report_to): which ones, checked before any work, and the names metrics get there.

tensorboard, wandb and mlflow go through accelerate's trackers; `all` is every one of them that is installed
(Trainer's meaning). A tracker that is named but not installed is a one-line error before anything runs, not a
library warning and an untracked run. mlflow, unless MLFLOW_TRACKING_URI says otherwise, writes a local file
store in output_dir/mlruns (`mlflow ui --backend-store-uri OUTPUT_DIR/mlruns` shows the runs).
"""
from __future__ import annotations

import importlib.util
import logging
import os

from mlm.errors import ConfigError

logger = logging.getLogger("mlm")

# The module each tracker needs (accelerate's tensorboard tracker takes tensorboard or tensorboardX).
MODULES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def installed(name: str) -> bool:
    return any(importlib.util.find_spec(module) is not None for module in MODULES[name])


def resolve_trackers(report_to: str, output_dir: str) -> list[str]:
    """The trackers a run logs to; ConfigError for a named one that is not installed."""
    if report_to == "none":
        return []
    if report_to == "all":
        found = [name for name in MODULES if installed(name)]
        if not found:
            logger.warning("report_to all: none of %s is installed; the run is tracked in log.jsonl only",
                           ", ".join(MODULES))
    elif not installed(report_to):
        raise ConfigError(f"report_to: {report_to} is not installed here; pip install {MODULES[report_to][0]}, "
                          "or pass --report_to none")
    else:
        found = [report_to]
    if "mlflow" in found:
        os.environ.setdefault("MLFLOW_TRACKING_URI", "file:" + os.path.join(os.path.abspath(output_dir), "mlruns"))
    return found


def tracker_key(name: str) -> str:
    """log.jsonl keys grouped as trackers show them: eval_accuracy -> eval/accuracy, loss -> train/loss."""
    for prefix in ("eval", "test"):
        if name.startswith(prefix + "_"):
            return f"{prefix}/{name[len(prefix) + 1:]}"
    return f"train/{name}"
