#!/usr/bin/env python
"""Which pretraining recipe gives the best encoder for a fixed amount of compute on this machine.

    python bench/pretrain_ablation.py                      # ~1 h on 2 cores: 12 arms at a ~3-minute budget each
    python bench/pretrain_ablation.py --budget_steps 40 --arms budget,stock_recipe --quick

Every arm is one change against the candidate budget recipe (`budget`). Arms are compared at EQUAL TIME, not
equal steps: a probe runs each arm for `probe_steps` steps, the arms taking turns (twice), and an arm gets
`budget_steps x (its tokens/s / budget's tokens/s) x (budget's tokens per step / its tokens per step)` steps, so
a faster arm trains on more tokens. Measuring throughput in an interleaved probe and training by steps keeps
the comparison fair on a shared machine, where a wall-clock budget would hand whoever runs in a quiet minute
more steps. Every arm is scored by mlm.pretrain.fixed_mask_eval on WikiText-2 test: the same tokenizer, the same 15%
masks, whatever rate the arm trained with.

Writes bench/results/pretrain_ablation.json (rewritten after every arm: partial results survive).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

VOCAB = 16000
BUDGET = {  # the candidate recipe every arm changes one thing of
    "model_preset": "mini", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
    "mlm_probability": 0.3, "learning_rate": 1e-3, "warmup_ratio": 0.06, "lr_scheduler_type": "linear",
    "per_device_train_batch_size": 32, "max_seq_length": 128, "weight_decay": 0.01,
}
SCHEDULE_FIELDS = {"learning_rate", "warmup_ratio", "lr_scheduler_type", "weight_decay"}
ARMS = {
    "budget": {},
    "stock_recipe": {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "mlm_probability": 0.15,
                     "learning_rate": 5e-5, "warmup_ratio": 0.0},  # HF example defaults, at our speed
    "dropout_0.1": {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1},
    "mask_0.15": {"mlm_probability": 0.15},
    "mask_0.40": {"mlm_probability": 0.4},
    "lr_5e-4": {"learning_rate": 5e-4},
    "lr_2e-3": {"learning_rate": 2e-3},
    "cosine": {"lr_scheduler_type": "cosine"},
    "seq_64_batch_64": {"max_seq_length": 64, "per_device_train_batch_size": 64},
    "batch_64": {"per_device_train_batch_size": 64},
    "shape_tiny_2x128": {"model_preset": "tiny"},
    "shape_small_4x512": {"model_preset": "small"},
    "shape_deep_8x256": {"num_hidden_layers": 8},
    "untied_embeddings": {"tie_word_embeddings": False},
    "sinusoidal_positions": {"position_embedding_init": "sinusoidal"},
}


def pretrain_command(out: str, tokenizer_dir: str, settings: dict, steps: int, logging_steps: int) -> list[str]:
    train, valid = common.wikitext2_file("train"), common.wikitext2_file("valid")
    flags = {"train_file": train, "validation_file": valid, "document_separator": "line",
             "tokenizer_name": tokenizer_dir, "output_dir": out, "overwrite_output_dir": "true", "seed": 0,
             "max_steps": steps, "logging_steps": logging_steps, "eval_steps": steps, "save_steps": steps,
             "max_eval_samples": 256, "disable_tqdm": "true", "mixed_precision": "no", "save_total_limit": 1,
             **settings}
    return ["-m", "mlm", "pretrain", *[x for k, v in flags.items() for x in (f"--{k}", str(v))]]


def cost_key(settings: dict) -> tuple:
    """The settings that change the cost of a step (not the learning-rate schedule)."""
    return tuple(sorted((k, v) for k, v in settings.items() if k not in SCHEDULE_FIELDS))


def run(argv: list[str], log_path: str) -> float:
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call([sys.executable, *argv], cwd=common.REPO, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"exit {code}: {' '.join(argv)} (log: {log_path})")
    return time.perf_counter() - start


def tokens_per_second(out: str, after_step: int) -> float:
    """Mean tokens/s of the logged intervals after `after_step` (the first steps warm up)."""
    rates = []
    with open(os.path.join(out, "log.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "tokens_per_second" in record and record["step"] > after_step:
                rates.append(record["tokens_per_second"])
    return statistics.mean(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget_steps", type=int, default=250, help="steps of the budget arm (~3 min on 2 cores)")
    parser.add_argument("--probe_steps", type=int, default=12)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every run")
    parser.add_argument("--eval_blocks", type=int, default=1000, help="WikiText-2 test blocks of 128 tokens scored")
    parser.add_argument("--quick", action="store_true", help="write pretrain_ablation_quick.json")
    parser.add_argument("--add", action="store_true",
                        help="add arms to the existing JSON: its arms stay (same budget_steps required), the budget "
                        "arm is probed again for the throughput ratios but not trained again")
    args = parser.parse_args(argv)
    from mlm.pretrain.fixed_mask_eval import evaluate_folder

    train, test = common.wikitext2_file("train"), common.wikitext2_file("test")
    if not train or not test:
        print("WikiText-2 not found (set MLM_DATA_DIR)", file=sys.stderr)
        return 2
    _, tokenizer_dir = common.wordpiece_tokenizer(train, VOCAB)
    arms = ["budget", *[a for a in args.arms.split(",") if a != "budget"]]
    scratch = common.scratch_dir("ablation-")
    path = os.path.join(common.RESULTS_DIR, "pretrain_ablation_quick.json" if args.quick else "pretrain_ablation.json")
    result = {"benchmark": "pretrain_ablation", "command": "python bench/pretrain_ablation.py " + shlex.join(argv or sys.argv[1:]),
              "machine": common.machine_info(), "matmul_peak_gflops": round(common.matmul_peak_gflops(), 1),
              "corpus": train, "eval_text": test, "vocab_size": VOCAB, "budget_recipe": BUDGET,
              "budget_steps": args.budget_steps, "probe": {}, "arms": {}}
    if args.add:  # the earlier arms' losses do not depend on the machine's load (they train a fixed number of steps)
        with open(path, encoding="utf-8") as f:
            earlier = json.load(f)
        if earlier["budget_steps"] != args.budget_steps or earlier["budget_recipe"] != BUDGET:
            raise SystemExit(f"--add: {path} was measured with other budget steps or another budget recipe")
        result["arms"] = earlier["arms"]
        result["earlier_runs"] = [*earlier.get("earlier_runs", []), {"command": earlier["command"],
                                                                     "machine": earlier["machine"],
                                                                     "probe": earlier["probe"]}]

    # Throughput probe: arms that cost the same (they differ only in schedule settings) share one probe; the
    # probes take turns, twice, and each keeps the better of its two turns.
    base = {**BUDGET, "num_threads": args.threads}
    cost = {arm: cost_key({**base, **ARMS[arm]}) for arm in arms}
    probes = {key: [] for key in cost.values()}
    for _ in range(2):
        for key in probes:
            arm = next(a for a in arms if cost[a] == key)
            out = os.path.join(scratch, f"probe-{arm}")
            run(pretrain_command(out, tokenizer_dir, {**base, **ARMS[arm]}, args.probe_steps, 2), out + ".log")
            probes[key].append(tokens_per_second(out, after_step=4))
            common.log(f"probe {arm}: {probes[key][-1]:.0f} tokens/s")
    probe = {arm: probes[cost[arm]] for arm in arms}
    result["probe"] = {arm: {"tokens_per_second": [round(x) for x in rates]} for arm, rates in probe.items()}

    base_rate = max(probe["budget"])
    base_tokens = BUDGET["per_device_train_batch_size"] * BUDGET["max_seq_length"]
    for arm in arms:
        if arm in result["arms"]:
            continue
        settings = {**base, **ARMS[arm]}
        tokens = settings["per_device_train_batch_size"] * settings["max_seq_length"]
        steps = max(1, round(args.budget_steps * max(probe[arm]) / base_rate * base_tokens / tokens))
        out = os.path.join(scratch, arm)
        wall = run(pretrain_command(out, tokenizer_dir, settings, steps, max(1, steps // 10)), out + ".log")
        with open(os.path.join(out, "metrics.json")) as f:
            metrics = json.load(f)
        score = evaluate_folder(out, test, max_blocks=args.eval_blocks)
        result["arms"][arm] = {
            "change": ARMS[arm], "steps": steps, "probe_tokens_per_second": round(max(probe[arm])),
            "train_tokens": metrics.get("train_tokens"), "train_runtime_s": metrics.get("train_runtime"),
            "wall_s": round(wall, 1), "own_eval_loss": metrics.get("eval_loss"),
            "common_eval_mlm_loss": round(score["mlm_loss"], 4), "masked_tokens": score["masked_tokens"],
            "command": "python " + shlex.join(pretrain_command(out, tokenizer_dir, settings, steps, max(1, steps // 10))),
        }
        common.log(f"{arm}: {steps} steps, common eval loss {score['mlm_loss']:.4f}")
        common.write_json(path, result)
    result["machine"]["load_average_at_end"] = common.load_average()
    common.write_json(path, result)
    rows = sorted(result["arms"].items(), key=lambda kv: kv[1]["common_eval_mlm_loss"])
    for arm, row in rows:
        print(f"{arm:20s} {row['steps']:6d} steps {row['common_eval_mlm_loss']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
