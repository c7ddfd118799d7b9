"""No host read of a device tensor inside a training step: loss, counts, grad-norm, stop votes and the budget clock
stay on the device and reach the host one step late (mlm/core/host_read.py) or at logging steps.

On a CPU nothing waits, so the test counts the calls that would wait on a GPU: Tensor.item / tolist / cpu / numpy
/ bool / float / int, made while the loop's step() runs a real pretraining step (SparseMaskedLM, MaskingCollator,
AdamW, clipping, dropout on).
"""
import json
import traceback

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig

from mlm.core import host_read, loop
from mlm.core.accel import make_accelerator
from mlm.core.loop import LoopParts, train
from mlm.pretrain.masking import MaskingCollator
from mlm.pretrain.model import SparseMaskedLM
from mlm.pretrain.run import PretrainConfig, mlm_loss

READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _blocks(tokenizer, count=64, seq=16):
    rng = np.random.default_rng(0)
    body = rng.integers(5, len(tokenizer), size=(count, seq - 2))
    return [{"input_ids": np.concatenate([[tokenizer.cls_token_id], row, [tokenizer.sep_token_id]])} for row in body]


@pytest.fixture
def counted(monkeypatch):
    """{step: [where each read of a tensor happened]} for reads inside _Run.step, the LaggedRead's own excepted."""
    reads, now = {}, {"step": None, "lagged": 0}

    def instrument(name):
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = traceback.format_stack(limit=2)[0].strip()
            # torch.utils.data draws the loader's base seed from its own CPU generator: host data, no device
            if now["step"] is not None and not now["lagged"] and "torch/utils/data/" not in caller:
                reads.setdefault(now["step"], []).append(f"{name}: {caller}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)

    for name in READS:
        instrument(name)
    step, values = loop._Run.step, host_read._HostCopy.values
    lagged_reads = []

    def counted_step(run):
        now["step"] = run.state.step + 1
        try:
            step(run)
        finally:
            now["step"] = None

    def counted_values(copy):  # the host copy pushed a step earlier: reading it waits for nothing
        lagged_reads.append(now["step"])
        now["lagged"] += 1
        try:
            return values(copy)
        finally:
            now["lagged"] -= 1

    monkeypatch.setattr(loop._Run, "step", counted_step)
    monkeypatch.setattr(host_read._HostCopy, "values", counted_values)
    return reads, lagged_reads


def test_a_training_step_reads_nothing_from_the_device_until_its_logging_step(tiny_tokenizer, tmp_path, counted):
    reads, lagged_reads = counted
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)  # dropout 0.1: the dropout paths run
    model = SparseMaskedLM(AutoModelForMaskedLM.from_config(config))
    cfg = PretrainConfig(output_dir=str(tmp_path / "run"), max_steps=6, logging_steps=3, save_steps=6,
                         per_device_train_batch_size=4, max_grad_norm=1.0, disable_tqdm=True, report_to="none")
    metrics = train(cfg, make_accelerator(cfg), model, _blocks(tiny_tokenizer),
                    LoopParts(MaskingCollator(tiny_tokenizer, seed=0), mlm_loss))
    assert metrics["global_step"] == 6
    # steps 1, 2, 4, 5: no read at all; 3 and 6 (logging steps): the interval's figures and the grad norm
    assert [reads.get(s, []) for s in (1, 2, 4, 5)] == [[], [], [], []], reads
    assert 1 <= len(reads.get(3, [])) <= 3 and 1 <= len(reads.get(6, [])) <= 3, reads
    # the lagged copy is read once a step from step 2 on (the previous step's), and flushed at logging steps
    assert lagged_reads == [2, 3, 3, 5, 6, 6], lagged_reads
    # and the figures still add up: every step's examples and tokens are counted once
    assert metrics["train_tokens"] == 6 * 4 * 16
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl") if '"loss"' in line]
    assert [r["step"] for r in records] == [3, 6] and all(np.isfinite(r["loss"]) and r["grad_norm"] > 0
                                                          for r in records)
