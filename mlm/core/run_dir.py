"""The output_dir of a run: checked before anything is written, locked while the run lasts.

Nothing of an earlier run is deleted: an overwritten run is moved aside to `output_dir.old-<time>`, and a
run resumed from an older checkpoint moves the checkpoints of the future it abandons to
`checkpoints/abandoned-<time>/`, so that neither rotation nor `latest` ever takes them for its own.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Optional

from mlm.core import run_lock
from mlm.core.checkpoint import (check_processes, checkpoints_root, list_checkpoints, read_run_state,
                                 remove_partial_saves, resolve_resume)
from mlm.errors import ConfigError
from mlm.core.resume_settings import check_unchanged

logger = logging.getLogger("mlm")

_HELD: dict[str, Optional[str]] = {}  # output_dir -> checkpoint to resume, while this process runs in it


def check_output_dir(cfg, warn: bool = False) -> Optional[str]:
    """Refuse to clobber a finished or checkpointed run, or a saved model (the backbone itself, say), unless
    asked, or a folder another run is using; return the checkpoint to resume. Side-effect free: commands call
    it before their slow preparation."""
    if os.path.exists(cfg.output_dir) and not os.path.isdir(cfg.output_dir):
        raise ConfigError(f"output_dir: {cfg.output_dir} is a file, not a folder")
    if os.path.abspath(cfg.output_dir) in _HELD:
        return _HELD[os.path.abspath(cfg.output_dir)]
    run_lock.check(cfg.output_dir)
    resume = resolve_resume(cfg.output_dir, cfg.resume_from_checkpoint, warn)
    if resume is None and not cfg.overwrite_output_dir:
        held = [name for name in ("metrics.json", "config.json") if os.path.exists(os.path.join(cfg.output_dir, name))]
        if held or list_checkpoints(cfg.output_dir):
            what = "a saved model" if held == ["config.json"] else "a run"
            raise ConfigError(
                f"output_dir: {cfg.output_dir} already holds {what}; pass --resume_from_checkpoint latest to continue "
                "a run, --overwrite_output_dir to replace it (the old one is moved aside), or choose another output_dir"
            )
    return resume


@contextmanager
def run_directory(cfg, accelerator):
    """Hold output_dir for a run: check it, lock it, move aside what the run replaces; yield the checkpoint to
    resume (or None). Re-entrant: a command holds it around train(), which enters it again."""
    key = os.path.abspath(cfg.output_dir)
    if key in _HELD:
        yield _HELD[key]
        return
    main = accelerator.is_main_process
    resume = check_output_dir(cfg, warn=main)
    if resume is not None:
        check_processes(resume, accelerator.num_processes)
        check_unchanged(cfg, resume)
    if main:
        os.makedirs(cfg.output_dir, exist_ok=True)
        run_lock.acquire(cfg.output_dir)
    try:
        if main and resume is None and cfg.overwrite_output_dir:
            _move_old_run_aside(cfg.output_dir)
        if main and resume is not None:
            _move_abandoned_checkpoints_aside(cfg.output_dir, read_run_state(resume)["step"])
        if main:
            remove_partial_saves(cfg.output_dir)
        accelerator.wait_for_everyone()
        _HELD[key] = resume
        yield resume
    finally:
        _HELD.pop(key, None)
        if main:
            run_lock.release(cfg.output_dir)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _move_entries(names: list[str], source: str, target: str) -> None:
    os.makedirs(target)
    for name in names:
        os.rename(os.path.join(source, name), os.path.join(target, name))


def _move_old_run_aside(output_dir: str) -> None:
    """--overwrite_output_dir: the previous run's files go to output_dir.old-<time>, whole."""
    names = [name for name in os.listdir(output_dir) if name != run_lock.LOCK_FILE]
    if not names:
        return
    target = f"{os.path.normpath(output_dir)}.old-{_stamp()}-{os.getpid()}"
    _move_entries(names, output_dir, target)
    logger.warning("overwrite_output_dir: the previous run in %s was moved to %s (delete it when you no longer "
                   "need it)", output_dir, target)


def _move_abandoned_checkpoints_aside(output_dir: str, step: int) -> None:
    """Resuming from step N: checkpoints after N belong to a future this run abandons."""
    later = [os.path.basename(path) for s, path in list_checkpoints(output_dir) if s > step]
    if not later:
        return
    target = os.path.join(checkpoints_root(output_dir), f"abandoned-{_stamp()}-{os.getpid()}")
    _move_entries(later, checkpoints_root(output_dir), target)
    logger.warning("resuming from step %d: the later checkpoints %s of the abandoned run were moved to %s",
                   step, ", ".join(later), target)
