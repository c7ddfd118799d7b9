"""The shared loop on a toy regression: exact normalisation, accumulation, resume, best model, sampler."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from mlm.core.config import TrainingConfig
from mlm.errors import ConfigError, DataError
from mlm.core.sampling import ShardedBatchSampler, rank_batches, shard_range
from mlm.core.accel import make_accelerator
from mlm.core.loop import LoopParts, train


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))

    def forward(self, x):
        return self.lin(x).squeeze(-1)


def toy_data(n=37):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return [{"x": x[i], "y": y[i]} for i in range(n)]


def collate(items):
    x = torch.stack([it["x"] for it in items])
    return {"input_ids": torch.zeros(len(items), 1, dtype=torch.long), "x": x, "y": torch.stack([it["y"] for it in items])}


def squared_error(model, batch):
    err = (model(batch["x"]) - batch["y"]) ** 2
    return err.sum(), torch.tensor(len(err))


def run(tmp_path, name, loss_fn=squared_error, dropout=True, **overrides):
    fields = dict(output_dir=str(tmp_path / name), per_device_train_batch_size=8, learning_rate=0.05, max_steps=20,
                  logging_steps=1, save_steps=10, disable_tqdm=True, warmup_steps=2, weight_decay=0.0)
    cfg = TrainingConfig(**{**fields, **overrides})
    model = Toy()
    if not dropout:
        model.lin[1].p = 0.0
    metrics = train(cfg, make_accelerator(cfg), model, toy_data(), LoopParts(collate, loss_fn))
    losses = [json.loads(l)["loss"] for l in open(tmp_path / name / "log.jsonl") if '"loss"' in l]
    return metrics, losses, model


def test_accumulation_equals_one_big_batch(tmp_path):
    _, big, m1 = run(tmp_path, "big", dropout=False, per_device_train_batch_size=8)
    _, acc, m2 = run(tmp_path, "acc", dropout=False, per_device_train_batch_size=4, gradient_accumulation_steps=2)
    assert np.allclose(big, acc, atol=1e-5)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_resume_continues_exactly(tmp_path):
    _, straight, m_straight = run(tmp_path, "straight")
    calls = {"n": 0}

    def interrupted(model, batch):
        calls["n"] += 1
        if calls["n"] > 13:  # after the step-10 checkpoint
            raise KeyboardInterrupt
        return squared_error(model, batch)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "resumed", loss_fn=interrupted)
    assert (tmp_path / "resumed" / "checkpoints" / "step-10" / "model.safetensors").exists()
    metrics, resumed, m_resumed = run(tmp_path, "resumed", resume_from_checkpoint="latest")
    assert metrics["global_step"] == 20
    assert len(resumed) == 20 and resumed == straight  # dropout, data order and optimizer all restored
    for p, q in zip(m_straight.parameters(), m_resumed.parameters()):
        assert torch.equal(p, q)


def test_refuses_to_overwrite_a_run(tmp_path):
    run(tmp_path, "once", max_steps=2)
    (tmp_path / "once" / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run"):
        run(tmp_path, "once", max_steps=2)


def test_overwrite_starts_over_without_the_old_runs_outputs(tmp_path):
    run(tmp_path, "over", max_steps=2)
    (tmp_path / "over" / "metrics.json").write_text("{}")
    (tmp_path / "over" / "predictions").mkdir()
    (tmp_path / "over" / "predictions" / "test.jsonl").write_text("old\n")
    run(tmp_path, "over", max_steps=2, overwrite_output_dir=True)
    assert not (tmp_path / "over" / "predictions").exists() and not (tmp_path / "over" / "metrics.json").exists()
    [old] = [p for p in tmp_path.iterdir() if p.name.startswith("over.old-")]  # moved aside, never deleted
    assert (old / "predictions" / "test.jsonl").read_text() == "old\n" and (old / "metrics.json").exists()


def test_refuses_a_saved_model_or_a_file_as_output_dir(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a saved model"):
        run(tmp_path, "model", max_steps=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        run(tmp_path, "file", max_steps=2)


def test_damaged_checkpoint_is_a_one_line_error(tmp_path):
    run(tmp_path, "damaged", max_steps=10)
    step = tmp_path / "damaged" / "checkpoints" / "step-10"
    weights = step / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    with pytest.raises(DataError, match=r"no intact checkpoint .*step-10 \(model.safetensors has 100 bytes"):
        run(tmp_path, "damaged", resume_from_checkpoint="latest", max_steps=12)
    with pytest.raises(DataError, match=r"step-10 is damaged \(model.safetensors has 100 bytes"):
        run(tmp_path, "damaged", resume_from_checkpoint=str(step), max_steps=12)


def test_best_checkpoint_is_kept_and_restored(tmp_path):
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.4])

    def evaluate(model):
        return {"score": next(scores)}

    cfg = TrainingConfig(output_dir=str(tmp_path / "best"), per_device_train_batch_size=8, max_steps=10, eval_steps=2,
                         save_total_limit=1, metric_for_best_model="score", early_stopping_patience=2,
                         disable_tqdm=True, logging_steps=1)
    model = Toy()
    metrics = train(cfg, make_accelerator(cfg), model, toy_data(), LoopParts(collate, squared_error, evaluate))
    # evaluations at steps 2, 4, 6, 8: best 0.9 at step 4, then two worse ones -> stop at step 8
    assert metrics["global_step"] == 8 and metrics["best_step"] == 4 and metrics["eval_score"] == 0.9
    kept = sorted(p.name for p in (tmp_path / "best" / "checkpoints").iterdir())
    assert kept == ["step-4", "step-8"]
    from safetensors.torch import load_file

    best = load_file(str(tmp_path / "best" / "checkpoints" / "step-4" / "model.safetensors"))
    assert torch.equal(best["lin.0.weight"], model.lin[0].weight.detach())


@pytest.mark.parametrize("metric,greater", [("accuracy", True), ("f1", True), ("pearson", True), ("loss", False),
                                            ("mse", False), ("eval_rmse", False), ("perplexity", False)])
def test_greater_is_better_follows_the_metric(metric, greater):
    assert TrainingConfig(metric_for_best_model=metric).greater_is_better is greater
    assert TrainingConfig(metric_for_best_model=metric, greater_is_better=not greater).greater_is_better is not greater


def test_sampler_shards_global_batches_and_short_last_batch():
    one = ShardedBatchSampler(10, 4, rank=0, world=1, seed=3)
    r0 = ShardedBatchSampler(10, 2, rank=0, world=2, seed=3)
    r1 = ShardedBatchSampler(10, 2, rank=1, world=2, seed=3)
    for epoch in range(2):
        for b, b0, b1 in zip(one.epoch_batches(epoch), r0.epoch_batches(epoch), r1.epoch_batches(epoch)):
            assert b == b0 + b1  # rank slices make up the single-process batch
    assert [len(b) for b in r0.epoch_batches(0)] == [2, 2, 1] and len(r0) == 3
    assert sorted(sum(one.epoch_batches(0), [])) == list(range(10))
    assert one.epoch_batches(0) != one.epoch_batches(1)
    assert len(ShardedBatchSampler(9, 4, rank=0, world=2)) == 1  # 1 leftover example cannot feed 2 ranks
    assert len(ShardedBatchSampler(10, 4, rank=0, world=2)) == 2


def test_deepspeed_launch_on_cpus_is_refused(monkeypatch):
    # accelerate drops DeepSpeed on CPUs and would train plain data parallel under a DeepSpeed launch config
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setattr("mlm.core.accel._has_device", lambda: False)
    with pytest.raises(ConfigError, match="asks for DeepSpeed, which accelerate runs only on GPUs"):
        make_accelerator(TrainingConfig())


def test_length_grouping_batches_similar_lengths():
    lengths = np.array([5, 50, 6, 51, 7, 52, 8, 53])
    batches = ShardedBatchSampler(8, 4, seed=0, lengths=lengths).epoch_batches(0)
    spreads = sorted(int(np.ptp(lengths[b])) for b in batches)
    assert spreads == [3, 3]


def test_eval_shards_cover_everything_once():
    parts = [shard_range(5, r, 2) for r in range(2)]
    assert [list(p) for p in parts] == [[0, 1, 2], [3, 4]] or [list(p) for p in parts] == [[0, 1], [2, 3, 4]]
    assert sum((list(shard_range(7, r, 3)) for r in range(3)), []) == list(range(7))


@pytest.mark.parametrize("n, batch_size, world", [(5, 2, 2), (100, 64, 1), (1001, 64, 3), (130, 8, 4), (1, 16, 2),
                                                  (5, 1, 2)])
def test_eval_batches_are_equal_in_number_on_every_rank(n, batch_size, world):
    # FSDP runs a collective in every forward: ranks must run the same number of evaluation batches.
    per_rank = [rank_batches(n, batch_size, r, world) for r in range(world)]
    assert len({len(batches) for batches in per_rank}) == 1
    assert all(len(b) <= batch_size for batches in per_rank for b in batches)  # empty ones run item 0, dropped
    assert [i for batches in per_rank for b in batches for i in b] == list(range(n))  # every item once, in order


def test_parameter_sharding_launches_are_recognised():
    # FSDP and ZeRO-3 hold a layer's weights whole only inside its forward: SparseMaskedLM's fast encoder,
    # which calls the layers' parts itself, is switched off for them (mlm/pretrain/run.py).
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from mlm.core.accel import shards_parameters

    def acc(kind, stage=None):
        plugin = SimpleNamespace(zero_stage=stage) if stage else None
        return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(deepspeed_plugin=plugin))

    assert shards_parameters(acc(DistributedType.FSDP))
    assert shards_parameters(acc(DistributedType.DEEPSPEED, 3))
    assert not shards_parameters(acc(DistributedType.DEEPSPEED, 2))
    assert not shards_parameters(acc(DistributedType.MULTI_GPU)) and not shards_parameters(acc(DistributedType.NO))
