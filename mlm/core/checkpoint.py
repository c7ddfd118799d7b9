"""Training checkpoints: atomic save, keep-last-N (+ the best), find, verify and load for an exact resume.

A checkpoint is `output_dir/checkpoints/step-N/`: the model as the run exports it (config.json, unprefixed
model.safetensors, tokenizer files, mlm_task.json for fine-tuning: `from_pretrained` and `mlm predict` take the
folder) with the rest of the training state of mlm/core/safe_state.py (safetensors and JSON, no pickle),
`mlm_state.json` (step, data position, best metric), `settings.json` (the run's
resolved settings) and `manifest.json` (size and SHA-256 of every file, written last). It is written to
`.tmp-step-N`, flushed to disk and renamed when complete, so a crash mid-save leaves the previous
checkpoints untouched and never a half-written `step-N`; a checkpoint damaged later (a lost or changed
file) fails its manifest, and `latest` falls back to the newest intact one.

FSDP2 runs write each rank's shards as safetensors (safe_state.save_sharded_state). DeepSpeed shards the model
and optimizer its own way: there accelerate writes those (its format pickles, so such checkpoints must come from
a trusted source); the rest is ours.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from typing import Optional

from mlm.core import safe_state
from mlm.core.records import first_line
from mlm.errors import ConfigError, DataError

logger = logging.getLogger("mlm")

STATE_FILE = "mlm_state.json"  # not Trainer's trainer_state.json: another schema
SETTINGS_FILE = "settings.json"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints_root(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def checkpoint_path(output_dir: str, step: int) -> str:
    return os.path.join(checkpoints_root(output_dir), f"step-{step}")


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


def remove_partial_saves(output_dir: str) -> None:
    """Delete the `.tmp-step-N` folders a kill during a save left behind: never a checkpoint (the rename makes
    one), but as big as one, and a save of another step would never reuse them."""
    root = checkpoints_root(output_dir)
    partial = sorted(name for name in os.listdir(root) if name.startswith(".tmp-step-")) if os.path.isdir(root) else []
    for name in partial:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    if partial:
        logger.warning("%s: removed %d unfinished checkpoint save%s of an interrupted run (%s)", root, len(partial),
                       "s" if len(partial) > 1 else "", ", ".join(partial))


def resolve_resume(output_dir: str, value: str | None, warn: bool = False) -> str | None:
    """`latest` -> the newest intact checkpoint of output_dir; a path -> checked; None -> None."""
    if not value:
        return None
    if value != "latest":
        if not os.path.isfile(os.path.join(value, STATE_FILE)):
            raise DataError(f"resume_from_checkpoint: {value} is not a checkpoint directory (no {STATE_FILE})")
        problem = checkpoint_problem(value)
        if problem:
            raise DataError(f"resume_from_checkpoint: {value} is damaged ({problem}); {_other_checkpoint(value)}")
        return value
    found = list_checkpoints(output_dir)
    if not found:
        raise ConfigError(f"resume_from_checkpoint: no checkpoint under {checkpoints_root(output_dir)}")
    problems = []
    for _, path in reversed(found):
        problem = checkpoint_problem(path)
        if problem is None:
            if problems and warn:
                logger.warning("resume_from_checkpoint latest: skipped damaged %s; resuming from %s",
                               "; ".join(problems), path)
            return path
        problems.append(f"{path} ({problem})")
    raise DataError(f"resume_from_checkpoint: no intact checkpoint under {checkpoints_root(output_dir)}: "
                    + "; ".join(problems))


def _other_checkpoint(damaged: str) -> str:
    """What to do instead of resuming from `damaged`: the newest intact checkpoint before it in its run, if any."""
    step_dir = os.path.abspath(damaged)
    match = _STEP_DIR.match(os.path.basename(step_dir))
    before = int(match.group(1)) if match else float("inf")
    earlier = [(step, path) for step, path in list_checkpoints(os.path.dirname(os.path.dirname(step_dir)))
               if step < before]
    for step, path in reversed(earlier):
        if checkpoint_problem(path) is None:
            return f"delete it and resume from step-{step} (--resume_from_checkpoint {path})"
    return "delete it and start over, or resume from a checkpoint of another run"


# --------------------------------------------------------------------------------------------- verify


def checkpoint_problem(path: str) -> Optional[str]:
    """Why a checkpoint cannot be trusted (a missing, truncated or changed file), or None when intact."""
    try:
        manifest = safe_state.read_json(os.path.join(path, MANIFEST_FILE))
    except FileNotFoundError:
        if any(name.endswith((".pkl", ".bin")) for name in os.listdir(path)):
            return "an old pickle-format checkpoint, not loaded: unpickling can run code"
        return f"no {MANIFEST_FILE}"
    except (OSError, ValueError) as e:
        return f"{MANIFEST_FILE} unreadable: {e}"
    try:
        files = {name: (int(size), str(digest)) for name, (size, digest) in manifest["files"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"{MANIFEST_FILE} is malformed"
    for name, (size, digest) in files.items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            return f"{name} is missing"
        if os.path.getsize(file) != size:
            return f"{name} has {os.path.getsize(file)} bytes, {size} were written"
        if _sha256(file) != digest:
            return f"{name} has changed since it was written"
    return None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: str) -> None:
    files = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            file = os.path.join(parent, name)
            safe_state.fsync_file(file)  # on disk before the rename (the export's files are not synced as written)
            files[os.path.relpath(file, folder)] = [os.path.getsize(file), _sha256(file)]
    safe_state.write_json_synced(os.path.join(folder, MANIFEST_FILE), {"files": files})


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in `path` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------------------- save, load


def save_checkpoint(accelerator, objects: tuple, output_dir: str, step: int, state: dict, settings: dict,
                    keep_last: int, keep: set[str], export=None) -> str:
    """Write step-N atomically on every rank's behalf; drop all but the last `keep_last` (and `keep`).

    `objects` = (model, optimizer, scheduler) as prepared by accelerate; `export(model, state_dict, folder)` (the
    run's own, as for its final model) writes the weights of a whole (not sharded) model."""
    root = checkpoints_root(output_dir)
    final = checkpoint_path(output_dir, step)
    tmp = os.path.join(root, f".tmp-step-{step}")
    if accelerator.is_main_process:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # leftover of a crash during an earlier save
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    _save_state(accelerator, objects, tmp, export)
    accelerator.wait_for_everyone()  # every rank writes into tmp (its RNG state, FSDP shards): all done before the rename
    if accelerator.is_main_process:
        safe_state.write_json_synced(os.path.join(tmp, STATE_FILE), state)
        safe_state.write_json_synced(os.path.join(tmp, SETTINGS_FILE), settings)
        _write_manifest(tmp)
        fsync_dir(tmp)
        if os.path.isdir(final):  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        found = [path for _, path in list_checkpoints(output_dir)]
        kept = {os.path.abspath(k) for k in keep}
        for path in found[:-keep_last]:
            if os.path.abspath(path) not in kept:
                shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _engine(accelerator) -> str:
    """Who writes the model and optimizer: "deepspeed" (its own shards, through accelerate), "fsdp" (every rank its
    shards, safe_state) or "whole" (one copy, safe_state)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    return "deepspeed" if kind == DistributedType.DEEPSPEED else "fsdp" if kind == DistributedType.FSDP else "whole"


def _save_state(accelerator, objects: tuple, folder: str, export=None) -> None:
    model, optimizer, scheduler = objects
    rank, is_main = accelerator.process_index, accelerator.is_main_process
    engine = _engine(accelerator)
    if engine == "deepspeed":
        accelerator.save_state(folder, safe_serialization=True)  # model and optimizer shards (and RNG)
        if is_main:
            safe_state.write_json_synced(os.path.join(folder, safe_state.SCHEDULER_FILE), scheduler.state_dict())
    elif engine == "fsdp":
        safe_state.save_sharded_state(folder, model, optimizer, scheduler, rank, is_main)
    else:
        safe_state.save_training_state(folder, accelerator.unwrap_model(model), optimizer, scheduler, rank, is_main,
                                       export)


def read_run_state(path: str) -> dict:
    try:
        with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes
        raise DataError(f"resume_from_checkpoint: {path}/{STATE_FILE} is unreadable ({e})") from None


def read_settings(path: str) -> Optional[dict]:
    """The settings a checkpoint was written with (None for a checkpoint older than settings.json)."""
    file = os.path.join(path, SETTINGS_FILE)
    return safe_state.read_json(file) if os.path.isfile(file) else None


def check_processes(path: str, world: int) -> dict:
    """mlm_state.json of a checkpoint written by `world` processes; refuses another number (checked before
    loading: sharded states (FSDP, DeepSpeed) fail with a traceback on another world size)."""
    state = read_run_state(path)
    if state.get("num_processes", 1) != world:
        raise ConfigError(
            f"resume_from_checkpoint: {path} was written by {state.get('num_processes', 1)} processes; resume with "
            f"the same number (this run has {world}) so every rank gets back its own data shard and RNG state"
        )
    return state


def load_checkpoint(accelerator, objects: tuple, path: str) -> dict:
    """Restore model, optimizer, scheduler and RNG states in place; return mlm_state.json."""
    state = check_processes(path, accelerator.num_processes)
    model, optimizer, scheduler = objects
    engine, rank = _engine(accelerator), accelerator.process_index
    try:
        if engine == "deepspeed":
            accelerator.load_state(path)
            scheduler.load_state_dict(safe_state.read_json(os.path.join(path, safe_state.SCHEDULER_FILE)))
        elif engine == "fsdp":
            safe_state.load_sharded_state(path, model, optimizer, scheduler, rank)
        else:
            safe_state.load_training_state(path, accelerator.unwrap_model(model), optimizer, scheduler, rank)
    except Exception as e:  # missing files, another model's shapes: torch/safetensors raise many types
        reason = first_line(e)
        raise DataError(f"resume_from_checkpoint: cannot restore {path} ({reason[:300]}); was it written by this "
                        "model and settings? resume from an earlier checkpoint or start over") from None
    return state


def load_best_weights(accelerator, model, path: str) -> None:
    """The weights of checkpoint `path` into `model` (restoring the best model at the end of a run)."""
    engine = _engine(accelerator)
    if engine == "deepspeed":
        accelerator.load_state(path)
    elif engine == "fsdp":
        safe_state.load_model_shards(path, model, accelerator.process_index)
    else:
        safe_state.load_model_weights(path, accelerator.unwrap_model(model))
