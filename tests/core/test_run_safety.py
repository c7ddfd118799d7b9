"""Run safety on preemptible machines (issue 20): no pickle in checkpoints, damaged checkpoints, signals,
the output_dir lock, overwrites that move aside, lineage of resumed runs, changed settings on resume."""
import json
import os
import pickle
import re
import signal
import sys
import time

import pytest
import torch

from dist_helpers import finish, start, start_launch
from mlm.errors import DataError
from test_distributed import pretrain_args
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


@pytest.mark.parametrize("damage", ["truncated weights", "missing rng state", "changed scheduler", "bad manifest"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
    _, straight, m_straight = run(tmp_path, "straight", max_steps=20)
    run(tmp_path, "run", max_steps=20)
    latest = tmp_path / "run" / "checkpoints" / "step-20"
    if damage == "truncated weights":
        (latest / "model.safetensors").write_bytes((latest / "model.safetensors").read_bytes()[:-8])
    elif damage == "missing rng state":
        (latest / "rng_state_0.json").unlink()
    elif damage == "changed scheduler":
        (latest / "scheduler.json").write_text((latest / "scheduler.json").read_text().replace("1", "2", 1))
    else:
        (latest / "manifest.json").write_text('{"files": 3}')
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
            "mlm_state.json", "manifest.json"} <= synced
    assert ("fsync", str(tmp_path / "run" / "checkpoints")) in events[rename:]


# ------------------------------------------------------------------------------------------ 8. signals


def wait_for_steps(output_dir, steps: int, proc, timeout: float = 180) -> None:
    """Until log.jsonl holds `steps` training lines (the run is in its loop)."""
    deadline = time.monotonic() + timeout
    log = output_dir / "log.jsonl"
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count('"loss"') >= steps:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("the run did not reach its training loop")


def endless(corpus_file, output_dir) -> list[str]:
    """A tiny pretraining run that would go on for a long time: only a signal ends it."""
    corpus = {"file": corpus_file, "cache": os.path.join(os.path.dirname(corpus_file), "cache")}
    return pretrain_args(corpus, output_dir, max_steps=100000, save_steps=50000, eval_steps=50000)


def stopped_checkpoint(result, pattern: str, ranks: int = 1) -> int:
    """The step of the checkpoint that a stopped run names in its one-line message (checked intact)."""
    from mlm.core.checkpoint import checkpoint_problem

    lines = [line for line in result.stderr.splitlines() if line.startswith("mlm pretrain: ")]
    assert lines and all(re.search(pattern, line) for line in lines), result.stderr[-3000:]
    match = re.search(r"at step (\d+): checkpoint written to (\S+);", lines[0])
    step, path = int(match.group(1)), match.group(2)
    assert step >= 3 and checkpoint_problem(path) is None
    assert json.loads(open(os.path.join(path, "mlm_state.json")).read())["step"] == step
    assert all(os.path.isfile(os.path.join(path, f"rng_state_{r}.json")) for r in range(ranks))
    return step


def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_nonzero(sentence_corpus, tmp_path, capsys):
    out = tmp_path / "run"
    proc = start([sys.executable, "-m", "mlm", *endless(sentence_corpus, out)])
    wait_for_steps(out, 3, proc)
    # 7: meanwhile a second run into the same folder is refused, naming the first
    code, errors = cli_errors(capsys, *endless(sentence_corpus, out), "--resume_from_checkpoint", "null")
    assert code == 1 and len(errors) == 1 and f"is in use by another run (pid {proc.pid} on " in errors[0], errors
    proc.send_signal(signal.SIGTERM)
    result = finish(proc, 120, time.perf_counter())
    assert result.returncode == 128 + signal.SIGTERM and "Traceback" not in result.stderr
    stopped_checkpoint(result, r"^mlm pretrain: stopped by SIGTERM at step \d+: checkpoint written to .*; continue "
                               r"with --resume_from_checkpoint latest$")
    assert not (out / "run.lock").exists()


def rank_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the processes under a launcher (their environment holds RANK)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        rank = [e[5:] for e in environ if e.startswith(b"RANK=")]
        if ppid == launcher and rank:
            found[int(rank[0])] = int(pid)
    return found


@pytest.mark.distributed
@pytest.mark.parametrize("target, signum", [("rank 1", signal.SIGUSR1), ("launcher", signal.SIGTERM)])
def test_a_signal_to_one_process_stops_both_ranks_after_a_checkpoint(sentence_corpus, tmp_path, target, signum):
    out = tmp_path / "run"
    proc = start_launch(endless(sentence_corpus, out))
    wait_for_steps(out, 3, proc)
    os.kill(rank_pids(proc.pid)[1] if target == "rank 1" else proc.pid, signum)  # the launcher forwards it
    result = finish(proc, 180, time.perf_counter())
    assert result.returncode != 0
    name = signal.Signals(signum).name
    stopped_checkpoint(result, rf"stopped( by {name}|: another rank was asked to stop) at step", ranks=2)


@pytest.mark.distributed
def test_ranks_save_and_stop_when_the_launcher_is_killed(sentence_corpus, tmp_path):
    out = tmp_path / "run"
    proc = start_launch(endless(sentence_corpus, out))
    wait_for_steps(out, 3, proc)
    os.kill(proc.pid, signal.SIGKILL)  # the launcher alone: its ranks live on
    result = finish(proc, 180, time.perf_counter())  # until the ranks close its output
    stopped_checkpoint(result, r"stopped: the launcher \(pid \d+\) is gone at step", ranks=2)


# --------------------------------------------------------------------------------------------- 7. lock


def test_a_second_run_into_a_folder_in_use_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    import socket
    import subprocess

    from mlm.errors import ConfigError

    out = tmp_path / "run"
    out.mkdir()
    lock = out / "run.lock"
    lock.write_text(json.dumps({"host": "node-7", "pid": 1, "started": "2026-01-01 00:00:00"}))
    with pytest.raises(ConfigError, match=r"in use by another run \(pid 1 on node-7, .*delete .*run.lock if that"):
        run(tmp_path, "run", max_steps=2)  # another host's process cannot be checked: never taken over
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid, "started": "2026-01-01 00:00:00"}))
        with pytest.raises(ConfigError, match=rf"output_dir: .*run is in use by another run \(pid {other.pid} on "
                                              rf"{socket.gethostname()}, started 2026-01-01 00:00:00\)"):
            run(tmp_path, "run", max_steps=2)
        assert os.listdir(out) == ["run.lock"]
    finally:
        other.kill()
        other.wait()
    seen = {}

    def watching(model, batch):
        seen.update(json.loads(lock.read_text()))
        return squared_error(model, batch)

    capsys.readouterr()
    run(tmp_path, "run", loss_fn=watching, max_steps=2)  # the other run is gone: its lock is stale
    assert f"taking over the lock of pid {other.pid}" in capsys.readouterr().err
    assert seen["pid"] == os.getpid() and seen["host"] == socket.gethostname()
    assert not lock.exists()  # released at the end


# ------------------------------------------------------------------------------ 2, 3. overwrite moves aside


def old_runs(tmp_path, name):
    return sorted(p for p in tmp_path.iterdir() if p.name.startswith(f"{name}.old-"))


def test_a_bad_setting_is_refused_before_the_previous_run_is_touched(tmp_path):
    from mlm.errors import ConfigError

    run(tmp_path, "run", max_steps=10)
    before = sorted(os.listdir(tmp_path / "run"))
    with pytest.raises(ConfigError, match="global_batch_size: 12 is not a multiple"):
        run(tmp_path, "run", overwrite_output_dir=True, global_batch_size=12)
    with pytest.raises(DataError, match="training data has 0 examples"):
        from mlm.core.config import TrainingConfig
        from mlm.core.accel import make_accelerator
        from mlm.core.loop import LoopParts, train
        from test_loop import Toy, collate

        cfg = TrainingConfig(output_dir=str(tmp_path / "run"), overwrite_output_dir=True, disable_tqdm=True)
        train(cfg, make_accelerator(cfg), Toy(), [], LoopParts(collate, squared_error))
    assert sorted(os.listdir(tmp_path / "run")) == before and not old_runs(tmp_path, "run")


def test_an_overwrite_that_fails_later_keeps_the_previous_run_aside(tmp_path):
    from mlm.core.config import TrainingConfig
    from mlm.errors import ConfigError
    from mlm.core.accel import make_accelerator
    from mlm.core.loop import LoopParts, train
    from test_loop import Toy, collate, toy_data

    run(tmp_path, "run", max_steps=10)
    (tmp_path / "run" / "metrics.json").write_text('{"old": 1}')
    cfg = TrainingConfig(output_dir=str(tmp_path / "run"), overwrite_output_dir=True, max_steps=4, eval_steps=2,
                         metric_for_best_model="acuracy", disable_tqdm=True)  # the typo shows at the first evaluation
    with pytest.raises(ConfigError, match="metric_for_best_model: 'acuracy' is not among"):
        train(cfg, make_accelerator(cfg), Toy(), toy_data(), LoopParts(collate, squared_error, lambda m: {"accuracy": 1.0}))
    [old] = old_runs(tmp_path, "run")
    assert (old / "metrics.json").read_text() == '{"old": 1}'
    assert sorted(os.listdir(old / "checkpoints")) == ["step-10"] and (old / "log.jsonl").exists()
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_overwriting_a_pretraining_run_never_pairs_the_old_model_with_the_new_tokenizer(sentence_corpus, tmp_path,
                                                                                        monkeypatch):
    import mlm.pretrain.run as pretrain
    from test_pretrain_e2e import tiny_args

    out = tmp_path / "run"
    pretrain.main(tiny_args(sentence_corpus, out, tmp_path / "cache", max_steps=2, eval_steps=2, save_steps=2))
    old_vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]

    def killed(model, batch):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "mlm_loss", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain.main(tiny_args(sentence_corpus, out, tmp_path / "cache", vocab_size=150, overwrite_output_dir=True))
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()
    assert json.loads((out / "tokenizer.json").read_text())["model"]["vocab"] != old_vocab
    [old] = old_runs(tmp_path, "run")
    assert json.loads((old / "tokenizer.json").read_text())["model"]["vocab"] == old_vocab
    assert (old / "model.safetensors").exists() and (old / "checkpoints" / "step-2").is_dir()


def test_the_demo_recipe_never_destroys_checkpoints(sentence_corpus, tmp_path, capsys):
    from dist_helpers import ROOT
    from mlm.cli import main as cli_main

    out = tmp_path / "demo"
    argv = ["pretrain", "--recipe", os.path.join(ROOT, "recipes", "pretrain", "demo.yaml"), "--train_file",
            sentence_corpus, "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"), "--vocab_size", "200",
            "--max_seq_length", "32", "--model_preset", "tiny", "--hidden_size", "32", "--intermediate_size", "64",
            "--num_attention_heads", "2", "--per_device_train_batch_size", "8", "--max_steps", "2", "--save_steps", "2",
            "--eval_steps", "2", "--disable_tqdm", "true"]
    assert cli_main(argv) == 0
    checkpoint = (out / "checkpoints" / "step-2" / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert cli_main(argv) == 1  # `make pretrain` again: refused, not started over
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mlm ")]
    assert len(errors) == 1 and "already holds a run; pass --resume_from_checkpoint latest" in errors[0]
    assert (out / "checkpoints" / "step-2" / "model.safetensors").read_bytes() == checkpoint


# ------------------------------------------------------------------------------------------ 4. lineage


def test_a_rollback_owns_its_checkpoints_and_the_abandoned_future_is_moved_aside(tmp_path, capsys):
    from mlm.core.checkpoint import resolve_resume

    run(tmp_path, "run", max_steps=25, save_steps=5, save_total_limit=5)
    root = tmp_path / "run" / "checkpoints"
    assert sorted(os.listdir(root)) == [f"step-{s}" for s in (10, 15, 20, 25, 5)]
    capsys.readouterr()
    # Roll back to step-10 and stop right after the first save (step-15) of the new trajectory.
    interrupted(tmp_path, "run", calls=6, max_steps=25, save_steps=5, save_total_limit=2,
                resume_from_checkpoint=str(root / "step-10"))
    assert "later checkpoints step-15, step-20, step-25 of the abandoned run were moved to" in capsys.readouterr().err
    [abandoned] = [p for p in os.listdir(root) if p.startswith("abandoned-")]
    assert sorted(os.listdir(root / abandoned)) == ["step-15", "step-20", "step-25"]
    assert sorted(p for p in os.listdir(root) if p.startswith("step-")) == ["step-10", "step-15"]
    assert resolve_resume(str(tmp_path / "run"), "latest") == str(root / "step-15")


# ------------------------------------------------------------------------------------- 5. settings


@pytest.mark.parametrize("change, shown", [
    ({"learning_rate": 0.1}, "learning_rate 0.05 -> 0.1"),
    ({"per_device_train_batch_size": 4}, "per_device_train_batch_size 8 -> 4"),
    ({"gradient_accumulation_steps": 2, "seed": 7}, "gradient_accumulation_steps 1 -> 2; seed 42 -> 7"),
    ({"max_steps": 30}, "max_steps 20 -> 30"),
])
def test_resume_refuses_changed_settings_with_the_list_of_differences(tmp_path, change, shown):
    from mlm.errors import ConfigError

    interrupted(tmp_path, "run")
    log = (tmp_path / "run" / "log.jsonl").read_text()
    with pytest.raises(ConfigError, match=rf"step-10 was written with other settings \({re.escape(shown)}\); a resumed"):
        run(tmp_path, "run", resume_from_checkpoint="latest", **change)
    assert (tmp_path / "run" / "log.jsonl").read_text() == log  # nothing touched
    metrics, _, _ = run(tmp_path, "run", resume_from_checkpoint="latest", logging_steps=5, save_total_limit=3)
    assert metrics["global_step"] == 20  # where and how often things are written may change


# ------------------------------------------------------------------------------------- 9. safetensors


@pytest.fixture
def pickle_only_dir(tiny_bert_dir, tmp_path):
    """tiny_bert_dir with its weights as pytorch_model.bin only (a pickle)."""
    import shutil

    from safetensors.torch import load_file

    path = tmp_path / "pickled"
    shutil.copytree(tiny_bert_dir, path)
    torch.save(load_file(str(path / "model.safetensors")), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    return path


def cli_errors(capsys, *argv) -> tuple[int, list[str]]:
    from mlm.cli import main as cli_main

    code = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("mlm ")]


def sentiment_args(tmp_path, backbone, name, *extra):
    from test_finetune_e2e import NEGATIVE, POSITIVE

    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"{t},pos\n" for t in POSITIVE) + "".join(f"{t},neg\n" for t in NEGATIVE))
    return ["finetune", "--task", "cls", "--model_name_or_path", backbone, "--train_file", train, "--output_dir",
            tmp_path / name, "--max_steps", 2, "--per_device_train_batch_size", 4, "--disable_tqdm", "true", *extra]


def test_a_finetune_overwrite_refused_for_its_data_keeps_the_previous_run(tiny_bert_dir, tmp_path, capsys):
    code, errors = cli_errors(capsys, *sentiment_args(tmp_path, tiny_bert_dir, "run", "--save_steps", 2))
    assert code == 0, errors
    before = sorted(os.listdir(tmp_path / "run"))
    assert {"checkpoints", "metrics.json", "loss.png"} <= set(before)
    code, errors = cli_errors(capsys, *sentiment_args(tmp_path, tiny_bert_dir, "run", "--overwrite_output_dir", "true",
                                                      "--max_train_samples", 0))
    assert code == 1 and len(errors) == 1, errors
    assert sorted(os.listdir(tmp_path / "run")) == before and not old_runs(tmp_path, "run")


def test_pickle_only_weights_are_refused_unless_trusted(pickle_only_dir, tmp_path, capsys):
    code, errors = cli_errors(capsys, *sentiment_args(tmp_path, pickle_only_dir, "refused"))
    assert code == 1 and len(errors) == 1, errors
    assert "holds only pickle weights (pytorch_model.bin)" in errors[0] and "--allow_pickle_weights" in errors[0]
    assert not (tmp_path / "refused").exists()
    code, errors = cli_errors(capsys, *sentiment_args(tmp_path, pickle_only_dir, "trusted", "--allow_pickle_weights",
                                                      "true"))
    assert code == 0 and errors == []
    out = tmp_path / "trusted"
    (out / "model.safetensors").rename(out / "model.safetensors.off")
    torch.save({}, out / "pytorch_model.bin")
    code, errors = cli_errors(capsys, "predict", "--model", out, "--text", "great fun")
    assert code == 1 and len(errors) == 1 and "holds only pickle weights" in errors[0]


def test_a_model_that_asks_for_its_own_code_is_refused(tiny_bert_dir, tmp_path, capsys):
    import shutil

    path = tmp_path / "remote"
    shutil.copytree(tiny_bert_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (path / "config.json").write_text(json.dumps(config))
    code, errors = cli_errors(capsys, "predict", "--model", path, "--text", "great fun")
    assert code == 1 and len(errors) == 1 and "asks for the model's own code (auto_map)" in errors[0]
    code, errors = cli_errors(capsys, *sentiment_args(tmp_path, path, "remote-run"))
    assert code == 1 and len(errors) == 1 and "asks for the model's own code (auto_map)" in errors[0]


def test_written_whole_replaces_only_a_finished_file(tmp_path):
    """A block that fails leaves the earlier file as it was and no temporary beside it; one that ends replaces it."""
    from mlm.core.fsutil import written_whole

    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with written_whole(str(path)) as tmp, open(tmp, "w") as f:
            f.write("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with written_whole(str(path)) as tmp, open(tmp, "w") as f:
        f.write("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.json"]
