"""FSDP2 and (simulated) multi-node runs on CPU ranks (gloo): what the cluster launch configs switch on.

Each launched run asserts the world size and the distributed type it really had, from its own metrics.json and
log header. The DDP twin is the shared `two_ranks` run (tests/conftest.py).

    pytest -m distributed tests/test_scale_out.py
"""
import json
import os
import pathlib
import time

import pytest
import torch

from dist_helpers import (ROOT, check_ok, finish, kill_tree, launch, losses, pretrain_args, records, start_launch,
                          start_nodes, weights)

FSDP_CPU = os.path.join(ROOT, "recipes", "accelerate", "fsdp-cpu-2proc.yaml")
MULTI_NODE = os.path.join(ROOT, "recipes", "accelerate", "multi-node.yaml")
# The FSDP run takes its global batch of 8 as 2 per device x 2 processes x 2 accumulated micro-batches (the DDP
# twin: 4 x 2 x 1), so that accumulation under FSDP (no_sync) is covered too. Measured: the two differ by <= 1e-6
# per logged loss and <= 8e-7 per final weight (another summation order: reduce-scatter of gradient shards).
FSDP_BATCH = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2)
FSDP_TOLERANCE = 1e-5


def check_engine(result, output_dir, kind: str) -> dict:
    """metrics.json of a 2-process run of distributed type `kind`, which its log header says as well."""
    metrics = check_ok(result, output_dir)
    assert metrics["distributed_type"] == kind
    assert f"on 2 processes ({kind})" in result.stderr
    return metrics


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def fsdp_run(corpus, tmp_path_factory):
    """The `two_ranks` recipe through recipes/accelerate/fsdp-cpu-2proc.yaml."""
    out = tmp_path_factory.mktemp("fsdp") / "run"
    result = launch(pretrain_args(corpus, out, **FSDP_BATCH), config=FSDP_CPU)
    print(f"2-process FSDP pretraining: {result.seconds:.1f}s")
    return out, result


@pytest.mark.distributed
def test_fsdp_pretraining_equals_ddp(fsdp_run, two_ranks):
    out, result = fsdp_run
    check_engine(result, out, "FSDP")
    ddp_out, ddp_result = two_ranks
    check_engine(ddp_result, ddp_out, "MULTI_CPU")
    assert "the last layer runs on every position" in result.stderr  # the sparse last layer is off, and says why
    assert "global batch 8 = 2 per device x 2 processes x 2 accumulation" in result.stderr

    fsdp_losses, ddp_losses = losses(out), losses(ddp_out)
    assert len(fsdp_losses) == len(ddp_losses) == 20
    diff = max(abs(a - b) for a, b in zip(fsdp_losses, ddp_losses))
    wdiff = max_difference(weights(out), weights(ddp_out))
    print(f"FSDP vs DDP: per-step loss max abs difference {diff:.2e}, final weights {wdiff:.2e}")
    assert diff <= FSDP_TOLERANCE and wdiff <= FSDP_TOLERANCE


@pytest.mark.distributed
def test_fsdp_checkpoints_are_sharded_safetensors_and_the_export_is_one_hf_model(fsdp_run):
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM

    out, result = fsdp_run
    check_engine(result, out, "FSDP")
    for step in (10, 20):
        files = set(os.listdir(out / "checkpoints" / f"step-{step}"))
        assert {"model_shard_0.safetensors", "model_shard_1.safetensors", "optimizer_shard_0.safetensors",
                "optimizer_shard_1.safetensors", "rng_state_0.json", "rng_state_1.json", "manifest.json"} <= files
        assert all(name.endswith((".safetensors", ".json")) for name in files), files  # nothing to unpickle
    shards = [load_file(out / "checkpoints" / "step-20" / f"model_shard_{r}.safetensors") for r in range(2)]
    word = "model.bert.embeddings.word_embeddings.weight"
    exported = load_file(out / "model.safetensors")
    whole = exported[word[len("model."):]]
    assert [len(s[word]) for s in shards] == [len(whole) - len(whole) // 2, len(whole) // 2]  # half of the rows each
    assert torch.equal(torch.cat([s[word] for s in shards]), whole)

    model = AutoModelForMaskedLM.from_pretrained(out)  # one ordinary checkpoint, one process, no accelerate
    assert type(model).__name__ == "BertForMaskedLM"
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight  # still tied
    assert "cls.predictions.decoder.weight" not in exported  # the tied copy is stored once


@pytest.mark.distributed
def test_fsdp_run_killed_mid_run_resumes_exactly(fsdp_run, corpus, tmp_path):
    out, result = fsdp_run
    check_engine(result, out, "FSDP")
    killed = tmp_path / "killed"
    began = time.perf_counter()
    # 2 micro-batches per step: the 25th loss call is step 13's first
    proc = start_launch(pretrain_args(corpus, killed, **FSDP_BATCH), config=FSDP_CPU, stall_after=25)
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-10").is_dir() or len(losses(killed)) < 12:
        assert proc.poll() is None and time.time() < deadline, "the run ended or hung before step 12"
        time.sleep(0.2)
    kill_tree(proc.pid)
    proc.communicate()
    print(f"FSDP run killed at step 13 after {time.perf_counter() - began:.1f}s")
    assert sorted(os.listdir(killed / "checkpoints")) == ["step-10"] and not (killed / "metrics.json").exists()

    again = launch(pretrain_args(corpus, killed, resume_from_checkpoint="latest", **FSDP_BATCH), config=FSDP_CPU)
    print(f"resumed FSDP run: {again.seconds:.1f}s")
    check_engine(again, killed, "FSDP")
    assert "resumed from" in again.stderr and "step 10" in again.stderr
    assert losses(killed) == losses(out)  # exactly: shards, optimizer state, schedule, data position and RNG
    straight, resumed = weights(out), weights(killed)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


@pytest.mark.distributed
def test_fsdp_finetunes_ner_and_exports_one_hf_model(tmp_path, tiny_bert_dir):
    from safetensors.torch import load_file
    from transformers import AutoModelForTokenClassification

    sentences = [[("John", "I-PER"), ("visited", "O"), ("Paris", "I-LOC")],
                 [("Google", "I-ORG"), ("works", "O"), ("in", "O"), ("London", "I-LOC")],
                 [("Smith", "I-PER"), ("lives", "O"), ("in", "O"), ("Berlin", "I-LOC")]] * 4
    conll = tmp_path / "train.conll"
    conll.write_text("\n\n".join("\n".join(f"{w} NNP O {t}" for w, t in s) for s in sentences) + "\n")
    dev = tmp_path / "dev.conll"
    dev.write_text("\n\n".join("\n".join(f"{w} NNP O {t}" for w, t in s) for s in sentences[:5]) + "\n")  # 5 on 2 ranks
    out = tmp_path / "ner"
    argv = ["finetune", "--task", "ner", "--model_name_or_path", tiny_bert_dir, "--train_file", conll,
            "--validation_file", dev, "--output_dir", out, "--per_device_train_batch_size", 2,
            "--per_device_eval_batch_size", 2, "--max_steps", 6, "--eval_steps", 3, "--logging_steps", 1,
            "--learning_rate", 3e-3, "--seed", 0, "--disable_tqdm", "true",
            # the number of evaluated tokens never changes: step 3 stays the best, and the end restores its checkpoint
            "--metric_for_best_model", "tokens", "--greater_is_better", "true"]
    result = launch(argv, config=FSDP_CPU)
    print(f"2-process FSDP NER fine-tuning: {result.seconds:.1f}s")
    metrics = check_engine(result, out, "FSDP")
    assert metrics["global_step"] == 6 and "eval_f1" in metrics
    assert [r["step"] for r in records(out) if "eval_f1" in r] == [3, 6]
    preds = (out / "predictions" / "validation.jsonl").read_text().splitlines()
    assert len(preds) == 5  # every validation sentence once
    model = AutoModelForTokenClassification.from_pretrained(out)
    assert model.config.num_labels == len(json.loads((out / "mlm_task.json").read_text())["labels"])
    assert metrics["best_step"] == 3  # the exported model is that checkpoint's shards, gathered
    best = [load_file(out / "checkpoints" / "step-3" / f"model_shard_{r}.safetensors") for r in range(2)]
    exported = load_file(out / "model.safetensors")
    assert all(torch.equal(torch.cat([shard[k] for shard in best]), exported[k]) for k in exported)


@pytest.mark.distributed
def test_two_simulated_nodes_equal_one_node_of_two_processes(two_ranks, corpus, tmp_path):
    """2 nodes x 1 process, each node with its own cache_dir: node 0's cache already holds the tokenizer and
    packed blocks of the `two_ranks` run; node 1 starts empty."""
    from mlm.core.hf import load_tokenizer

    ddp_out, ddp_result = two_ranks
    check_engine(ddp_result, ddp_out, "MULTI_CPU")
    out, node1_cache = tmp_path / "nodes", tmp_path / "node1-cache"
    node_argvs = [pretrain_args(corpus, out), pretrain_args({**corpus, "cache": str(node1_cache)}, out)]
    began = time.perf_counter()
    results = [finish(proc, 240, began) for proc in start_nodes(node_argvs, MULTI_NODE)]
    print(f"2 simulated nodes: {time.perf_counter() - began:.1f}s")
    assert all(r.returncode == 0 for r in results), results[1].stderr[-3000:]
    node0 = results[0]
    check_engine(node0, out, "MULTI_CPU")
    assert "global batch 8 = 4 per device x 2 processes" in node0.stderr
    assert " INFO done: " not in results[1].stderr  # node 1 neither logs progress nor writes outputs
    lines = (out / "log.jsonl").read_text().splitlines()
    assert len(lines) == len(set(lines)) and [r["step"] for r in records(out) if "loss" in r] == list(range(1, 21))

    # The tokenizer was decided once, on node 0, and node 1 packed the same blocks with it: same fingerprints.
    def packed(cache) -> dict:
        folders = [f for f in os.listdir(cache) if os.path.isfile(os.path.join(cache, f, "meta.json"))]
        return {f"{f}/{name}": (cache / f / name).read_bytes() for f in folders for name in os.listdir(cache / f)
                if name.endswith(".bin")}  # the token arrays (meta.json also records how long packing took)

    node0_cache = pathlib.Path(corpus["cache"])
    assert packed(node1_cache) and packed(node1_cache) == packed(node0_cache)  # folder names are the fingerprints
    assert len(os.listdir(node1_cache / "tokenizers")) == 1
    assert os.listdir(node1_cache / "tokenizers")[0].startswith("from-rank0-")  # node 1 trained none: received
    received = load_tokenizer(str(node1_cache / "tokenizers" / os.listdir(node1_cache / "tokenizers")[0]))
    assert received.get_vocab() == load_tokenizer(str(out)).get_vocab() == load_tokenizer(str(ddp_out)).get_vocab()

    assert losses(out) == losses(ddp_out)  # the same run as one node of two processes, number for number
    straight, nodes = weights(ddp_out), weights(out)
    assert all(torch.equal(straight[k], nodes[k]) for k in straight)
