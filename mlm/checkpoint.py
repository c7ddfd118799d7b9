"""Training checkpoints: atomic save, keep-last-N (+ the best), find and load for an exact resume.

A checkpoint is `output_dir/checkpoints/step-N/`: accelerate's state (model.safetensors, optimizer,
scheduler, every rank's RNG states) plus `trainer_state.json` (step, data position, best metric).
It is written to `.tmp-step-N` and renamed when complete, so a crash mid-save leaves the previous
checkpoints untouched and never a half-written `step-N`.
"""
from __future__ import annotations

import json
import os
import re
import shutil

from mlm.errors import ConfigError, DataError

STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints as (step, path), oldest first."""
    root = checkpoints_root(output_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _STEP_DIR.match(name)
        if match and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def resolve_resume(output_dir: str, value: str | None) -> str | None:
    """`latest` -> the newest complete checkpoint of output_dir; a path -> checked; None -> None."""
    if not value:
        return None
    if value == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise ConfigError(f"resume_from_checkpoint: no checkpoint under {checkpoints_root(output_dir)}")
        return found[-1][1]
    if not os.path.isfile(os.path.join(value, STATE_FILE)):
        raise DataError(f"resume_from_checkpoint: {value} is not a checkpoint directory (no {STATE_FILE})")
    return value


def save_checkpoint(accelerator, output_dir: str, step: int, state: dict, keep_last: int, keep: set[str]) -> str:
    """Write step-N atomically on every rank's behalf; drop all but the last `keep_last` (and `keep`)."""
    root = checkpoints_root(output_dir)
    final = os.path.join(root, f"step-{step}")
    tmp = os.path.join(root, f".tmp-step-{step}")
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crash during an earlier save
    accelerator.wait_for_everyone()
    accelerator.save_state(tmp, safe_serialization=True)
    accelerator.wait_for_everyone()  # every rank writes into tmp (its RNG state, FSDP shards): all done before the rename
    if accelerator.is_main_process:
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=2)
        if os.path.isdir(final):  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        found = [path for _, path in list_checkpoints(output_dir)]
        for path in found[:-keep_last]:
            if path not in keep and os.path.abspath(path) not in {os.path.abspath(k) for k in keep}:
                shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str) -> dict:
    """Restore model, optimizer, scheduler and RNG states in place; return trainer_state.json."""
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes
        raise DataError(f"resume_from_checkpoint: {path}/{STATE_FILE} is unreadable ({e})") from None
    # Checked before loading: sharded states (FSDP, DeepSpeed) fail with a traceback on another world size.
    written, world = state.get("num_processes", 1), accelerator.num_processes
    if written != world:
        raise ConfigError(
            f"resume_from_checkpoint: {path} was written by {written} processes; resume with the same number "
            f"(this run has {world}) so every rank gets back its own data shard and RNG state"
        )
    try:
        accelerator.load_state(path)
    except Exception as e:  # truncated or missing files, another model's shapes: torch/safetensors raise many types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"resume_from_checkpoint: cannot restore {path} ({reason[:300]}); was it written by this "
                        "model and settings? resume from an earlier checkpoint or start over") from None
    return state
