"""Run safety on preemptible machines (issue 20): no pickle in checkpoints, damaged checkpoints, signals,
the output_dir lock, overwrites that move aside, lineage of resumed runs, changed settings on resume."""
import json
import os
import pickle

import pytest
import torch

from mlm.errors import DataError
from test_loop import run, squared_error


class Planted:
    """Unpickling this creates `marker`: proof that somebody called an unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def is_pickle(path) -> bool:
    """torch.save writes a zip holding a pickle; plain pickles start with the protocol opcode 0x80."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:1] == b"\x80" or head == b"PK\x03\x04"


def interrupted(tmp_path, name, calls=13, **overrides):
    """A 20-step run stopped by KeyboardInterrupt at the `calls`-th batch (step-10 is saved after 10)."""
    count = {"n": 0}

    def loss(model, batch):
        count["n"] += 1
        if count["n"] >= calls:
            raise KeyboardInterrupt
        return squared_error(model, batch)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, name, loss_fn=loss, **overrides)


# ------------------------------------------------------------------------------------- 1. no pickle


def test_checkpoints_hold_no_pickle_and_a_planted_one_never_runs(tmp_path):
    _, straight, m_straight = run(tmp_path, "straight")
    interrupted(tmp_path, "run")
    step = tmp_path / "run" / "checkpoints" / "step-10"
    names = sorted(os.listdir(step))
    assert all(name.endswith((".json", ".safetensors")) for name in names), names
    assert not any(is_pickle(step / name) for name in names)
    marker = tmp_path / "pwned"
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "scheduler.bin"):
        (step / name).write_bytes(pickle.dumps(Planted(str(marker))))
    _, resumed, m_resumed = run(tmp_path, "run", resume_from_checkpoint="latest")
    assert not marker.exists()
    assert resumed == straight  # dropout (torch RNG), optimizer and schedule restored from safetensors and JSON
    assert all(torch.equal(p, q) for p, q in zip(m_straight.parameters(), m_resumed.parameters()))


def test_an_old_pickle_format_checkpoint_is_refused(tmp_path):
    run(tmp_path, "old", max_steps=10)
    step = tmp_path / "old" / "checkpoints" / "step-10"
    (step / "manifest.json").unlink()
    (step / "random_states_0.pkl").write_bytes(pickle.dumps(Planted(str(tmp_path / "pwned"))))
    with pytest.raises(DataError, match="old pickle-format checkpoint, not loaded"):
        run(tmp_path, "old", resume_from_checkpoint="latest")
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------ 6. damaged checkpoints


@pytest.mark.parametrize("damage", ["truncated weights", "missing rng state", "changed scheduler"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    _, straight, m_straight = run(tmp_path, "straight", max_steps=20)
    run(tmp_path, "run", max_steps=20)
    latest = tmp_path / "run" / "checkpoints" / "step-20"
    if damage == "truncated weights":
        (latest / "model.safetensors").write_bytes((latest / "model.safetensors").read_bytes()[:-8])
    elif damage == "missing rng state":
        (latest / "rng_state_0.json").unlink()
    else:
        (latest / "scheduler.json").write_text((latest / "scheduler.json").read_text().replace("1", "2", 1))
    capsys.readouterr()
    _, resumed, m_resumed = run(tmp_path, "run", resume_from_checkpoint="latest")
    err = capsys.readouterr().err
    assert "skipped damaged" in err and "step-20" in err and "resuming from" in err and "step-10" in err
    assert resumed == straight
    assert all(torch.equal(p, q) for p, q in zip(m_straight.parameters(), m_resumed.parameters()))


def test_a_partial_last_log_line_is_dropped_with_a_warning(tmp_path, capsys):
    _, straight, _ = run(tmp_path, "straight")
    interrupted(tmp_path, "run", calls=11)
    with open(tmp_path / "run" / "log.jsonl", "a") as f:
        f.write('{"step": 11, "lo')  # killed while writing
    capsys.readouterr()
    _, resumed, _ = run(tmp_path, "run", resume_from_checkpoint="latest")
    assert "log.jsonl:11: dropped a partial last line" in capsys.readouterr().err
    assert resumed == straight
    (tmp_path / "run" / "log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match=r"log.jsonl:2: not a JSON line"):
        run(tmp_path, "run", resume_from_checkpoint="latest")


def test_checkpoint_files_and_folder_are_synced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(src)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run(tmp_path, "run", max_steps=10)
    tmp = str(tmp_path / "run" / "checkpoints" / ".tmp-step-10")
    rename = events.index(("replace", tmp))
    synced = {os.path.relpath(path, tmp) for kind, path in events[:rename] if kind == "fsync" and path.startswith(tmp)}
    assert {".", "model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "rng_state_0.json",
            "trainer_state.json", "manifest.json"} <= synced
    assert ("fsync", str(tmp_path / "run" / "checkpoints")) in events[rename:]
