"""Training state without pickle: tensors as safetensors, everything else as JSON.

A checkpoint folder of a single-process or DDP run (every rank holds the whole model and optimizer):

    model.safetensors          the unwrapped model's weights (tied weights stored once)
    optimizer.safetensors      optimizer state tensors, keyed "<parameter index>.<name>"
    optimizer.json             param_groups and any non-tensor optimizer state
    scheduler.json             the learning-rate scheduler's state_dict
    rng_state_<rank>.json      python, numpy and torch (CPU and every CUDA device) generator states of a rank

A checkpoint folder of an FSDP2 run (each rank holds a shard of every parameter and of its optimizer state):

    model_shard_<rank>.safetensors      the local shards (DTensor.to_local()) of the rank's parameters and buffers
    optimizer_shard_<rank>.safetensors  the local shards of its optimizer state
    optimizer_shard_<rank>.json         param_groups, non-tensor state, and which tensors were sharded
    scheduler.json, rng_state_<rank>.json

It is resumed by the same number of ranks (checkpoint.check_processes), each reading its own files back into
the shards it already holds: no gathering, no resharding. The final model at output_dir is gathered and whole.

Loading reads these with safetensors and json only: a file planted in a checkpoint cannot run code.
DeepSpeed checkpoints are DeepSpeed's own (see checkpoint.py).
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


def save_training_state(folder: str, model, optimizer, scheduler, rank: int, is_main: bool, export=None) -> None:
    """Write this rank's share of the state into `folder` (the main process writes the shared parts). With the
    run's `export`, the weights are written as its final model is: a folder `from_pretrained` loads."""
    from safetensors.torch import save_file, save_model

    if is_main:
        if export is not None:
            export(model, own_state(model, model.state_dict()), folder)
        else:
            save_model(model, os.path.join(folder, MODEL_FILE))
        tensors, meta = _split_optimizer_state(optimizer.state_dict())
        save_file(tensors, os.path.join(folder, OPTIMIZER_TENSORS))
        for name in (MODEL_FILE, OPTIMIZER_TENSORS):
            fsync_file(os.path.join(folder, name))
        write_json_synced(os.path.join(folder, OPTIMIZER_JSON), meta)
        write_json_synced(os.path.join(folder, SCHEDULER_FILE), scheduler.state_dict())
    write_json_synced(os.path.join(folder, rng_file(rank)), rng_state())


def _split_optimizer_state(state_dict: dict) -> tuple[dict, dict]:
    """({"<index>.<name>": tensor (a DTensor's local shard)}, {"param_groups": ..., "values": non-tensor state,
    "sharded": keys of the tensors that were DTensors})."""
    tensors, values, sharded = {}, {}, []
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            key = f"{index}.{name}"
            if torch.is_tensor(value):
                if _is_dtensor(value):
                    sharded.append(key)
                tensors[key] = _local(value)
            else:
                values[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "values": values, "sharded": sharded}


def _is_dtensor(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (the local shard of an FSDP2 DTensor), detached, on the CPU, contiguous."""
    if _is_dtensor(tensor):
        tensor = tensor.to_local()
    return tensor.detach().cpu().contiguous()


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


def model_shard_file(rank: int) -> str:
    return f"model_shard_{rank}.safetensors"


def optimizer_shard_files(rank: int) -> tuple[str, str]:
    return f"optimizer_shard_{rank}.safetensors", f"optimizer_shard_{rank}.json"


def own_state(model, state_dict: dict) -> dict:
    """`state_dict` with each tensor once, under the name a model's own save_pretrained uses: FSDP gathers tied
    weights (the MLM decoder = the word embeddings) as separate copies."""
    names = own_tensors(model).keys()
    return {k: v for k, v in state_dict.items() if k in names}


def own_tensors(model) -> dict:
    """{name: parameter or buffer} of a model; tied parameters once (named_parameters drops repeats)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def _sharded_tensors(model) -> dict:
    """own_tensors of an FSDP2 model, every parameter in its sharded form. The root module keeps its parameters
    gathered after a forward without backward (an evaluation), and then registers the whole tensors."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    return own_tensors(model)


def save_sharded_state(folder: str, model, optimizer, scheduler, rank: int, is_main: bool) -> None:
    """This rank's shards of an FSDP2 model and optimizer, its RNG state (and the scheduler, on the main process)."""
    from safetensors.torch import save_file

    tensors_file, json_file = optimizer_shard_files(rank)
    shards = {name: _local(t) for name, t in _sharded_tensors(model).items()}
    save_file(shards, os.path.join(folder, model_shard_file(rank)))
    tensors, meta = _split_optimizer_state(optimizer.state_dict())
    save_file(tensors, os.path.join(folder, tensors_file))
    for name in (model_shard_file(rank), tensors_file):
        fsync_file(os.path.join(folder, name))
    write_json_synced(os.path.join(folder, json_file), meta)
    if is_main:
        write_json_synced(os.path.join(folder, SCHEDULER_FILE), scheduler.state_dict())
    write_json_synced(os.path.join(folder, rng_file(rank)), rng_state())


def load_sharded_state(folder: str, model, optimizer, scheduler, rank: int) -> None:
    """Restore what save_sharded_state wrote, into the shards this rank holds (same world size, same model)."""
    from safetensors.torch import load_file

    load_model_shards(folder, model, rank)
    tensors_file, json_file = optimizer_shard_files(rank)
    meta = read_json(os.path.join(folder, json_file))
    state = _join_optimizer_state(load_file(os.path.join(folder, tensors_file)), meta)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for key in meta["sharded"]:  # back into DTensors laid out like their parameter
        index, name = key.split(".", 1)
        state["state"][int(index)][name] = _like(params[int(index)], state["state"][int(index)][name])
    optimizer.load_state_dict(state)
    scheduler.load_state_dict(read_json(os.path.join(folder, SCHEDULER_FILE)))
    set_rng_state(read_json(os.path.join(folder, rng_file(rank))))


def load_model_shards(folder: str, model, rank: int) -> None:
    """This rank's parameter and buffer shards, copied into the model's own (refuses another set of names)."""
    from safetensors.torch import load_file

    saved = load_file(os.path.join(folder, model_shard_file(rank)))
    own = _sharded_tensors(model)
    if saved.keys() != own.keys():
        missing, extra = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
        raise ValueError(f"another model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, tensor in own.items():
            target = tensor.to_local() if _is_dtensor(tensor) else tensor
            if target.shape != saved[name].shape:  # copy_ would broadcast
                raise ValueError(f"{name}: a shard of {tuple(saved[name].shape)}, this rank holds {tuple(target.shape)}")
            target.copy_(saved[name])


def _like(param, local: torch.Tensor):
    """`local` (this rank's shard) as a DTensor with `param`'s mesh, placements and global shape."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(local.to(param.device), param.device_mesh, param.placements, run_check=False,
                              shape=param.size(), stride=param.stride())


# ------------------------------------------------------------------------------------------------ load


def load_training_state(folder: str, model, optimizer, scheduler, rank: int) -> None:
    """Restore model, optimizer, scheduler and this rank's generators in place (no unpickler involved)."""
    from safetensors.torch import load_file, load_model

    load_model(_weights_owner(folder, model), os.path.join(folder, MODEL_FILE), strict=True)
    meta = read_json(os.path.join(folder, OPTIMIZER_JSON))
    tensors = load_file(os.path.join(folder, OPTIMIZER_TENSORS))
    optimizer.load_state_dict(_join_optimizer_state(tensors, meta))
    scheduler.load_state_dict(read_json(os.path.join(folder, SCHEDULER_FILE)))
    set_rng_state(read_json(os.path.join(folder, rng_file(rank))))


def load_model_weights(folder: str, model) -> None:
    """Only the weights (restoring the best checkpoint at the end of a run)."""
    from safetensors.torch import load_model

    load_model(_weights_owner(folder, model), os.path.join(folder, MODEL_FILE), strict=True)


def _weights_owner(folder: str, model):
    """The module whose names the folder's weights carry: an exported Hugging Face model (config.json beside them)
    is the HF model a training module wraps (pretraining's SparseMaskedLM keeps it as `.model`)."""
    from transformers import PreTrainedModel

    if os.path.isfile(os.path.join(folder, "config.json")) and not isinstance(model, PreTrainedModel):
        return model.model
    return model


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
