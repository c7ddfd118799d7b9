"""Two real CPU ranks (gloo) through `accelerate launch`: outputs written once, 2 x B == 1 x 2B, exact resume.

Every launched run asserts the world size it really had (metrics.json "num_processes": 2): accelerate
happily starts one process, or two independent ones, and exits 0. The launch configs that need GPUs
are checked in test_launch_configs.py.

    pytest -m distributed tests/test_distributed.py
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

from dist_helpers import PER_DEVICE, check_ok, launch, losses, pretrain_args, records, weights
from mlm.cli import main as cli_main

@pytest.fixture
def one_thread():
    """In-process twins run like each launched rank (OMP_NUM_THREADS=1): a tiny model gains nothing from
    more threads, and on a busy machine 2 spinning OpenMP threads were measured 60x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.distributed
def test_pretrain_on_two_ranks_writes_everything_once(two_ranks):
    out, result = two_ranks
    metrics = check_ok(result, out)
    assert metrics["global_step"] == 20 and metrics["global_batch_size"] == 2 * PER_DEVICE
    assert "global batch 8 = 4 per device x 2 processes x 1 accumulation" in result.stderr
    assert result.stderr.count(" INFO done: ") == 1  # only the main process logs progress

    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines))
    log = [json.loads(line) for line in lines]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 21))
    assert [r["step"] for r in log if "eval_loss" in r] == [10, 20]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.json", "loss.png"):
        assert (out / name).is_file(), name
    assert sorted(os.listdir(out / "checkpoints")) == ["step-10", "step-20"]  # no .tmp-step-N left behind
    for step in (10, 20):
        files = set(os.listdir(out / "checkpoints" / f"step-{step}"))
        assert {"model.safetensors", "optimizer.safetensors", "rng_state_0.json", "rng_state_1.json", "manifest.json",
                "mlm_state.json"} <= files, files
        assert json.loads((out / "checkpoints" / f"step-{step}" / "mlm_state.json").read_text())["num_processes"] == 2


@pytest.mark.distributed
def test_two_ranks_of_b_equal_one_process_of_2b(two_ranks, corpus, tmp_path, one_thread):
    from mlm.pretrain.masking import MaskingCollator
    from mlm.core.sampling import KeyedDataset, ShardedBatchSampler
    from mlm.core.hf import load_tokenizer

    out, result = two_ranks
    check_ok(result, out)
    one = tmp_path / "one"
    assert cli_main(pretrain_args(corpus, one, per_device_train_batch_size=2 * PER_DEVICE)) == 0
    metrics = check_ok(None, one, processes=1)

    two_losses, one_losses = losses(out), losses(one)
    assert len(two_losses) == len(one_losses) == 20
    diff = max(abs(a - b) for a, b in zip(two_losses, one_losses))
    print(f"per-step loss max abs difference, 2 x {PER_DEVICE} vs 1 x {2 * PER_DEVICE}: {diff:.2e}")
    assert diff <= 1e-5
    w2, w1 = weights(out), weights(one)
    assert w2.keys() == w1.keys()
    wdiff = max((w2[k] - w1[k]).abs().max().item() for k in w2)
    print(f"final weights max abs difference: {wdiff:.2e}")
    assert wdiff <= 1e-5
    two_metrics = json.loads((out / "metrics.json").read_text())
    assert abs(two_metrics["eval_loss"] - metrics["eval_loss"]) <= 1e-5

    # Why it holds: rank r's slice of each global batch, masked, is exactly that part of the one big batch.
    tokenizer = load_tokenizer(str(out))
    rng = np.random.default_rng(0)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    blocks = [{"input_ids": np.concatenate([[cls], rng.integers(5, len(tokenizer), 30), [sep]])} for _ in range(24)]
    collate = MaskingCollator(tokenizer, seed=42)
    single = ShardedBatchSampler(len(blocks), 2 * PER_DEVICE, 0, 1, seed=42).epoch_batches(1)
    ranks = [ShardedBatchSampler(len(blocks), PER_DEVICE, r, 2, seed=42).epoch_batches(1) for r in range(2)]
    data = KeyedDataset(blocks, epoch=1)
    for big, part0, part1 in zip(single, *ranks):
        assert big == part0 + part1
        whole = collate([data[i] for i in big])
        halves = [collate([data[i] for i in part]) for part in (part0, part1)]
        for key in ("input_ids", "masked_positions", "masked_labels"):
            assert torch.equal(whole[key], torch.cat([h[key] for h in halves])), key


@pytest.mark.distributed
def test_interrupted_two_rank_run_resumes_exactly(two_ranks, corpus, tmp_path):
    out, result = two_ranks
    check_ok(result, out)
    resumed = tmp_path / "resumed"
    # mlm_loss raises at its 13th call on both ranks: steps 1-12 done, checkpoint step-10 on disk.
    stopped = launch(pretrain_args(corpus, resumed), interrupt_after=13)
    print(f"interrupted 2-process run: {stopped.seconds:.1f}s")
    assert stopped.returncode != 0 and "interrupted" in stopped.stderr
    assert sorted(os.listdir(resumed / "checkpoints")) == ["step-10"]
    assert [r["step"] for r in records(resumed) if "loss" in r] == list(range(1, 13))
    assert not (resumed / "metrics.json").exists()

    again = launch(pretrain_args(corpus, resumed, resume_from_checkpoint="latest"))
    print(f"resumed 2-process run: {again.seconds:.1f}s")
    check_ok(again, resumed)
    assert "resumed from" in again.stderr and "step 10" in again.stderr
    assert losses(resumed) == losses(out)  # masks, data order, optimizer, schedule and RNG all continue exactly
    w_straight, w_resumed = weights(out), weights(resumed)
    assert all(torch.equal(w_straight[k], w_resumed[k]) for k in w_straight)


@pytest.mark.distributed
def test_a_time_budget_stops_every_rank_at_the_same_step(corpus, tmp_path):
    """Rank 0's clock, read in the step's one reduction, decides for all: a rank that stopped alone would leave the
    other waiting in its next collective (the launch would time out), and the run ends with one export."""
    out = tmp_path / "budget"
    result = launch(pretrain_args(corpus, out, max_steps=-1, max_time="8s", warmup_steps=None, eval_steps=0.5,
                                  save_steps=0.5))
    check_ok(result, out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and 8 <= metrics["elapsed_s"] < 20
    steps = [r for r in records(out) if "loss" in r]
    assert steps[-1]["step"] == metrics["global_step"] and steps[-1]["learning_rate"] == 0.0


@pytest.mark.distributed
def test_resuming_with_another_number_of_processes_is_refused(two_ranks, corpus, tmp_path, capsys, one_thread):
    out, result = two_ranks
    check_ok(result, out)
    # 2 -> 1: the single-process CLI on a copy of the 2-rank run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    code = cli_main(pretrain_args(corpus, copy, resume_from_checkpoint="latest", max_steps=30))
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mlm ")]
    assert code == 1 and len(errors) == 1, errors
    assert "written by 2 processes" in errors[0] and "this run has 1" in errors[0]
    assert (copy / "log.jsonl").read_text() == (out / "log.jsonl").read_text()  # nothing touched

    # 1 -> 2: a single-process checkpoint resumed by two ranks
    one = tmp_path / "one"
    assert cli_main(pretrain_args(corpus, one, max_steps=2, eval_steps=2, save_steps=2)) == 0
    refused = launch(pretrain_args(corpus, one, resume_from_checkpoint="latest", max_steps=4, eval_steps=2, save_steps=2))
    print(f"refused 2-process resume: {refused.seconds:.1f}s")
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.startswith("mlm pretrain: error:")]
    assert lines and all("written by 1 processes" in line and "this run has 2" in line for line in lines), \
        refused.stderr[-3000:]
    ranks_output = refused.stderr.split("torch/distributed/elastic")[0]  # what follows is the launcher's report
    assert "Traceback" not in ranks_output


@pytest.mark.distributed
def test_ranks_that_do_not_form_a_group_are_refused(corpus, tmp_path):
    # What accelerate does on a CPU machine without ACCELERATE_USE_CPU (or with a device it cannot group):
    # each launched process becomes a separate 1-process run, all writing to one output_dir, exit 0.
    out = tmp_path / "lonely"
    result = launch(pretrain_args(corpus, out), pretend_gpu=True)
    print(f"refused launch without a group: {result.seconds:.1f}s")
    lines = [line for line in result.stderr.splitlines() if line.startswith("mlm pretrain: error:")]
    assert result.returncode != 0 and lines, result.stderr[-3000:]
    assert all("started 2 processes but they did not join one group" in line for line in lines)
    assert not out.exists()


POSITIVE = ["great fun", "i love this movie", "good acting and a great story", "a fun film", "great plot",
            "love the acting", "good good film", "a great great movie", "fun story", "i love it"]
NEGATIVE = ["bad plot", "i hate this movie", "terrible acting and a boring story", "a boring film", "bad bad film",
            "hate the story", "terrible movie", "boring and bad", "a terrible plot", "i hate it"]


@pytest.mark.distributed
def test_finetune_on_two_ranks_evaluates_every_example_once(tmp_path, tiny_bert_dir):
    from finetune.cls import task as task
    from finetune.inference import compute_outputs
    from mlm.core.config import parse_config
    from mlm.core.hf import load_tokenizer

    train, dev = tmp_path / "train.csv", tmp_path / "dev.csv"
    train.write_text("text,label\n" + "".join(f"{t},pos\n" for t in POSITIVE) + "".join(f"{t},neg\n" for t in NEGATIVE))
    # 7 examples, eval batch 2, 2 ranks: shards of 4 and 3, a short last batch; padding to 8 would show.
    dev_rows = POSITIVE[:4] + NEGATIVE[:3]
    dev.write_text("text,label\n" + "".join(f"{t},{'pos' if t in POSITIVE else 'neg'}\n" for t in dev_rows))
    out = tmp_path / "cls"
    argv = ["--task", "cls", "--model_name_or_path", tiny_bert_dir, "--train_file", train, "--validation_file", dev,
            "--output_dir", out, "--per_device_train_batch_size", 4, "--per_device_eval_batch_size", 2,
            "--max_steps", 6, "--eval_steps", 3, "--logging_steps", 1, "--learning_rate", 3e-3, "--seed", 0,
            "--disable_tqdm", "true"]
    result = launch(["finetune", *argv])
    print(f"2-process fine-tuning: {result.seconds:.1f}s")
    metrics = check_ok(result, out)
    assert metrics["global_step"] == 6 and metrics["global_batch_size"] == 8
    preds = [json.loads(line) for line in (out / "predictions" / "validation.jsonl").read_text().splitlines()]
    assert len(preds) == 7
    log = records(out)
    assert [r["step"] for r in log if "eval_accuracy" in r] == [3, 6]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 7))

    # The same final model evaluated by one process, without an accelerator.
    cfg = parse_config(task.Config, [str(a) for a in argv])
    splits, found = task.load_splits(cfg)
    cfg = cfg.with_values(found)
    labels = task.label_list(splits["train"], cfg)
    tokenizer = load_tokenizer(str(out))
    model = task.AutoModel.from_pretrained(str(out)).eval()
    features = task.encode(splits["validation"], tokenizer, cfg, labels, with_labels=False)
    outputs = compute_outputs(task, model, features, tokenizer, batch_size=2)
    single_preds = task.predictions(splits["validation"], features, outputs, cfg, labels)
    single = task.metrics(splits["validation"], single_preds, cfg, labels)
    assert [p["label"] for p in preds] == [p["label"] for p in single_preds]
    assert [p.get("gold") for p in preds] == [p.get("gold") for p in single_preds] == ["pos"] * 4 + ["neg"] * 3
    for key, value in single.items():
        if isinstance(value, float):
            assert metrics[f"eval_{key}"] == pytest.approx(value, abs=1e-6), key
    assert np.allclose([p["score"] for p in preds], [p["score"] for p in single_preds], atol=1e-5)
