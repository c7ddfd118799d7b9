#!/usr/bin/env python
"""The best encoder per CPU-hour: our budget recipe against the stock Hugging Face path, at the same wall time.

    python bench/time_to_quality.py                        # 15-minute budget: ~1 h on 2 cores
    python bench/time_to_quality.py --budget 1h --recipe recipes/pretrain/budget-1h.yaml
    python bench/time_to_quality.py --quick                # ~3 min smoke run, same code path
    taskset -c 1 python bench/time_to_quality.py --budget 1h --recipe recipes/pretrain/budget-1h.yaml \
        --sides ours --parallel --output bench/results/time_to_quality_1h.json   # one side, on core 1 only

Both sides pretrain on WikiText-2 train with the same WordPiece tokenizer (16k, trained on it) and the same
model shape (the recipe's), one after the other, each stopped at the same training wall time:
- stock: `BertForMaskedLM` + `DataCollatorForLanguageModeling` + `Trainer`, the HF example defaults (lr 5e-5,
  15% masks, dropout 0.1, linear decay over 3 epochs, no warmup), 128-token blocks grouped as `run_mlm.py`
  does, the recipe's batch size; a callback stops it when the budget is spent;
- ours: `mlm pretrain --recipe RECIPE --max_time BUDGET` (the schedule runs on the fraction of the budget used).
Each side is snapshotted at every tenth of its budget (the time to write a snapshot counts in its budget).
Every snapshot and both final models are scored by the same function, `mlm.pretrain.fixed_mask_eval.evaluate_folder`:
masked-LM loss on WikiText-2 test with one fixed, seeded set of 15% masks. Downstream, each final backbone is
fine-tuned by `mlm finetune` with the same settings on SST-2 (dev accuracy) and CoNLL-2003 (dev F1); a TF-IDF +
logistic-regression baseline is fitted on the same SST-2 rows.

Writes bench/results/time_to_quality.json (--quick: time_to_quality_quick.json) and a plot of common-eval loss
against training time beside it.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import functools
import json
import os
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import finetune_quality  # noqa: E402  (finetune_run, tfidf_baseline, the from-scratch fine-tuning settings)

VOCAB = 16000
SNAPSHOTS = 10  # snapshots per side, at every tenth of the budget
SEQ = 128
# The same for both backbones: the from-scratch settings of bench/finetune_quality.py, with the fine-tuning recipes'
# dropout spelled out (our budget backbone is pretrained without dropout; fine-tuning puts it back, as Cramming does).
DROPOUT = {"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
FINETUNE = {mode: {task: {**finetune_quality.SETTINGS[mode][task]["demo"], **DROPOUT} for task in ("cls", "ner")}
            for mode in ("full", "quick")}


def parse_seconds(text: str) -> float:
    from mlm.core.budget import parse_duration

    return parse_duration(text, "--budget")


def recipe_settings(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def tokenized_lines(tokenizer, path: str, add_special_tokens: bool = True):
    """The ids of each non-blank line of a text file, tokenised in chunks of 1,000 lines."""
    with open(path, encoding="utf-8") as f:
        lines = [line for line in f if line.strip()]
    for start in range(0, len(lines), 1000):
        # verbose=False: lines longer than the model are fine here (they are grouped or counted, never fed whole)
        chunk = tokenizer(lines[start:start + 1000], add_special_tokens=add_special_tokens, verbose=False)
        yield from chunk["input_ids"]


# ------------------------------------------------------------------------------------------- stock side


def child_stock(spec_path: str) -> None:
    """Runs in its own process: the stock Trainer pretraining, stopped at spec['budget_s'] of training time."""
    import torch
    from transformers import (BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainerCallback,
                              TrainingArguments)

    from mlm.core.hf import load_tokenizer
    from mlm.core.precision import resolve_precision
    from mlm.pretrain.model import preset_config

    with open(spec_path) as f:
        spec = json.load(f)
    if spec.get("core") is not None:  # --parallel: this side owns one core
        os.sched_setaffinity(0, {spec["core"]})
        torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(spec["tokenizer_dir"])
    ids: list[int] = []
    for row in tokenized_lines(tokenizer, spec["train_file"]):  # run_mlm.py: each line with specials, then group_texts
        ids.extend(row)
    blocks = [{"input_ids": ids[i:i + SEQ]} for i in range(0, len(ids) - SEQ + 1, SEQ)]
    config = preset_config(spec["preset"], len(tokenizer), max(512, SEQ), **spec["shape"])  # dropout 0.1 default
    model = BertForMaskedLM(config)
    budget, out = spec["budget_s"], spec["output_dir"]
    snapshots = []

    class Budget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            elapsed = time.perf_counter() - self.start
            if elapsed >= budget * (len(snapshots) + 1) / SNAPSHOTS and len(snapshots) < SNAPSHOTS - 1:
                folder = os.path.join(out, f"snapshot-{state.global_step}")
                model.save_pretrained(folder)
                tokenizer.save_pretrained(folder)
                snapshots.append({"step": state.global_step, "train_seconds": round(elapsed, 1), "folder": folder})
            if elapsed >= budget:
                control.should_training_stop = True
            self.elapsed = elapsed

    callback = Budget()
    # The device and precision ours gets from `--mixed_precision auto` (one rule, mlm.core.precision): a GPU when
    # there is one, bf16 where it has bf16.
    on_gpu = torch.cuda.is_available()
    bf16 = resolve_precision("auto", on_gpu)[0] == "bf16"
    args = TrainingArguments(output_dir=os.path.join(out, "trainer"), per_device_train_batch_size=spec["batch_size"],
                             learning_rate=5e-5, num_train_epochs=3, lr_scheduler_type="linear", warmup_steps=0,
                             weight_decay=0.0, seed=0, logging_steps=50, save_strategy="no", report_to="none",
                             use_cpu=not on_gpu, bf16=bf16, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=blocks, callbacks=[callback],
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15))
    trainer.train()
    final = os.path.join(out, "final")
    model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    step = trainer.state.global_step
    snapshots.append({"step": step, "train_seconds": round(callback.elapsed, 1), "folder": final})
    common.child_result({"steps": step, "train_tokens": step * spec["batch_size"] * SEQ,
                         "train_seconds": round(callback.elapsed, 1), "snapshots": snapshots, "final": final,
                         "blocks": len(blocks), "device": "cuda" if on_gpu else "cpu",
                         "precision": "bf16" if bf16 else "fp32"})


def run_stock(tokenizer_dir: str, train_file: str, recipe: dict, budget_s: float, out: str, core=None) -> dict:
    shape = {k: recipe[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
             if recipe.get(k) is not None}
    spec = {"tokenizer_dir": tokenizer_dir, "train_file": train_file, "preset": recipe.get("model_preset", "mini"),
            "shape": shape, "batch_size": recipe.get("per_device_train_batch_size", 32), "budget_s": budget_s,
            "output_dir": out, "core": core}
    os.makedirs(out, exist_ok=True)
    spec_path = os.path.join(out, "spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    result = common.run_child([os.path.abspath(__file__), "--child-stock", spec_path], timeout=budget_s * 3 + 1800)
    result["command"] = "Trainer(BertForMaskedLM, DataCollatorForLanguageModeling(0.15)), lr 5e-5, linear, 3 epochs, " \
                        f"batch {spec['batch_size']}, stopped at {budget_s:.0f} s"
    return result


# --------------------------------------------------------------------------------------------- our side


def run_ours(tokenizer_dir: str, recipe_path: str, budget_s: float, out: str, core=None) -> dict:
    """`mlm pretrain` with the budget; a checkpoint (a model folder) at every tenth of it, no evaluation until the
    end (the run's own evaluations would spend budget the stock side does not spend)."""
    flags = {"recipe": recipe_path, "train_file": common.wikitext2_file("train"),
             "validation_file": common.wikitext2_file("valid"), "tokenizer_name": tokenizer_dir, "output_dir": out,
             "overwrite_output_dir": "true", "max_time": f"{budget_s:g}s", "eval_strategy": "no",
             "save_steps": 1 / SNAPSHOTS, "save_total_limit": SNAPSHOTS + 1, "max_eval_samples": 256,
             "disable_tqdm": "true", "seed": 0}
    if core is not None:
        flags["num_threads"] = 1
    command = [sys.executable, "-m", "mlm", "pretrain", *[x for k, v in flags.items() for x in (f"--{k}", str(v))]]
    with open(out + ".log", "w") as log:
        code = subprocess.call(command, cwd=common.REPO, stdout=log, stderr=subprocess.STDOUT,
                               preexec_fn=None if core is None else lambda: os.sched_setaffinity(0, {core}))
    if code != 0:
        raise RuntimeError(f"ours failed (exit {code}), log {out}.log")
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    snapshots = []
    folder = os.path.join(out, "checkpoints")
    for name in sorted(os.listdir(folder), key=lambda n: int(n.split("-")[1])):  # step-N, with the clock at N
        with open(os.path.join(folder, name, "mlm_state.json")) as f:
            state = json.load(f)
        if state["step"] != metrics["global_step"]:
            snapshots.append({"step": state["step"], "train_seconds": round(state["elapsed"], 1),
                              "folder": os.path.join(folder, name)})
    snapshots.append({"step": metrics["global_step"], "train_seconds": metrics["elapsed_s"], "folder": out})
    return {"steps": metrics["global_step"], "train_tokens": metrics.get("train_tokens"),
            "train_seconds": metrics["elapsed_s"], "snapshots": snapshots, "final": out,
            "command": shlex.join(["python", *command[1:]])}


# ------------------------------------------------------------------------------------------------- main


def in_turn_or_together(jobs: dict, parallel: bool, what: str) -> dict:
    """Each job(core) one after the other (core None: every core), or together, job i pinned to the i-th core this
    process may use (so that `taskset -c 1` gives a lone side core 1 and leaves core 0 to other work)."""
    common.log(what + (": the sides together, a core each" if parallel else ": one side after the other"))
    if not parallel:
        return {name: job(None) for name, job in jobs.items()}
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < len(jobs):
        raise SystemExit(f"--parallel: {len(jobs)} sides need {len(jobs)} cores, this process may use {len(cores)}")
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(job, core) for core, (name, job) in zip(cores, jobs.items())}
        return {name: future.result() for name, future in futures.items()}


def earlier_seeds(stored, settings: dict) -> dict:
    """{seed: run} of an earlier JSON's fine-tuning of one backbone and task made with these settings (seed aside),
    so that --finetune_only --seeds 0,1,2 reruns only the seeds not measured yet (a run of one seed is seed 0)."""
    runs = stored.get("seeds", {}) if stored and "seeds" in stored else {"0": stored} if stored else {}
    same = {k: v for k, v in settings.items() if k != "seed"}
    return {int(seed): run for seed, run in runs.items()
            if run.get("status") == "ok" and {k: v for k, v in run["settings"].items() if k != "seed"} == same}


def finetune_both(name: str, backbone: str, data: str, settings: dict, scratch: str, seeds: list, earlier: dict,
                  core=None) -> dict:
    """SST-2 and CoNLL-2003 fine-tuning of one backbone, once per seed (pinned to `core` with one thread when given):
    {task: {"seeds": {seed: run}, "mean": the metric's mean over the seeds}}. earlier: {task: stored runs}."""
    metric = {"cls": "eval_accuracy", "ner": "eval_f1"}
    tuned = {}
    for task in ("cls", "ner"):
        done = earlier_seeds(earlier.get(task), settings[task])
        runs = {seed: done.get(seed) or finetune_quality.finetune_run(
                    task, f"{name}-seed{seed}", backbone, data, {**settings[task], "seed": seed}, scratch,
                    timeout=7200, threads=None if core is None else 1, core=core)
                for seed in seeds}
        scores = [run.get("metrics", {}).get(metric[task]) for run in runs.values()]
        tuned[task] = {"seeds": {str(seed): run for seed, run in runs.items()}, "metric": metric[task],
                       "per_seed": scores, "mean": None if None in scores else sum(scores) / len(scores)}
    return tuned


def plot(sides: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlm.core.runlog import save_figure

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, side in sides.items():
        points = [(s["train_seconds"] / 60, s["common_eval_mlm_loss"]) for s in side["snapshots"]]
        ax.plot(*zip(*points), marker="o", label=name)
    save_figure(fig, ax, "training time (minutes)", "masked-LM loss, WikiText-2 test, fixed 15% masks", path)


def pretrain_sides(args, command: str, budget_s: float, train: str, test: str, eval_blocks, sides_wanted: list,
                   scratch: str, finetune_settings: dict) -> tuple[dict, dict]:
    """(the result so far, {side: its run}): each side pretrained for the budget, every snapshot scored."""
    from mlm.pretrain.fixed_mask_eval import evaluate_folder

    recipe = recipe_settings(os.path.join(common.REPO, args.recipe))
    tokenizer, tokenizer_dir = common.wordpiece_tokenizer(train, VOCAB)
    result = {"command": command,
              "machine": {**common.machine_info(), "matmul_peak_gflops": round(common.matmul_peak_gflops(), 1)},
              "recipe": args.recipe, "budget_s": budget_s, "vocab_size": VOCAB, "corpus": train, "eval_text": test,
              "finetune_settings": finetune_settings, "parallel": args.parallel}
    jobs = {"stock": lambda core: run_stock(tokenizer_dir, train, recipe, budget_s, os.path.join(scratch, "stock"), core),
            "ours": lambda core: run_ours(tokenizer_dir, args.recipe, budget_s, os.path.join(scratch, "ours"), core)}
    jobs = {name: job for name, job in jobs.items() if name in sides_wanted}
    sides = in_turn_or_together(jobs, args.parallel, f"pretraining, {budget_s:.0f} s each")
    counts = collections.Counter(i for row in tokenized_lines(tokenizer, train, add_special_tokens=False) for i in row)
    for name, side in sides.items():
        for snapshot in side["snapshots"]:
            snapshot["common_eval_mlm_loss"] = round(evaluate_folder(snapshot["folder"], test,
                                                                     max_blocks=eval_blocks)["mlm_loss"], 4)
        side["rare_row_cosine"] = rare_row_cosine(side["final"], counts)
        common.log(f"{name}: {side['steps']} steps, common eval loss {side['snapshots'][-1]['common_eval_mlm_loss']}, "
                   f"rare rows' mean cosine {side['rare_row_cosine']}")
    return result, sides


def rare_row_cosine(folder: str, counts: collections.Counter, share: float = 0.25) -> float:
    """Mean pairwise cosine between the input-embedding rows of the rarest `share` of the vocabulary (by `counts`,
    the ids' counts in the training text; specials aside): ~0 for random rows; near 1 when the rows have drifted
    together (BERT's tied output projection under Adam moves every rare row the same way), which leaves fine-tuning
    fewer distinct tokens to tell apart."""
    import torch
    from transformers import AutoModelForMaskedLM

    from mlm.core.hf import load_tokenizer

    tokenizer = load_tokenizer(folder)
    special = set(tokenizer.all_special_ids)
    ids = sorted((i for i in range(len(tokenizer)) if i not in special), key=lambda i: (counts[i], i))
    rare = torch.tensor(ids[:int(len(ids) * share)])
    rows = AutoModelForMaskedLM.from_pretrained(folder).get_input_embeddings().weight.detach()[rare]
    unit = torch.nn.functional.normalize(rows, dim=1)
    n = len(rare)
    return round(((unit.sum(0).square().sum() - n) / (n * n - n)).item(), 4)


def saved_sides(path: str) -> tuple[dict, dict]:
    """(the result, {side: its run}) of an earlier run's JSON, for --finetune_only: its backbones must still be
    where it left them."""
    with open(path, encoding="utf-8") as f:
        result = json.load(f)
    sides = {name: {**run, "final": run["snapshots"][-1]["folder"], "train_tokens": result[name]["train_tokens"]}
             for name, run in result["details"].items()}
    for name, side in sides.items():
        if not os.path.isfile(os.path.join(side["final"], "config.json")):
            raise SystemExit(f"--finetune_only: {path}: the {name} backbone {side['final']} is gone")
    return result, sides


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="15m", help="training wall time per side: 90s, 15m, 1h")
    parser.add_argument("--recipe", default=os.path.join("recipes", "pretrain", "budget-15m.yaml"))
    parser.add_argument("--quick", action="store_true", help="a 40 s budget, small fine-tuning subsets")
    parser.add_argument("--parallel", action="store_true",
                        help="run the two sides at the same time, each pinned to its own core with one thread: on a "
                        "machine shared with other work both then see the same conditions (default: one after the "
                        "other, each with every core)")
    parser.add_argument("--eval_blocks", type=int, default=None, help="score only the first N test blocks")
    parser.add_argument("--sides", default="stock,ours", help="which sides run: stock,ours (default), ours or stock")
    parser.add_argument("--output", default=None, help="the JSON to write (default bench/results/time_to_quality"
                        "[_quick].json; the plot goes beside it)")
    parser.add_argument("--finetune_only", action="store_true",
                        help="redo only the downstream part of the run in --output (its backbones are still cached), "
                        "e.g. after a change of the fine-tuning settings; the pretraining figures stay")
    parser.add_argument("--seeds", default="0",
                        help="fine-tuning seeds per backbone and task (e.g. 0,1,2): the JSON's downstream scores are "
                        "their mean; with --finetune_only, seeds already in the JSON with the same settings are kept")
    parser.add_argument("--child-stock", dest="child_stock")
    args = parser.parse_args(argv)
    if args.child_stock:
        child_stock(args.child_stock)
        return 0

    mode = "quick" if args.quick else "full"
    budget_s = 40.0 if args.quick else parse_seconds(args.budget)
    eval_blocks = args.eval_blocks or (100 if args.quick else None)
    train, test = common.wikitext2_file("train"), common.wikitext2_file("test")
    data = common.data_dir()
    if not train or not os.path.isdir(os.path.join(data, "sst2")):
        print("WikiText-2 / SST-2 not found (set MLM_DATA_DIR)", file=sys.stderr)
        return 2
    sides_wanted = args.sides.split(",")
    if not sides_wanted or set(sides_wanted) - {"stock", "ours"}:
        parser.error(f"--sides: expected stock, ours or stock,ours; got {args.sides!r}")
    path = args.output or os.path.join(common.RESULTS_DIR,
                                       "time_to_quality_quick.json" if args.quick else "time_to_quality.json")
    command = "python bench/time_to_quality.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    scratch = common.scratch_dir("ttq-")
    if args.finetune_only:
        result, sides = saved_sides(path)
        result.update(finetune_command=command, finetune_settings=FINETUNE[mode])
    else:
        result, sides = pretrain_sides(args, command, budget_s, train, test, eval_blocks, sides_wanted, scratch,
                                       FINETUNE[mode])
    # Fine-tuning is step-based (its scores do not depend on the machine's speed): with --parallel, side by side.
    seeds = [int(x) for x in args.seeds.split(",")]
    tuned = in_turn_or_together({name: functools.partial(finetune_both, name, side["final"], data, FINETUNE[mode], scratch,
                                                         seeds, side.get("finetune", {}))
                                 for name, side in sides.items()}, args.parallel, "fine-tuning")
    result["finetune_seeds"] = seeds
    for name, side in sides.items():
        downstream = tuned[name]
        result[name] = {  # downstream: the mean over the fine-tuning seeds (each seed's score in details)
            "budget_s": result["budget_s"], "train_tokens": side["train_tokens"],
            "common_eval_mlm_loss": side["snapshots"][-1]["common_eval_mlm_loss"],
            "sst2_dev_accuracy": downstream["cls"]["mean"], "conll_dev_f1": downstream["ner"]["mean"],
        }
        result.setdefault("details", {})[name] = {"steps": side["steps"], "train_seconds": side["train_seconds"],
                                                  "command": side["command"], "snapshots": side["snapshots"],
                                                  "rare_row_cosine": side.get("rare_row_cosine"),
                                                  "finetune": downstream,
                                                  **{k: side[k] for k in ("device", "precision") if k in side}}
        common.write_json(path, result)
    n_rows = FINETUNE[mode]["cls"].get("max_train_samples")
    tfidf = finetune_quality.tfidf_baseline(data, n_rows)
    result["tfidf_sst2_dev_accuracy"] = tfidf["metrics"]["eval_accuracy"]
    result["machine"]["load_average_at_end"] = common.load_average()
    common.write_json(path, result)
    plot(sides, path.replace(".json", ".png"))
    for name in sides:
        print(name, json.dumps(result[name]))
    print("tfidf_sst2_dev_accuracy", result["tfidf_sst2_dev_accuracy"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
