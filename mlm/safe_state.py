"""Training state without pickle: tensors as safetensors, everything else as JSON.

A checkpoint folder of a single-process or DDP run (every rank holds the whole model and optimizer):

    model.safetensors          the unwrapped model's weights (tied weights stored once)
    optimizer.safetensors      optimizer state tensors, keyed "<parameter index>.<name>"
    optimizer.json             param_groups and any non-tensor optimizer state
    scheduler.json             the learning-rate scheduler's state_dict
    rng_state_<rank>.json      python, numpy and torch (CPU and every CUDA device) generator states of a rank

Loading reads these with safetensors and json only: a file planted in a checkpoint cannot run code.
FSDP and DeepSpeed shard the model and optimizer; their checkpoints are accelerate's own (see checkpoint.py).
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
import torch

MODEL_FILE = "model.safetensors"
OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_FILE = "scheduler.json"


def rng_file(rank: int) -> str:
    return f"rng_state_{rank}.json"


def fsync_file(path: str) -> None:
    """Flush a written file to disk: a rename after a crash must never reveal a file of zeros."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_synced(path: str, data) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())


def read_json(path: str):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------ save


def save_training_state(folder: str, model, optimizer, scheduler, rank: int, is_main: bool) -> None:
    """Write this rank's share of the state into `folder` (the main process writes the shared parts)."""
    from safetensors.torch import save_file, save_model

    if is_main:
        save_model(model, os.path.join(folder, MODEL_FILE))
        tensors, meta = _split_optimizer_state(optimizer.state_dict())
        save_file(tensors, os.path.join(folder, OPTIMIZER_TENSORS))
        for name in (MODEL_FILE, OPTIMIZER_TENSORS):
            fsync_file(os.path.join(folder, name))
        write_json_synced(os.path.join(folder, OPTIMIZER_JSON), meta)
        write_json_synced(os.path.join(folder, SCHEDULER_FILE), scheduler.state_dict())
    write_json_synced(os.path.join(folder, rng_file(rank)), rng_state())


def _split_optimizer_state(state_dict: dict) -> tuple[dict, dict]:
    """({"<index>.<name>": tensor}, {"param_groups": ..., "values": non-tensor state})."""
    tensors, values = {}, {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                values[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "values": values}


def rng_state() -> dict:
    """Every generator a training step may draw from (dropout: torch; user code: python and numpy)."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    cuda = [_hex(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []
    return {
        "python": [version, list(words), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _hex(torch.get_rng_state()),
        "cuda": cuda,
    }


def _hex(byte_tensor: torch.Tensor) -> str:
    return byte_tensor.cpu().numpy().tobytes().hex()


# ------------------------------------------------------------------------------------------------ load


def load_training_state(folder: str, model, optimizer, scheduler, rank: int) -> None:
    """Restore model, optimizer, scheduler and this rank's generators in place (no unpickler involved)."""
    from safetensors.torch import load_file, load_model

    load_model(model, os.path.join(folder, MODEL_FILE), strict=True)
    meta = read_json(os.path.join(folder, OPTIMIZER_JSON))
    tensors = load_file(os.path.join(folder, OPTIMIZER_TENSORS))
    optimizer.load_state_dict(_join_optimizer_state(tensors, meta))
    scheduler.load_state_dict(read_json(os.path.join(folder, SCHEDULER_FILE)))
    set_rng_state(read_json(os.path.join(folder, rng_file(rank))))


def load_model_weights(folder: str, model) -> None:
    """Only the weights (restoring the best checkpoint at the end of a run)."""
    from safetensors.torch import load_model

    load_model(model, os.path.join(folder, MODEL_FILE), strict=True)


def _join_optimizer_state(tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in [*tensors.items(), *meta["values"].items()]:
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def set_rng_state(saved: dict) -> None:
    version, words, gauss = saved["python"]
    random.setstate((version, tuple(words), gauss))
    kind, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_bytes_tensor(saved["torch"]))
    if saved["cuda"] and torch.cuda.is_available():
        for device, state in enumerate(saved["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(_bytes_tensor(state), device)


def _bytes_tensor(hex_string: str) -> torch.Tensor:
    return torch.frombuffer(bytearray.fromhex(hex_string), dtype=torch.uint8).clone()
