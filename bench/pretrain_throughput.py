"""Pretraining throughput: mlm's path against the stock Hugging Face recipe, in one run, on WikiText-2.

    make bench                                           # every benchmark (bench/run_all.py)
    python bench/pretrain_throughput.py                  # this one: ~10-15 minutes on 2 quiet cores
    python bench/pretrain_throughput.py --quick          # smoke run (~3 minutes); writes *_quick.json
    python bench/pretrain_throughput.py --no-prep --no-table --variants hf_encoder   # only some parts

Compared, with the same model shape, init seed, batch, tokenizer and text, in float32:

* ours:  mlm.pretrain.packing.build_packed_dataset -> mlm.pretrain.masking.MaskingCollator -> mlm.pretrain.model.SparseMaskedLM over
         build_masked_lm(preset_config(...)) -> mlm.core.loop.train (the real loop: logging every step, no eval).
* stock: datasets.Dataset.from_text -> .map(tokenize) -> .map(group_texts) (run_mlm.py's recipe) ->
         BertForMaskedLM + DataCollatorForLanguageModeling(mlm_probability=0.15) -> transformers.Trainer.
* variants of ours that need only a flag: the model's own encoder forward (mlm's path before mlm/pretrain/encoder.py),
  no dropout, torch.compile.

How: every side trains in its own process and the processes take turns ONE STEP AT A TIME (common.
run_interleaved): step 1 of ours, step 1 of stock, step 1 of each variant, a matmul peak sample, step 2 ...
so that all sides see the same machine load (on a shared machine the load changes by the minute; paired
steps do not care). A step's time runs from the start of one forward pass to the start of the next (thin
wrappers around the loops record it, plus a breakdown into data / forward / backward / clip / optimizer /
other); the first --warmup steps are excluded. Preprocessing runs in subprocesses, alternating, so that
each side's peak RSS is its own. Then a torch.profiler breakdown of a few steps, and a table of our path
over presets x sequence lengths (interleaved the same way). bench/README.md describes every JSON field.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (bench/common.py; it also puts the repository on sys.path)
from common import StepClock, log, median  # noqa: E402

SEED = 42
VOCAB_SIZE = 16000
LEARNING_RATE = 5e-4
# The headline shape: 4 layers, hidden 256, 4 heads, feed-forward 1024 (mlm's "mini" preset).
SHAPE = dict(preset="mini", hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
VARIANTS = {
    # name: (what it changes, run_ours settings). Each needs only a flag or a wrapper around mlm's code.
    "hf_encoder": ("SparseMaskedLM(fast_encoder=False): the model's own encoder forward, every layer on every "
                   "position, F.dropout (the head still on the masked positions only); what FSDP / ZeRO-3 "
                   "launches run", dict(fast_encoder=False)),
    "no_attn_dropout": ("attention_probs_dropout_prob=0: SDPA can then take its fused (flash) CPU kernel; changes "
                        "the model's regularisation", dict(attention_probs_dropout_prob=0.0)),
    "no_dropout": ("hidden and attention dropout 0 (no random masks at all); changes the model's regularisation",
                   dict(attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)),
    "compile": ("TrainingConfig.torch_compile=True (inductor, through accelerate); compilation happens in the "
                "warm-up steps", dict(compile=True)),
    "no_dropout+compile": ("no dropout + torch_compile=True",
                           dict(compile=True, attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)),
}
QUICK_VARIANTS = ["hf_encoder"]
# Variants also measured at the default thread count (all of them run at 1 thread, see ONE_THREAD below).
DEFAULT_THREAD_VARIANTS = ("hf_encoder", "no_dropout", "no_dropout+compile")
# Every measurement is made at torch's default thread count (what a user gets) and, when that is more than 1,
# again at 1 thread: on a shared machine whose other jobs keep a core busy, every OpenMP parallel region of a
# 2-thread run waits for the thread that shares its core, which slows a training step 3x or more (measured),
# while 1 thread runs at full speed on the core it gets. Arms at 1 thread carry this suffix.
ONE_THREAD = "@1t"


# ================================================================================== preprocessing children


def child_prep_ours(train_file: str, tokenizer_dir: str, seq_len: int, out_dir: str) -> None:
    """Build the packed dataset into a fresh cache dir (mlm.pretrain.packing), timing only the build."""
    from mlm.pretrain.corpus import corpus_sources
    from mlm.pretrain.packing import build_packed_dataset
    from mlm.core.hf import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    rss_before = common.rss_mb()
    start = time.perf_counter()
    train, _ = corpus_sources(train_file=train_file, document_separator="line")
    blocks, _ = build_packed_dataset(train, None, tokenizer, seq_len, out_dir, validation_split_percentage=0)
    seconds = time.perf_counter() - start
    common.child_result({"seconds": round(seconds, 3), "rss_mb_before": round(rss_before, 1),
                         "blocks": len(blocks), "tokens": int(blocks.num_tokens)})


def child_prep_stock(train_file: str, tokenizer_dir: str, seq_len: int, out_dir: str) -> None:
    """run_mlm.py's preprocessing (line-by-line off): from_text -> map(tokenize) -> map(group_texts).

    HF_DATASETS_CACHE points at a fresh folder (set by the parent), so nothing is reused from earlier runs.
    The grouped dataset is then saved to out_dir for the training measurements (not timed).
    """
    from itertools import chain

    import datasets
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rss_before = common.rss_mb()
    start = time.perf_counter()
    raw = datasets.Dataset.from_text(train_file)

    def tokenize_function(examples):
        return tokenizer(examples["text"], return_special_tokens_mask=True)

    tokenized = raw.map(tokenize_function, batched=True, remove_columns=["text"], load_from_cache_file=False)

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples.keys()}
        total_length = len(concatenated[list(examples.keys())[0]])
        total_length = (total_length // seq_len) * seq_len
        return {k: [t[i: i + seq_len] for i in range(0, total_length, seq_len)] for k, t in concatenated.items()}

    grouped = tokenized.map(group_texts, batched=True, load_from_cache_file=False)
    seconds = time.perf_counter() - start
    peak = common.max_rss_mb()
    grouped.save_to_disk(out_dir)
    common.child_result({"seconds": round(seconds, 3), "rss_mb_before": round(rss_before, 1),
                         "peak_rss_mb": round(peak, 1), "blocks": len(grouped), "tokens": len(grouped) * seq_len})


def measure_preprocessing(train_file: str, tokenizer_dir: str, seq_len: int, repeats: int,
                          keep: str) -> tuple[dict, str, str]:
    """Both preprocessing recipes, each in its own subprocess, alternating; `repeats` times each (best kept).

    Both take the whole train file (ours with validation_split_percentage=0), so both make the same tokens.
    Returns (report, our packed cache dir, the stock grouped dataset dir); the dirs hold the outputs of the
    last repetition (used by the training measurements) and lie inside `keep`, which the caller removes.
    """
    script = os.path.abspath(__file__)
    runs = {"ours": [], "stock": []}
    dirs = {}
    for r in range(repeats):
        for side in (("ours", "stock") if r % 2 == 0 else ("stock", "ours")):
            out = tempfile.mkdtemp(prefix=f"prep-{side}-", dir=keep)
            env = {"HF_DATASETS_CACHE": tempfile.mkdtemp(prefix="hf-datasets-", dir=keep),
                   "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
            result = common.run_child([script, "--child", f"prep-{side}", train_file, tokenizer_dir, str(seq_len), out],
                                      env=env)
            log(f"preprocessing {side}: {result['seconds']:.1f}s, peak RSS {result['peak_rss_mb']:.0f} MB "
                f"(polled {result['peak_rss_mb_polled']:.0f} MB), {result['blocks']} blocks")
            runs[side].append(result)
            if side in dirs:
                shutil.rmtree(dirs[side], ignore_errors=True)
            dirs[side] = out
    summary = {}
    for side, results in runs.items():
        best = min(results, key=lambda x: x["seconds"])
        summary[side] = {
            "seconds": best["seconds"],
            "seconds_all": [x["seconds"] for x in results],
            "peak_rss_mb": max(x["peak_rss_mb"] for x in results),
            "peak_rss_mb_polled": max(x["peak_rss_mb_polled"] for x in results),
            "rss_mb_before": best["rss_mb_before"],
            "process_wall_seconds": best["wall_seconds"],
            "blocks": best["blocks"],
            "tokens": best["tokens"],
        }
    summary["speedup"] = summary["stock"]["seconds"] / summary["ours"]["seconds"]
    summary["peak_rss_ratio_stock_over_ours"] = summary["stock"]["peak_rss_mb"] / summary["ours"]["peak_rss_mb"]
    return summary, dirs["ours"], dirs["stock"]


# ================================================================================================ arms


def model_config(vocab_size: int, seq_len: int, preset: str = "mini", **overrides):
    """The BertConfig both sides use: preset_config(preset) (+ SHAPE for the headline preset)."""
    from mlm.pretrain.model import preset_config

    fields = {k: v for k, v in SHAPE.items() if k != "preset"} if preset == SHAPE["preset"] else {}
    fields.update(overrides)
    return preset_config(preset, vocab_size, max(512, seq_len), **fields)


def _reset_accelerate() -> None:
    """accelerate keeps process-wide state (the dynamo plugin is read only once): reset it between runs made
    in one process (the profiles)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    gc.collect()


PROFILE_WARMUP, PROFILE_STEPS = 2, 2


class _StepProfiler:
    """torch.profiler over whole steps PROFILE_WARMUP+1 .. PROFILE_WARMUP+PROFILE_STEPS (from the start of one
    forward pass to the start of the forward pass after the last one)."""

    def __init__(self, enabled: bool):
        self.enabled, self.calls, self.prof = enabled, 0, None

    def step(self) -> None:
        if not self.enabled:
            return
        from torch.profiler import ProfilerActivity, profile

        self.calls += 1
        if self.calls == PROFILE_WARMUP + 1:
            self.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
            self.prof.start()
        elif self.calls == PROFILE_WARMUP + PROFILE_STEPS + 1:
            self.prof.stop()


def time_trainer_steps(trainer, clock: StepClock, before_step, forward_scope=contextlib.nullcontext) -> None:
    """Time a Trainer's phases on `clock`: forward (its compute_loss), data, backward and clip.

    `before_step(inputs)` runs first on every micro-batch (e.g. to start the step's clock); the forward runs
    inside `forward_scope()`.
    """
    original_loss = trainer.compute_loss

    def compute_loss(m, inputs, *a, **kw):
        before_step(inputs)
        start = time.perf_counter()
        try:
            with forward_scope():
                return original_loss(m, inputs, *a, **kw)
        finally:
            clock.add("forward", time.perf_counter() - start)

    trainer.compute_loss = compute_loss
    trainer.get_batch_samples = _scoped(clock, trainer.get_batch_samples, "data")
    trainer.accelerator.backward = _scoped(clock, trainer.accelerator.backward, "backward")
    trainer.accelerator.clip_grad_norm_ = _scoped(clock, trainer.accelerator.clip_grad_norm_, "clip")


def _scoped(clock: StepClock, fn, name: str):
    """fn wrapped to add its wall time to phase `name` and to label it for the profiler (record_function
    costs about a microsecond when no profiler runs)."""
    import torch

    def wrapped(*args, **kwargs):
        start = time.perf_counter()
        try:
            with torch.profiler.record_function(f"bench:{name}"):
                return fn(*args, **kwargs)
        finally:
            clock.add(name, time.perf_counter() - start)

    return wrapped


@contextlib.contextmanager
def _optimizer_clock(clock: StepClock):
    """Times every optimizer.step() through torch's global optimizer hooks."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    started = []
    pre = register_optimizer_step_pre_hook(lambda opt, args, kwargs: started.append(time.perf_counter()))
    post = register_optimizer_step_post_hook(
        lambda opt, args, kwargs: clock.add("optimizer", time.perf_counter() - started.pop()))
    try:
        yield
    finally:
        pre.remove()
        post.remove()


def run_ours(blocks, tokenizer, seq_len: int, batch_size: int, steps: int, warmup: int, preset: str = "mini",
             fast_encoder: bool = True, compile: bool = False, profile: bool = False, gate=None,
             **model_overrides) -> dict:
    """mlm's real path: MaskingCollator + SparseMaskedLM(build_masked_lm(...)) + mlm.core.loop.train.

    Runs warmup + steps + 1 optimizer steps and measures `steps` of them. The wrappers: the loss function
    marks each step, the loop's batch stream, accelerator.backward / clip_grad_norm_ and the optimizer are
    timed.
    """
    import torch

    import mlm.core.loop
    from mlm.pretrain.masking import MaskingCollator
    from mlm.core.config import TrainingConfig
    from mlm.core.accel import make_accelerator
    from mlm.core.loop import LoopParts, train
    from mlm.pretrain.model import SparseMaskedLM, build_masked_lm
    from mlm.pretrain.run import mlm_loss

    _reset_accelerate()
    out = tempfile.mkdtemp(prefix="ours-", dir=common.cache_dir())
    total = PROFILE_WARMUP + PROFILE_STEPS + 1 if profile else warmup + steps + 1
    cfg = TrainingConfig(
        output_dir=out, overwrite_output_dir=True, seed=SEED, per_device_train_batch_size=batch_size,
        learning_rate=LEARNING_RATE, max_steps=total, logging_steps=1, save_steps=10**9, disable_tqdm=True,
        mixed_precision="no", torch_compile=compile,
    )
    accelerator = make_accelerator(cfg)
    logging.getLogger("mlm").setLevel(logging.WARNING)
    overrides = {k: v for k, v in SHAPE.items() if k != "preset"} if preset == SHAPE["preset"] else {}
    overrides.update(model_overrides)
    torch.manual_seed(SEED)
    hf_model = build_masked_lm(None, preset, len(tokenizer), seq_len, **overrides)
    model = SparseMaskedLM(hf_model, fast_encoder=fast_encoder)
    collate = MaskingCollator(tokenizer, mlm_probability=0.15, seed=SEED)

    clock, prof = StepClock(gate), _StepProfiler(profile)

    def loss_fn(m, batch):
        prof.step()
        clock.mark_step(int(batch["attention_mask"].sum()))
        start = time.perf_counter()
        try:
            with torch.profiler.record_function("bench:forward"):
                return mlm_loss(m, batch)
        finally:
            clock.add("forward", time.perf_counter() - start)

    accelerator.backward = _scoped(clock, accelerator.backward, "backward")
    accelerator.clip_grad_norm_ = _scoped(clock, accelerator.clip_grad_norm_, "clip")
    original_batches = mlm.core.loop.micro_batches

    def timed_batches(*args, **kwargs):  # each fetch: dataset indexing + collate
        stream = original_batches(*args, **kwargs)
        fetch = _scoped(clock, lambda: next(stream), "data")
        while True:
            yield fetch()

    mlm.core.loop.micro_batches = timed_batches
    try:
        with _optimizer_clock(clock):
            metrics = train(cfg, accelerator, model, blocks, LoopParts(collate, loss_fn))
    finally:
        mlm.core.loop.micro_batches = original_batches
        shutil.rmtree(out, ignore_errors=True)
    if profile:
        return {"profile": summarize_profile(prof.prof, len(tokenizer), PROFILE_STEPS)}
    result = clock.summary(warmup)
    # (Not metrics["train_tokens_per_second"]: the loop times each step from its start, which here includes
    # waiting for this process's turn while the other sides run.)
    result["final_loss"] = metrics["train_loss"]
    result["attn_implementation"] = hf_model.config._attn_implementation
    return result


def run_stock(dataset, tokenizer, seq_len: int, batch_size: int, steps: int, warmup: int, profile: bool = False,
              gate=None) -> dict:
    """BertForMaskedLM + DataCollatorForLanguageModeling + transformers.Trainer with stock defaults.

    Timed by the same kind of wrappers as ours: compute_loss marks each step, get_batch_samples (data),
    accelerator.backward / clip_grad_norm_ and the optimizer hooks.
    """
    import torch
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback
    from transformers.utils import logging as hf_logging

    _reset_accelerate()
    hf_logging.set_verbosity_error()
    out = tempfile.mkdtemp(prefix="stock-", dir=common.cache_dir())
    total = PROFILE_WARMUP + PROFILE_STEPS + 1 if profile else warmup + steps + 1
    torch.manual_seed(SEED)
    model = BertForMaskedLM(model_config(len(tokenizer), seq_len))
    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=batch_size, max_steps=total, learning_rate=LEARNING_RATE,
        weight_decay=0.01, eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
        seed=SEED, bf16=False, fp16=False,
    )
    clock, prof = StepClock(gate), _StepProfiler(profile)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.remove_callback(PrinterCallback)  # only its end-of-training print; no effect on the steps

    def before_step(inputs):
        prof.step()
        mask = inputs.get("attention_mask")
        clock.mark_step(int(mask.sum()) if mask is not None else inputs["input_ids"].numel())

    time_trainer_steps(trainer, clock, before_step, lambda: torch.profiler.record_function("bench:forward"))
    try:
        with _optimizer_clock(clock):
            output = trainer.train()
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if profile:
        return {"profile": summarize_profile(prof.prof, len(tokenizer), PROFILE_STEPS)}
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    fused = any(g.get("fused") for g in inner.param_groups)
    result = clock.summary(warmup)
    result["final_loss"] = output.training_loss
    result["attn_implementation"] = model.config._attn_implementation
    result["optimizer"] = f"{type(inner).__name__}(fused={bool(fused)}) from TrainingArguments.optim={args.optim.value}"
    return result


def child_arm(spec_path: str) -> None:
    """One side of an interleaved session, in its own process: load the data, train, print the result."""
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    import torch

    from mlm.core.hf import load_tokenizer

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    settings = dict(spec.get("settings", {}))
    gate = common.Gate.from_env()
    tokenizer = load_tokenizer(spec["tokenizer_dir"])
    T, B = spec["seq_len"], spec["batch_size"]
    if spec["kind"] == "stock":
        from datasets import load_from_disk

        result = run_stock(load_from_disk(spec["stock_dir"]), tokenizer, T, B, spec["steps"], spec["warmup"], gate=gate)
    else:
        blocks = packed_blocks(spec["train_file"], tokenizer, T, spec["ours_cache"])
        result = run_ours(blocks, tokenizer, T, B, spec["steps"], spec["warmup"], preset=spec.get("preset", "mini"),
                          gate=gate, **settings)
    result["threads"] = torch.get_num_threads()
    common.child_result(result)
    if gate is not None:
        gate.finish()


def packed_blocks(train_file: str, tokenizer, seq_len: int, cache: str):
    from mlm.pretrain.corpus import corpus_sources
    from mlm.pretrain.packing import build_packed_dataset

    corpus, _ = corpus_sources(train_file=train_file, document_separator="line")
    return build_packed_dataset(corpus, None, tokenizer, seq_len, cache, validation_split_percentage=0)[0]


# ============================================================================================== profile

_ATTENTION_OPS = ("aten::_softmax", "aten::_softmax_backward_data", "aten::_safe_softmax", "aten::isneginf",
                  "aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward", "aten::masked_fill",
                  "aten::masked_fill_", "aten::where")
_LOSS_OPS = ("aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss_forward",
             "aten::nll_loss_backward", "aten::argmax", "aten::nll_loss2d_forward")
_EMBEDDING_OPS = ("aten::embedding_dense_backward", "aten::embedding", "aten::index_select", "aten::index_add_",
                  "aten::embedding_backward", "aten::gather", "aten::gather_backward", "aten::scatter_add_",
                  "aten::index", "aten::index_put_", "aten::_index_put_impl_")


def _category(name: str, shapes, vocab_size: int) -> str:
    if name in ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear", "aten::baddbmm"):
        dims = {d for s in (shapes or []) for d in (s or [])}
        return "matmul: vocab projection (head decoder)" if vocab_size in dims else "matmul: encoder linear layers"
    if name == "aten::bmm":
        return "attention: bmm (QK^T, PV)"
    if name in _ATTENTION_OPS or "scaled_dot_product" in name:
        return "attention: softmax/mask/fused kernel"
    # F.dropout's ops, and the random draws of mlm.pretrain.encoder.dropout (its compare and where count as elementwise)
    if name in ("aten::bernoulli_", "aten::native_dropout", "aten::native_dropout_backward", "aten::bernoulli",
                "aten::random_", "aten::randint"):
        return "dropout (random masks)"
    if name in ("aten::gelu", "aten::gelu_backward"):
        return "gelu"
    if name in ("aten::native_layer_norm", "aten::native_layer_norm_backward"):
        return "layer norm"
    if name in _LOSS_OPS:
        return "loss: log_softmax/nll/argmax"
    if name in _EMBEDDING_OPS:
        return "embedding / gather / scatter"
    if name in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::fill_", "aten::zero_", "aten::zeros",
                "aten::empty", "aten::empty_strided", "aten::to", "aten::_to_copy", "aten::cat", "aten::stack"):
        return "copies / allocation"
    if name.startswith("aten::"):
        return "elementwise / reductions"
    return "python / framework"


def summarize_profile(prof, vocab_size: int, steps: int) -> dict:
    """Self CPU time per step by (phase, category), and the top operators (with input shapes)."""
    events = prof.events()
    phase_names = {"bench:data": "data", "bench:forward": "forward", "bench:backward": "backward",
                   "bench:clip": "clip"}
    by_phase_cat: dict = {}
    by_cat: dict = {}
    by_phase: dict = {}
    total = 0.0
    for evt in events:
        phase, parent = "other", evt
        while parent is not None:
            if parent.name in phase_names:
                phase = phase_names[parent.name]
                break
            if parent.name.startswith("Optimizer.step") or parent.name.startswith("Optimizer.zero_grad"):
                phase = "optimizer"
                break
            parent = parent.cpu_parent
        us = evt.self_cpu_time_total
        if us <= 0:
            continue
        cat = "optimizer (all ops)" if phase == "optimizer" else _category(evt.name, evt.input_shapes, vocab_size)
        key = f"{phase} | {cat}"
        by_phase_cat[key] = by_phase_cat.get(key, 0.0) + us
        by_cat[cat] = by_cat.get(cat, 0.0) + us
        by_phase[phase] = by_phase.get(phase, 0.0) + us
        total += us

    def per_step_ms(d):
        return {k: round(v / 1000 / steps, 2) for k, v in sorted(d.items(), key=lambda kv: -kv[1])}

    top = []
    for avg in sorted(prof.key_averages(group_by_input_shape=True), key=lambda a: -a.self_cpu_time_total)[:20]:
        top.append({"op": avg.key, "input_shapes": str(avg.input_shapes)[:160], "calls_per_step": avg.count / steps,
                    "self_ms_per_step": round(avg.self_cpu_time_total / 1000 / steps, 2)})
    return {
        "steps_profiled": steps,
        "self_cpu_ms_per_step_total": round(total / 1000 / steps, 1),
        "by_phase_ms": per_step_ms(by_phase),
        "by_category_ms": per_step_ms(by_cat),
        "by_phase_and_category_ms": per_step_ms(by_phase_cat),
        "top_ops": top,
    }


# ============================================================================================ sessions


class PeakSampler:
    """float32 matmul peak per thread count, sampled before and between measurements. The best sample is the
    peak used for MFU; the samples taken during a session show how busy the machine was meanwhile."""

    def __init__(self, thread_counts):
        self.samples: dict[int, list[float]] = {t: [] for t in thread_counts}

    def sample(self, trials: int = 3) -> dict:
        import torch

        before = torch.get_num_threads()
        try:
            for threads, values in self.samples.items():
                torch.set_num_threads(threads)
                values.append(common.matmul_peak_gflops(trials=trials))
        finally:
            torch.set_num_threads(before)
        return {t: v[-1] for t, v in self.samples.items()}

    def mark(self) -> dict:
        return {t: len(v) for t, v in self.samples.items()}

    def since(self, mark: dict) -> dict:
        return {t: v[mark[t]:] for t, v in self.samples.items()}

    def best(self, threads: int) -> float:
        return max(self.samples[threads])


def interleaved_session(name: str, specs: dict, scratch: str, peaks: PeakSampler) -> tuple[dict, dict]:
    """Run the arms in `specs` ({arm: spec}) step by step in turn; peak samples after every cycle.

    Returns ({arm: result}, {threads: the peak samples taken during the session})."""
    script = os.path.abspath(__file__)
    jobs = {}
    for arm, spec in specs.items():
        path = os.path.join(scratch, f"spec-{name}-{arm.replace('/', '_')}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        jobs[arm] = [script, "--child", "arm", path]
    first = peaks.mark()
    cycles = max(s["warmup"] + s["steps"] + 1 for s in specs.values())

    def between(cycle):
        now = peaks.sample(trials=1)
        if cycle % 5 == 0 or cycle == cycles - 1:
            load = common.load_average()
            shown = ", ".join(f"{v:.0f} GFLOP/s at {t} thread(s)" for t, v in now.items())
            log(f"  {name}: step {cycle}/{cycles} of every arm done (matmul peak now {shown}; "
                f"load {load[0] if load else '?'})")

    results = common.run_interleaved(jobs, log_dir=scratch, between_cycles=between)
    return results, peaks.since(first)


def arm_summary(res: dict, flops: float, peak_best: float, peak_session: float) -> dict:
    keep = ("tokens_per_second", "tokens_per_second_median_step", "tokens_per_second_best_step", "step_ms_median",
            "step_ms_min", "step_ms_max", "cpu_ms_median", "measured_steps", "warmup_steps", "phase_ms_mean",
            "step_ms_all", "cpu_ms_all", "warmup_step_ms", "attn_implementation", "final_loss",
            "optimizer", "threads")
    out = {k: res[k] for k in keep if k in res}
    out.update({
        "flops_per_token": flops,
        "achieved_gflops": res["tokens_per_second"] * flops / 1e9,
        "mfu": res["tokens_per_second"] * flops / (peak_best * 1e9),
        "mfu_vs_session_peak": res["tokens_per_second"] * flops / (peak_session * 1e9),
        "mfu_best_step": res["tokens_per_second_best_step"] * flops / (peak_best * 1e9),
    })
    return out


def paired_speedup(a: dict, b: dict) -> dict:
    """a over b: the median over paired steps (step i of each ran back to back) and the plain ratio."""
    pairs = [y / x for x, y in zip(a["step_ms_all"], b["step_ms_all"])]
    return {
        "median_of_paired_steps": median(pairs),
        "ratio_of_tokens_per_second": a["tokens_per_second"] / b["tokens_per_second"],
        "ratio_of_best_steps": a["tokens_per_second_best_step"] / b["tokens_per_second_best_step"],
        # CPU time per step (all threads): the work, without the time spent waiting for a core.
        "ratio_of_cpu_time": b["cpu_ms_median"] / a["cpu_ms_median"],
        "paired_steps": [round(p, 3) for p in pairs],
    }


def headline_specs(args, tokenizer_dir: str, train_file: str, ours_cache: str, stock_dir: str) -> dict:
    """ours, stock and the variants at the default thread count and (unless it is 1) at 1 thread."""
    base = {"tokenizer_dir": tokenizer_dir, "train_file": train_file, "ours_cache": ours_cache, "stock_dir": stock_dir,
            "seq_len": args.seq_len, "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps}
    specs = {}
    for threads in args.thread_counts:
        suffix = ONE_THREAD if threads == 1 and args.default_threads != 1 else ""
        specs["ours" + suffix] = {**base, "kind": "ours", "threads": threads}
        if not args.no_stock:
            specs["stock" + suffix] = {**base, "kind": "stock", "threads": threads}
        for v in args.variants:
            if suffix or v in DEFAULT_THREAD_VARIANTS or len(args.thread_counts) == 1:
                specs[v + suffix] = {**base, "kind": "ours", "threads": threads, "settings": VARIANTS[v][1]}
    return specs


def table_specs(args, tokenizer_dir: str, train_file: str) -> dict:
    """Our default path over presets x lengths, batch = tokens_per_batch / length (the same work per step),
    at --table-threads."""
    presets = ["mini"] if args.quick else ["mini", "small"]
    lengths = [128, 256] if args.quick else [128, 256, 512]
    specs = {}
    for preset in presets:
        for length in lengths:
            specs[f"{preset}/T={length}"] = {
                "kind": "ours", "preset": preset, "seq_len": length,
                "batch_size": max(1, args.table_tokens_per_batch // length), "warmup": 1, "steps": args.table_steps,
                "tokenizer_dir": tokenizer_dir, "train_file": train_file,
                "ours_cache": os.path.join(common.cache_dir(), "packed"), "threads": args.table_threads,
            }
    return specs


def measure_profiles(args, tokenizer, blocks, stock_data) -> dict:
    """In this process, one after the other, at --profile-threads (nothing to interleave: the profile is a
    breakdown of one step, not a comparison of speeds)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(args.profile_threads)
    try:
        profiles = _profiles(args, tokenizer, blocks, stock_data)
        for prof in profiles.values():
            prof["threads"] = args.profile_threads
        return profiles
    finally:
        torch.set_num_threads(before)


def _profiles(args, tokenizer, blocks, stock_data) -> dict:
    profiles = {}
    T, B = args.seq_len, args.batch_size
    log(f"profile: torch.profiler over {PROFILE_STEPS} steps of ours")
    profiles["ours"] = run_ours(blocks, tokenizer, T, B, 0, 0, profile=True)["profile"]
    if args.quick:
        return profiles
    if "hf_encoder" in args.variants:
        log("profile: ours with the model's own encoder forward")
        profiles["ours+hf_encoder"] = run_ours(blocks, tokenizer, T, B, 0, 0, fast_encoder=False,
                                                    profile=True)["profile"]
    if stock_data is not None:
        log("profile: stock")
        profiles["stock"] = run_stock(stock_data, tokenizer, T, B, 0, 0, profile=True)["profile"]
    return profiles


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 warm-up + 2 measured steps, variant hf_encoder only, profile of ours only, "
                        "table of mini at 128/256; writes pretrain_throughput_quick.json")
    p.add_argument("--steps", type=int, default=None, help="measured steps per side (default 8; quick 2)")
    p.add_argument("--warmup", type=int, default=None,
                   help="warm-up steps per side, excluded (default 3, enough for torch.compile; quick 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--threads", type=int, default=None,
                   help="the default thread count of every run (default: torch's, the number of cores)")
    p.add_argument("--no-one-thread", action="store_true",
                   help="do not measure again at 1 thread (by default ours, stock and every variant are also "
                        "measured at 1 thread when the default is more; see ONE_THREAD in the source)")
    p.add_argument("--table-threads", type=int, default=1,
                   help="threads of the table runs (default 1: reproducible on a shared machine)")
    p.add_argument("--profile-threads", type=int, default=1, help="threads of the profiled runs (default 1)")
    p.add_argument("--variants", default=None,
                   help=f"comma-separated variants of ours, or 'none' (default: all of {', '.join(VARIANTS)}; "
                        f"quick: {', '.join(QUICK_VARIANTS)})")
    p.add_argument("--no-stock", action="store_true", help="skip the stock Hugging Face side")
    p.add_argument("--no-prep", action="store_true",
                   help="skip the preprocessing measurement; reuse (or make once) cached training data")
    p.add_argument("--prep-repeats", type=int, default=1, help="preprocessing runs per side, best kept (default 1)")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler breakdowns")
    p.add_argument("--no-table", action="store_true", help="skip the presets x sequence lengths table")
    p.add_argument("--table-steps", type=int, default=None, help="measured steps per table entry (default 3; quick 1)")
    p.add_argument("--table-tokens-per-batch", type=int, default=4096,
                   help="table entries use batch = this / sequence length (default 4096 = 32 x 128)")
    p.add_argument("--output", default=None,
                   help="JSON path (default bench/results/pretrain_throughput.json; _quick.json with --quick)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # subprocess entry points
    args = p.parse_args(argv)
    q = args.quick
    args.steps = args.steps or (2 if q else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.table_steps = args.table_steps or (1 if q else 3)
    if args.variants is None:
        args.variants = list(QUICK_VARIANTS) if q else list(VARIANTS)
    elif args.variants.strip() in ("", "none"):
        args.variants = []
    else:
        args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in args.variants if v not in VARIANTS]
        if unknown:
            p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if any(VARIANTS[v][1].get("compile") for v in args.variants) and args.warmup < 2:
        p.error("--warmup must be >= 2 with a torch.compile variant (compilation happens in the first steps)")
    name = "pretrain_throughput_quick.json" if q else "pretrain_throughput.json"
    args.output = args.output or os.path.join(common.RESULTS_DIR, name)
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        kind, rest = args.child[0], args.child[1:]
        if kind == "arm":
            child_arm(rest[0])
        else:
            {"prep-ours": child_prep_ours, "prep-stock": child_prep_stock}[kind](rest[0], rest[1], int(rest[2]), rest[3])
        return 0

    train_file = common.wikitext2_file("train")
    if train_file is None:
        print("pretrain_throughput: SKIPPED: WikiText-2 not found at "
              f"{os.path.join(common.data_dir(), 'wikitext-2-raw', 'wiki.train.raw')} "
              "(set MLM_DATA_DIR to the folder that holds wikitext-2-raw/)", flush=True)
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch

    from mlm.pretrain.model import train_flops_per_token

    if args.threads:
        torch.set_num_threads(args.threads)
    args.default_threads = torch.get_num_threads()
    args.thread_counts = [args.default_threads] + ([1] if args.default_threads > 1 and not args.no_one_thread else [])
    wall_start = time.perf_counter()
    machine = common.machine_info()
    log(f"machine: {machine['cpu_model']}, {machine['cpus_available']} CPUs, torch {machine['torch_version']}, "
        f"{machine['torch_num_threads']} threads, load average {machine['load_average_at_start']}")
    tokenizer, tokenizer_dir = common.wordpiece_tokenizer(train_file, VOCAB_SIZE)
    log(f"tokenizer: WordPiece, {len(tokenizer)} tokens ({tokenizer_dir})")

    T, B = args.seq_len, args.batch_size
    config = model_config(len(tokenizer), T)
    k_slots = math.ceil(0.15 * T - 1e-9)  # MaskingCollator's label slots: the head runs on K of T positions
    flops = {"ours": train_flops_per_token(config, T, 0.15), "stock": train_flops_per_token(config, T, 1.0)}
    # what SparseMaskedLM computes: head and last layer on K of T positions
    flops_ours_performed = train_flops_per_token(config, T, k_slots / T, last_layer_fraction=k_slots / T)
    peaks = PeakSampler(sorted({*args.thread_counts, args.table_threads, args.profile_threads}, reverse=True))
    first_peaks = peaks.sample()
    log("fp32 matmul peak (2048^3, best of 3): " + ", ".join(f"{v:.1f} GFLOP/s at {t} thread(s)"
                                                              for t, v in first_peaks.items()))

    scratch = common.scratch_dir("run-")
    try:
        # ------------------------------------------------------------ preprocessing, in subprocesses
        if args.no_prep:
            prep = None
            ours_cache = os.path.join(common.cache_dir(), "packed")
            stock_dir = os.path.join(common.cache_dir(), f"stock-grouped-{os.path.basename(tokenizer_dir)}-{T}")
            if not args.no_stock and not os.path.isdir(stock_dir):
                log("preparing the stock dataset once (cached, not measured)")
                common.run_child([os.path.abspath(__file__), "--child", "prep-stock", train_file, tokenizer_dir,
                                  str(T), stock_dir], env={"HF_DATASETS_CACHE": os.path.join(scratch, "hf")})
        else:
            log("preprocessing: ours (mlm.pretrain.packing) and stock (datasets map + group_texts), each in a subprocess")
            prep, ours_cache, stock_dir = measure_preprocessing(train_file, tokenizer_dir, T, args.prep_repeats,
                                                                scratch)
        blocks = packed_blocks(train_file, tokenizer, T, ours_cache)  # made already: a cache hit

        # ------------------------------------------------------------ headline: interleaved steps
        specs = headline_specs(args, tokenizer_dir, train_file, ours_cache, stock_dir)
        log(f"throughput: {', '.join(specs)} take turns one step at a time ({args.warmup} warm-up + {args.steps} "
            f"measured steps each)")
        raw, session_peaks = interleaved_session("headline", specs, scratch, peaks)

        # ------------------------------------------------------------ profiles
        stock_data = None
        if not args.no_stock and not args.no_profile and not args.quick:
            from datasets import load_from_disk

            stock_data = load_from_disk(stock_dir)
        profiles = {} if args.no_profile else measure_profiles(args, tokenizer, blocks, stock_data)

        # ------------------------------------------------------------ table
        table_raw, table_peaks = {}, {}
        if not args.no_table:
            tspecs = table_specs(args, tokenizer_dir, train_file)
            for spec in tspecs.values():  # pack each length once, here, not in parallel in the children
                packed_blocks(train_file, tokenizer, spec["seq_len"], spec["ours_cache"])
            log(f"table: {', '.join(tspecs)} take turns one step at a time (1 warm-up + {args.table_steps} steps, "
                f"{args.table_threads} thread(s))")
            table_raw, table_peaks = interleaved_session("table", tspecs, scratch, peaks)

        shapes = {f"{m}x{k}x{n}": round(common.matmul_gflops(m, k, n), 1) for m, k, n in [
            (B * T, config.hidden_size, config.intermediate_size), (B * T, config.intermediate_size, config.hidden_size),
            (B * T, config.hidden_size, config.hidden_size), (B * k_slots, config.hidden_size, len(tokenizer)),
            (B * T, config.hidden_size, len(tokenizer))]}
        peaks.sample()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    # ---------------------------------------------------------------- summaries
    errors = {arm: res["error"] for arm, res in {**raw, **table_raw}.items() if "error" in res}
    for arm, message in errors.items():
        log(f"{arm} FAILED: {message}")
    if any(arm.split("@")[0] in ("ours", "stock") for arm in errors):
        raise SystemExit("pretrain_throughput: an ours or stock run failed (see above)")

    def summary(arm: str, spec: dict, flops_: float, session: dict) -> dict:
        t = spec["threads"]
        return arm_summary(raw_all[arm], flops_, peaks.best(t), median(session.get(t) or []) or peaks.best(t))

    raw_all = {**raw, **table_raw}
    results: dict = {}
    for suffix, key in (("", None), (ONE_THREAD, "one_thread")):
        if "ours" + suffix not in specs:
            continue
        group = {"ours": summary("ours" + suffix, specs["ours" + suffix], flops["ours"], session_peaks)}
        group["ours"]["flops_per_token_performed"] = flops_ours_performed
        group["ours"]["mfu_performed"] = group["ours"]["mfu"] * flops_ours_performed / flops["ours"]
        if "stock" + suffix in specs:
            st = summary("stock" + suffix, specs["stock" + suffix], flops["stock"], session_peaks)
            st["mfu_performed"] = st["mfu"]  # its head runs on every position: f = 1 is what it computes
            st["mfu_useful_flops"] = st["mfu"] * flops["ours"] / flops["stock"]  # counted like ours, f = 0.15
            group["stock"] = st
            sp = paired_speedup(group["ours"], st)
            group["speedup"] = {"ours_over_stock": sp["median_of_paired_steps"], **sp, "target": 3.0}
        if key is None:
            results.update(group)
        else:
            results[key] = group
    results["variants"] = {}
    for arm, spec in specs.items():
        base = arm[: -len(ONE_THREAD)] if arm.endswith(ONE_THREAD) else arm
        if base not in VARIANTS or arm in errors:
            continue
        suffix = arm[len(base):]
        vs = summary(arm, spec, flops["ours"], session_peaks)
        vs["what"] = VARIANTS[base][0]
        vs["speedup_over_ours"] = paired_speedup(vs, raw_all["ours" + suffix])
        if "stock" + suffix in raw_all:
            vs["speedup_over_stock"] = paired_speedup(vs, raw_all["stock" + suffix])
        results["variants"][arm] = vs
    table = []
    for name, res in ((n, r) for n, r in table_raw.items() if n not in errors):
        spec = table_specs(args, tokenizer_dir, train_file)[name]
        cfg_t = model_config(len(tokenizer), spec["seq_len"], spec["preset"])
        f = train_flops_per_token(cfg_t, spec["seq_len"], 0.15)
        table.append({
            "preset": spec["preset"], "layers": cfg_t.num_hidden_layers, "hidden": cfg_t.hidden_size,
            "heads": cfg_t.num_attention_heads, "seq_len": spec["seq_len"], "batch_size": spec["batch_size"],
            **arm_summary(res, f, peaks.best(spec["threads"]),
                          median(table_peaks.get(spec["threads"]) or []) or peaks.best(spec["threads"])),
        })

    report = {
        "benchmark": "pretrain_throughput",
        "command": " ".join(["python", "bench/pretrain_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {**machine, "load_average_at_end": common.load_average()},
        "settings": {
            "data": train_file, "vocab_size": len(tokenizer), "tokenizer_dir": tokenizer_dir,
            "model": {"layers": config.num_hidden_layers, "hidden": config.hidden_size,
                      "heads": config.num_attention_heads, "intermediate": config.intermediate_size,
                      "hidden_dropout": config.hidden_dropout_prob,
                      "attention_dropout": config.attention_probs_dropout_prob},
            "seq_len": T, "batch_size": B, "tokens_per_step": B * T, "precision": "float32",
            "learning_rate": LEARNING_RATE, "seed": SEED, "mlm_probability": 0.15,
            "warmup_steps": args.warmup, "measured_steps": args.steps, "variants": args.variants,
            "quick": args.quick, "threads": args.default_threads, "thread_counts": args.thread_counts,
            "table_threads": args.table_threads, "profile_threads": args.profile_threads,
            "timing": "every side in its own process; the processes take turns one step at a time; a step runs "
                      "from the start of one forward pass to the start of the next; the first warmup_steps are "
                      "excluded; tokens_per_second = tokens / sum of the measured steps' times",
        },
        "matmul_peak_gflops": round(peaks.best(args.default_threads), 2),
        "matmul_peak_gflops_by_threads": {t: round(peaks.best(t), 2) for t in peaks.samples},
        "matmul_peak_session_median_gflops": {t: round(median(v), 2) for t, v in session_peaks.items() if v},
        "matmul_peak_samples_gflops": {t: [round(x, 1) for x in v] for t, v in peaks.samples.items()},
        "matmul_model_shapes_gflops": shapes,
        "flops_per_token": {"ours_useful_f0.15": flops["ours"], "ours_performed_fK/T_last_layer_K/T": flops_ours_performed,
                            "stock_performed_f1": flops["stock"], "mask_slots_K": k_slots},
        "preprocessing": prep,
        **results,
        "errors": errors,
        "mfu_target": 0.55,
        "speedup_target": 3.0,
        "profile": profiles,
        "table": table,
        "total_wall_seconds": round(time.perf_counter() - wall_start, 1),
    }
    common.write_json(args.output, report)
    if table:
        try:
            plot_table(table, os.path.splitext(args.output)[0] + ".png")
        except Exception as e:  # noqa: BLE001  (a plot must never fail the benchmark)
            log(f"plot skipped: {e}")
    print_summary(report)
    log(f"wrote {args.output}")
    return 0


def plot_table(table: list[dict], path: str) -> None:
    """Tokens/s and MFU per (preset, sequence length), one line per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
    lengths = sorted({r["seq_len"] for r in table})
    for preset in dict.fromkeys(r["preset"] for r in table):
        rows = [r for r in table if r["preset"] == preset]
        label = f"{preset} ({rows[0]['layers']}x{rows[0]['hidden']})"
        axes[0].plot([r["seq_len"] for r in rows], [r["tokens_per_second"] for r in rows], marker="o", label=label)
        axes[1].plot([r["seq_len"] for r in rows], [100 * r["mfu"] for r in rows], marker="o", label=label)
        axes[1].plot([r["seq_len"] for r in rows], [100 * r["mfu_best_step"] for r in rows], marker=".", ls=":",
                     color=axes[1].lines[-1].get_color(), label=f"{preset}, best step")
    axes[0].set_ylabel("training tokens/s")
    axes[1].set_ylabel("MFU, % of the fp32 matmul peak")
    axes[1].axhline(55, color="grey", lw=0.8, ls="--", label="target 55%")
    for ax in axes:
        ax.set_xlabel("sequence length (batch x length = 4096)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(x) for x in lengths])
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    threads = ", ".join(str(t) for t in sorted({r.get("threads") for r in table if r.get("threads")}))
    fig.suptitle(f"mlm pretraining throughput, our default path, fp32, {threads} thread(s); MFU against the matmul "
                 "peak at that thread count", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_summary(r: dict) -> None:
    m, s = r["machine"], r["settings"]
    peaks = ", ".join(f"{v:.0f} at {t} thread(s)" for t, v in r["matmul_peak_gflops_by_threads"].items())
    during = ", ".join(f"{v:.0f} at {t}" for t, v in r["matmul_peak_session_median_gflops"].items())
    lines = [
        "",
        "=" * 108,
        f"pretrain throughput: {m['cpu_model']} ({m['cpus_available']} CPUs), torch {m['torch_version']}, "
        f"load average {m['load_average_at_start']} -> {m['load_average_at_end']}",
        f"shape {s['model']['layers']}x{s['model']['hidden']}, {s['model']['heads']} heads, vocab {s['vocab_size']}, "
        f"T={s['seq_len']}, batch {s['batch_size']}, fp32; {s['warmup_steps']} warm-up + {s['measured_steps']} "
        "measured steps per side, all sides interleaved step by step",
        f"fp32 matmul peak GFLOP/s (best sample): {peaks}; median during the session: {during}",
        "",
        f"{'':38}{'threads':>7}{'tokens/s':>9}{'best-step':>10}{'step ms':>9}{'CPU ms':>8}{'GFLOP/s':>8}{'MFU':>7}"
        f"{'MFU ses':>8}{'MFU best':>9}",
    ]
    groups = [("", r)] + ([("@1t", r["one_thread"])] if "one_thread" in r else [])
    rows = []
    for suffix, g in groups:
        rows += [(f"ours{suffix}", g["ours"])] + ([(f"stock{suffix} (HF Trainer)", g["stock"])] if "stock" in g else [])
    rows += [(f"ours + {name}", v) for name, v in r.get("variants", {}).items()]
    for name, v in rows:
        lines.append(f"{name:38}{v.get('threads', ''):>7}{v['tokens_per_second']:>9.0f}"
                     f"{v['tokens_per_second_best_step']:>10.0f}{v['step_ms_median']:>9.0f}{v['cpu_ms_median']:>8.0f}"
                     f"{v['achieved_gflops']:>8.1f}{v['mfu']:>7.1%}{v['mfu_vs_session_peak']:>8.1%}"
                     f"{v['mfu_best_step']:>9.1%}")
    lines.append("")
    for suffix, g in groups:
        if "speedup" not in g:
            continue
        sp = g["speedup"]
        lines.append(f"speedup ours/stock{suffix}: {sp['ours_over_stock']:.2f}x (median of paired steps; tokens/s "
                     f"ratio {sp['ratio_of_tokens_per_second']:.2f}x, best steps {sp['ratio_of_best_steps']:.2f}x, "
                     f"CPU time per step {sp['ratio_of_cpu_time']:.2f}x; target 3x)")
    if "stock" in r:
        lines.append(f"stock MFU {r['stock']['mfu_performed']:.1%} counting the FLOPs it performs (head on every "
                     f"position), {r['stock']['mfu_useful_flops']:.1%} counting ours (head on 15%); "
                     f"stock optimizer {r['stock'].get('optimizer')}")
    for name, v in r.get("variants", {}).items():
        so, extra = v["speedup_over_ours"], ""
        if "speedup_over_stock" in v:
            extra = f", {v['speedup_over_stock']['median_of_paired_steps']:.2f}x stock"
        lines.append(f"variant {name}: {so['median_of_paired_steps']:.2f}x ours{extra} (paired steps; best steps "
                     f"{so['ratio_of_best_steps']:.2f}x, CPU time {so['ratio_of_cpu_time']:.2f}x ours)")
    p = r.get("preprocessing")
    if p:
        lines.append(f"preprocessing: ours {p['ours']['seconds']:.1f}s, peak RSS {p['ours']['peak_rss_mb']:.0f} MB; "
                     f"stock {p['stock']['seconds']:.1f}s, {p['stock']['peak_rss_mb']:.0f} MB "
                     f"({p['speedup']:.2f}x faster; stock uses {p['peak_rss_ratio_stock_over_ours']:.2f}x the memory)")
    for name, v in rows:
        lines.append(f"phases {name} (mean ms/step): "
                     + ", ".join(f"{k} {x:.0f}" for k, x in v["phase_ms_mean"].items()))
    for name, prof in r.get("profile", {}).items():
        cats = list(prof["by_category_ms"].items())[:8]
        lines.append(f"profile {name} ({prof.get('threads')} thread(s); self CPU ms/step, "
                     f"{prof['self_cpu_ms_per_step_total']:.0f} in all): " + ", ".join(f"{k} {v:.0f}" for k, v in cats))
    if r.get("table"):
        lines.append("")
        lines.append(f"{'our path':24}{'threads':>8}{'batch':>6}{'tokens/s':>10}{'GFLOP/s':>9}{'MFU':>7}{'MFU ses':>8}"
                     f"{'MFU best':>9}")
        for row in r["table"]:
            name = f"{row['preset']} {row['layers']}x{row['hidden']} T={row['seq_len']}"
            lines.append(f"{name:24}{row.get('threads', ''):>8}{row['batch_size']:>6}{row['tokens_per_second']:>10.0f}"
                         f"{row['achieved_gflops']:>9.1f}{row['mfu']:>7.1%}{row['mfu_vs_session_peak']:>8.1%}"
                         f"{row['mfu_best_step']:>9.1%}")
    if r.get("errors"):
        lines.append(f"FAILED: {', '.join(r['errors'])} (see errors in the JSON)")
    lines.append(f"total {r['total_wall_seconds']:.0f}s")
    lines.append("=" * 108)
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
