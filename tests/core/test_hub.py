"""Model and tokenizer sources (mlm.core.hub.locate): missing paths fail at once, hub ids fail in seconds offline.

No test reaches the network: the hub endpoint is pointed at a closed port on 127.0.0.1 (connection refused at
once), or offline mode is on.
"""
import os
import socket
import subprocess
import sys
import time

import pytest

from mlm.errors import ConfigError
from mlm.core.hub import locate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Online mode, with the hub endpoint on a closed local port; the offline switch restored afterwards."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_local_folders_are_returned_as_they_are(tmp_path, monkeypatch):
    assert locate(str(tmp_path), "model_name_or_path") == str(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    assert locate("~/run", "model_name_or_path") == str(tmp_path / "run")


@pytest.mark.parametrize("name", ["./nope", "~/nope", "/abs/nope", "a/b/c", "runs\\x", "my run", "nope/"])
def test_names_that_can_only_be_paths_fail_at_once(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(socket, "create_connection", None)  # any connection attempt would raise TypeError
    with pytest.raises(ConfigError, match=rf"^tokenizer_name: {name.replace(chr(92), chr(92) * 2)}: no such folder$"):
        locate(name, "tokenizer_name")


def test_a_missing_folder_under_an_existing_one_is_a_path(tmp_path, monkeypatch):
    """`outputs/does-not-exist` where `outputs/` exists: the user meant a path, even when the hub is online."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    monkeypatch.setattr(socket, "create_connection", None)
    with pytest.raises(ConfigError, match=r"^model_name_or_path: outputs/does-not-exist: no such folder$"):
        locate("outputs/does-not-exist", "model_name_or_path")


def test_a_file_is_not_a_model_folder(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(ConfigError, match="a file, not a model folder"):
        locate(str(path), "--model")


def test_hub_id_with_the_hub_unreachable_fails_fast_and_switches_offline(tmp_path, monkeypatch, unreachable_hub):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"'bert-base-uncased' is not a local folder and the Hugging Face hub "
                                          r"cannot be reached from here; pass a checkpoint folder"):
        locate("bert-base-uncased", "model_name_or_path")
    with pytest.raises(ConfigError, match=r"^model_name_or_path: org/model: no such folder \(nor a model id"):
        locate("org/model", "model_name_or_path")
    assert time.monotonic() - start < 10  # one refused connection, no retries
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE  # later lookups go to the cache only


def test_hub_id_in_the_hub_cache_is_served_offline(tmp_path, monkeypatch):
    """A model downloaded earlier stays usable offline (the hub cache layout: refs/main -> snapshots/<rev>)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    repo = cache / "models--org--cached"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert locate("org/cached", "model_name_or_path") == "org/cached"
    with pytest.raises(ConfigError, match="no such folder"):
        locate("org/uncached", "model_name_or_path")


def test_cli_missing_model_folder_is_one_line_in_seconds(tmp_path):
    """The issue's case through the real entry point, online mode but no hub: one line, no 70 s of retries."""
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood film,1\nbad film,0\n")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "mlm", "finetune", "--task", "cls", "--train_file", str(train),
           "--validation_file", str(train), "--output_dir", str(tmp_path / "out"),
           "--model_name_or_path", "outputs/does-not-exist"]
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].endswith("model_name_or_path: outputs/does-not-exist: no such folder (nor a model id on the "
                             "Hugging Face hub, which cannot be reached from here)")
    assert elapsed < 30, elapsed  # interpreter start-up included; the hub client's retries took ~70 s
    assert not (tmp_path / "out").exists()
