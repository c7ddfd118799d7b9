"""Resume compares the settings a checkpoint was written with against the new run's.

A resumed run continues the old one exactly, so a change that would alter what comes next (learning rate,
batch size, accumulation, sequence length, seed, the number of steps and so the schedule, the data) is
refused with the list of what differs. Only settings that decide where, how often and what is written,
shown or evaluated may change.
"""
from __future__ import annotations

import dataclasses
import json
import logging

from mlm.core.checkpoint import read_settings
from mlm.core.config import SECRET_FIELDS
from mlm.errors import ConfigError

logger = logging.getLogger("mlm")

FREE = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "cache_dir", "logging_steps", "eval_steps",
    "save_steps", "save_total_limit", "per_device_eval_batch_size", "max_eval_samples", "validation_file",
    "test_file", "max_test_samples", "early_stopping_patience", "load_best_model_at_end", "ddp_timeout", "report_to",
    "disable_tqdm", "allow_pickle_weights", "num_threads", "run_name", "push_to_hub", "hub_model_id", "hub_token",
    "dataloader_num_workers",
})


def settings_of(cfg) -> dict:
    """The resolved settings as JSON values (what a checkpoint stores, what a resume compares), secrets hidden."""
    settings = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
    return {k: ("<hidden>" if k in SECRET_FIELDS and v is not None else v) for k, v in settings.items()}


def check_unchanged(cfg, checkpoint: str) -> None:
    saved = read_settings(checkpoint)
    if saved is None:
        logger.warning("%s holds no settings.json (written by an older version): changed settings go unnoticed",
                       checkpoint)
        return
    now = settings_of(cfg)
    changed = [f"{key} {saved[key]!r} -> {now[key]!r}" for key in sorted(now)
               if key in saved and key not in FREE and saved[key] != now[key]]
    if changed:
        raise ConfigError(f"resume_from_checkpoint: {checkpoint} was written with other settings ({'; '.join(changed)}); "
                          "a resumed run must continue exactly: pass the saved values, or start a new run in another "
                          "output_dir")
