"""--num_threads: the default from the cores this process may use, and the flag applied and logged."""
import pytest
import torch

from mlm.core import threads
from mlm.core.config import TrainingConfig, parse_config
from mlm.errors import ConfigError


def test_default_threads_follow_the_environment(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.default_threads() == (4, "4 usable cores")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes launched on this machine share the cores
    assert threads.default_threads() == (2, "4 usable cores / 2 processes here")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's own setting wins
    assert threads.default_threads() == (1, "OMP_NUM_THREADS")


def test_use_threads_sets_torch_and_logs(mlm_log):
    before = torch.get_num_threads()
    try:
        assert threads.use_threads(1) == 1 and torch.get_num_threads() == 1
        assert "threads: 1 (--num_threads;" in mlm_log.text
    finally:
        torch.set_num_threads(before)


def test_num_threads_flag_is_checked():
    assert parse_config(TrainingConfig, ["--num_threads", "3"]).num_threads == 3
    with pytest.raises(ConfigError, match="num_threads: must be >= 1, got 0"):
        parse_config(TrainingConfig, ["--num_threads", "0"])
