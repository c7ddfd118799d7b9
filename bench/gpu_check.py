"""One-shot GPU check: the GPU paths a cluster user depends on, in one script, under 8 minutes on one GPU.

    python bench/gpu_check.py                   # on a GPU machine: writes bench/results/gpu_check.json
    python bench/gpu_check.py --dry-run         # anywhere: tiny shapes, fp32, CPU (tests/test_gpu_check.py)

Each part runs in a fresh process (an Accelerator's precision and distributed type are fixed per process) and
reports JSON; a failing part is recorded with its error and the others still run. Parts:

* peak:            bf16 matmul FLOP/s measured here (fp32 in the dry run): the MFU denominator.
* mlm_small/base:  mlm's pretraining path (SparseMaskedLM + the shared loop, bf16 autocast, SDPA attention) on the
                   `small` and `base` presets: tokens/s and MFU against that peak.
* stock_small/base: the same shape, batch and steps through BertForMaskedLM + DataCollatorForLanguageModeling +
                   transformers.Trainer: the baseline of the speed ratio.
* finetune:        `mlm finetune --task cls` on synthetic sentences, from a saved `small` backbone.
* fsdp:            mlm_small under recipes/accelerate/fsdp.yaml with 1 process (the dry run: fsdp-cpu-2proc.yaml).
* parity:          one batch, the same weights: the loss on the GPU under bf16 autocast against fp32 on the CPU.
* attention:       a `base` training step with attention dropout 0.1: SDPA with dropout_p (fused kernels, the
                   default off the CPU) against the explicit softmax-dropout path; ms per step, peak memory.
* syncs:           host synchronisations per training step of the shared loop (CUDA's sync debug mode; the dry
                   run counts Tensor reads), logging steps apart.
* unpadded:        a fine-tuning step (token classification, lengths 8..seq in one batch): padded against
                   unpadded (nested-tensor SDPA) attention; ms per step and the largest output difference.

Synthetic token ids stand in for a corpus (throughput does not depend on the text); the batch of every part is
the same seeded one.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (bench/common.py; it also puts the repository on sys.path)
from mlm.core.hf import load_tokenizer  # noqa: E402

# (preset, vocabulary, sequence length, batch, steps): BERT's vocabulary and pretraining length on the GPU.
GPU_SHAPE = dict(vocab=30522, seq=128, batch=64, steps=40)
DRY_SHAPE = dict(vocab=200, seq=32, batch=4, steps=4)
DRY_OVERRIDES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
PARITY_TOLERANCE = 2e-2  # relative loss difference bf16 autocast vs fp32: bf16 keeps 8 bits of mantissa
TOKENIZER = "tokenizer"  # the folder of the synthetic tokenizer, made once by the driver
PARTS = ["peak", "mlm_small", "stock_small", "mlm_base", "stock_base", "finetune", "fsdp", "parity", "attention",
         "syncs", "unpadded"]


def shape(dry: bool) -> dict:
    return DRY_SHAPE if dry else GPU_SHAPE


def model_overrides(dry: bool) -> dict:
    return DRY_OVERRIDES if dry else {}


def make_tokenizer(vocab_size: int, folder: str):
    """A WordPiece tokenizer of specials + words w5, w6, ... (synthetic text needs no trained vocabulary)."""
    from transformers import BertTokenizer

    os.makedirs(folder)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + [f"w{i}" for i in range(len(specials), vocab_size)]
    # vocab=, not vocab_file=: transformers 5 may ignore the file (docs/internals.md)
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True).save_pretrained(folder)
    tokenizer = load_tokenizer(folder)
    assert len(tokenizer) == vocab_size, "the tokenizer ignored its vocabulary"
    return tokenizer


def blocks(tokenizer, count: int, seq: int, seed: int = 0) -> list[dict]:
    """`count` packed blocks [CLS] ids [SEP] of random word ids, as mlm.pretrain.packing makes them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    body = rng.integers(5, len(tokenizer), size=(count, seq - 2))
    return [{"input_ids": np.concatenate([[tokenizer.cls_token_id], row, [tokenizer.sep_token_id]])} for row in body]


def use_device(dry: bool) -> None:
    if dry:  # never touch a GPU in the dry run, even where there is one
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


# ------------------------------------------------------------------------------------------------- parts


def part_peak(dry: bool) -> dict:
    import torch

    from mlm.core.accel import matmul_peak_flops

    device = torch.device("cpu" if dry else "cuda")
    dtype = torch.float32 if dry else torch.bfloat16
    peak = matmul_peak_flops(device, dtype, size=512 if dry else 8192, repeats=3 if dry else 10)
    return {"device": device.type, "dtype": str(dtype), "matmul_peak_tflops": peak / 1e12}


def part_mlm(dry: bool, preset: str, peak_tflops: float, folder: str, logging_steps: int = 0) -> dict:
    """mlm's pretraining path: the shared loop over SparseMaskedLM, as `mlm pretrain` runs it (into `folder`,
    the same on every rank)."""
    from mlm.pretrain.masking import MaskingCollator
    from mlm.core.accel import distributed_type, make_accelerator, shards_parameters
    from mlm.core.loop import LoopParts, train
    from mlm.pretrain.model import SparseMaskedLM, build_masked_lm, train_flops_per_token
    from mlm.pretrain.run import PretrainConfig, mlm_loss

    s = shape(dry)
    tokenizer = load_tokenizer(os.path.join(folder, TOKENIZER))
    cfg = PretrainConfig(output_dir=os.path.join(folder, "run"), max_steps=s["steps"],
                         logging_steps=logging_steps or s["steps"],
                         per_device_train_batch_size=s["batch"], mixed_precision="no" if dry else "bf16",
                         save_steps=s["steps"], disable_tqdm=True, report_to="none")
    accelerator = make_accelerator(cfg)
    hf_model = build_masked_lm(None, preset, len(tokenizer), s["seq"], attn_implementation="sdpa",
                               **model_overrides(dry))
    model = SparseMaskedLM(hf_model, fast_encoder=not shards_parameters(accelerator))
    data = blocks(tokenizer, s["batch"] * accelerator.num_processes * s["steps"], s["seq"])
    flops = train_flops_per_token(hf_model.config, s["seq"], cfg.mlm_probability)
    metrics = train(cfg, accelerator, model, data, LoopParts(MaskingCollator(tokenizer, seed=0), mlm_loss))
    tokens_per_second = metrics["train_tokens_per_second"]
    return {"preset": preset, "distributed_type": distributed_type(accelerator), "processes": accelerator.num_processes,
            "mixed_precision": accelerator.mixed_precision, "steps": s["steps"], "final_loss": metrics["train_loss"],
            "tokens_per_second": tokens_per_second, "flops_per_token": flops,
            "mfu": tokens_per_second * flops / (peak_tflops * 1e12 * accelerator.num_processes)}


def part_stock(dry: bool, preset: str, peak_tflops: float, folder: str) -> dict:
    """The same steps through the stock Hugging Face recipe: BertForMaskedLM + Trainer."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from mlm.pretrain.model import build_masked_lm, train_flops_per_token

    s = shape(dry)
    tokenizer = load_tokenizer(os.path.join(folder, TOKENIZER))
    model = build_masked_lm(None, preset, len(tokenizer), s["seq"], attn_implementation="sdpa", **model_overrides(dry))
    data = [{"input_ids": b["input_ids"].tolist()} for b in blocks(tokenizer, s["batch"] * s["steps"], s["seq"])]
    args = TrainingArguments(output_dir=os.path.join(folder, "run"), max_steps=s["steps"], bf16=not dry,
                             use_cpu=dry, per_device_train_batch_size=s["batch"], learning_rate=5e-4,
                             logging_steps=s["steps"], save_strategy="no", report_to=[], disable_tqdm=True)
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    result = Trainer(model=model, args=args, train_dataset=data, data_collator=collator).train()
    tokens_per_second = s["batch"] * s["seq"] * s["steps"] / result.metrics["train_runtime"]
    flops = train_flops_per_token(model.config, s["seq"], 1.0)  # the stock head runs on every position
    return {"preset": preset, "steps": s["steps"], "final_loss": result.training_loss,
            "tokens_per_second": tokens_per_second, "mfu": tokens_per_second * flops / (peak_tflops * 1e12)}


def part_finetune(dry: bool, folder: str) -> dict:
    """`mlm finetune --task cls` on sentences of synthetic words whose label is the first word's parity."""
    import numpy as np

    from finetune.run import main, parse_finetune_args
    from mlm.pretrain.model import build_masked_lm

    s = shape(dry)
    backbone = os.path.join(folder, TOKENIZER)  # the tokenizer folder, with a saved `small` model beside it
    tokenizer = load_tokenizer(backbone)
    build_masked_lm(None, "small", len(tokenizer), s["seq"], **model_overrides(dry)).save_pretrained(backbone)
    rng = np.random.default_rng(0)
    rows = [rng.integers(5, len(tokenizer), size=12) for _ in range(s["batch"] * 8)]
    data = os.path.join(folder, "train.csv")
    with open(data, "w", encoding="utf-8") as f:
        f.write("text,label\n" + "".join(f"{' '.join(f'w{i}' for i in r)},{'even' if r[0] % 2 == 0 else 'odd'}\n"
                                         for r in rows))
    argv = ["--task", "cls", "--model_name_or_path", backbone, "--train_file", data, "--validation_file", data,
            "--output_dir", os.path.join(folder, "cls"), "--max_steps", str(s["steps"]), "--max_seq_length",
            str(s["seq"]), "--per_device_train_batch_size", str(s["batch"]), "--disable_tqdm", "true",
            "--mixed_precision", "no" if dry else "bf16"]
    metrics = main(parse_finetune_args(argv))
    return {"task": "cls", "steps": metrics["global_step"], "eval_accuracy": metrics.get("eval_accuracy"),
            "train_examples_per_second": metrics["train_examples_per_second"]}


def part_parity(dry: bool, folder: str) -> dict:
    """The loss of one batch on the device (bf16 autocast on a GPU) against fp32 on the CPU, same weights."""
    import copy

    import torch

    from mlm.pretrain.masking import MaskingCollator
    from mlm.core.sampling import to_device
    from mlm.pretrain.model import SparseMaskedLM, build_masked_lm
    from mlm.pretrain.run import mlm_loss

    s = shape(dry)
    tokenizer = load_tokenizer(os.path.join(folder, TOKENIZER))
    torch.manual_seed(0)
    cpu_model = SparseMaskedLM(build_masked_lm(None, "small", len(tokenizer), s["seq"], **model_overrides(dry))).eval()
    batch = MaskingCollator(tokenizer, seed=0)(blocks(tokenizer, s["batch"], s["seq"]))
    with torch.no_grad():
        loss_sum, count = mlm_loss(cpu_model, batch)
        reference = (loss_sum / count).item()
        device = torch.device("cpu" if dry else "cuda")
        model = copy.deepcopy(cpu_model).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not dry):
            loss_sum, count = mlm_loss(model, to_device(batch, device))
        loss = (loss_sum / count).item()
    difference = abs(loss - reference) / reference
    return {"device": device.type, "autocast": "no" if dry else "bf16", "loss": loss, "fp32_cpu_loss": reference,
            "relative_difference": difference, "tolerance": PARITY_TOLERANCE, "ok": difference <= PARITY_TOLERANCE}


def _ms_per_step(step, device, repeats: int) -> tuple[float, float]:
    """(ms per call of step(), peak GPU memory in GB; 0 on CPUs), after one warm-up call."""
    import torch

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else 0.0
    return 1000 * (time.perf_counter() - start) / repeats, peak


def part_attention(dry: bool, folder: str) -> dict:
    """SDPA with dropout_p against the explicit path, one SparseMaskedLM training step, same weights and batch."""
    import torch

    from mlm.core.sampling import to_device
    from mlm.pretrain import encoder
    from mlm.pretrain.masking import MaskingCollator
    from mlm.pretrain.model import SparseMaskedLM, build_masked_lm
    from mlm.pretrain.run import mlm_loss

    s, device = shape(dry), torch.device("cpu" if dry else "cuda")
    tokenizer = load_tokenizer(os.path.join(folder, TOKENIZER))
    model = SparseMaskedLM(build_masked_lm(None, "base", len(tokenizer), s["seq"], attention_probs_dropout_prob=0.1,
                                           **model_overrides(dry))).to(device).train()
    batch = to_device(MaskingCollator(tokenizer, seed=0)(blocks(tokenizer, s["batch"], s["seq"])), device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not dry):
            loss_sum, count = mlm_loss(model, batch)
        (loss_sum / count).backward()
        model.zero_grad(set_to_none=True)

    result, original = {"device": device.type, "preset": "base"}, encoder.fused_attention
    for name, fused in (("sdpa_dropout", lambda d, p: True), ("explicit", lambda d, p: p == 0.0)):
        encoder.fused_attention = fused
        try:
            result[f"{name}_ms"], result[f"{name}_peak_gb"] = _ms_per_step(step, device, 2 if dry else 20)
        finally:
            encoder.fused_attention = original
    result["speedup"] = result["explicit_ms"] / result["sdpa_dropout_ms"]
    return result


def part_syncs(dry: bool, folder: str) -> dict:
    """Host synchronisations in each step of the shared loop, as mlm pretrain runs it (logging every 5th step)."""
    import warnings

    import torch

    from mlm.core import loop

    device = torch.device("cpu" if dry else "cuda")
    counts, step = [], loop._Run.step
    reads = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")
    originals = {name: getattr(torch.Tensor, name) for name in reads}
    tally = {"n": 0}

    def counting(name):
        def read(self, *args, **kwargs):
            tally["n"] += 1
            return originals[name](self, *args, **kwargs)
        return read

    def counted_step(run):  # GPU: CUDA's own count of synchronising calls; CPU: Tensor reads (none wait there)
        tally["n"] = 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                step(run)
            finally:
                if device.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        synced = sum("synchroniz" in str(w.message) for w in caught) if device.type == "cuda" else tally["n"]
        counts.append({"step": run.state.step, "syncs": synced})

    loop._Run.step = counted_step
    if device.type != "cuda":
        for name in reads:
            setattr(torch.Tensor, name, counting(name))
    try:
        result = part_mlm(dry, "small", 1.0, folder, logging_steps=5)
    finally:
        loop._Run.step = step
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    logging = [c["syncs"] for c in counts if c["step"] % 5 == 0 or c["step"] == result["steps"]]
    quiet = [c["syncs"] for c in counts if not (c["step"] % 5 == 0 or c["step"] == result["steps"])]
    return {"device": device.type, "per_step": counts, "max_syncs_other_steps": max(quiet, default=0),
            "max_syncs_logging_steps": max(logging, default=0)}


def part_unpadded(dry: bool, folder: str) -> dict:
    """A token-classification training step on a batch of mixed lengths, padded against unpadded attention."""
    import numpy as np
    import torch
    from transformers import AutoModelForTokenClassification

    from finetune.unpadded import unpadded
    from mlm.pretrain.model import preset_config

    s, device = shape(dry), torch.device("cpu" if dry else "cuda")
    overrides = {**model_overrides(dry), "num_labels": 9}
    model = AutoModelForTokenClassification.from_config(preset_config("base", s["vocab"], 512, **overrides),
                                                        attn_implementation="sdpa").to(device).train()
    rng = np.random.default_rng(0)
    lengths = torch.as_tensor(rng.integers(8, s["seq"] + 1, size=s["batch"]))
    mask = (torch.arange(s["seq"])[None, :] < lengths[:, None]).long().to(device)
    ids = torch.as_tensor(rng.integers(5, s["vocab"], size=(s["batch"], s["seq"]))).to(device) * mask
    real = mask.bool()

    def forward(unpad: bool):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not dry):
            if not unpad:
                return model(input_ids=ids, attention_mask=mask).logits
            with unpadded(model, mask):
                return model(input_ids=ids, attention_mask=mask).logits

    def step(unpad: bool):
        forward(unpad)[real].float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    model.eval()  # the outputs compared without dropout
    with torch.no_grad():
        difference = (forward(False)[real].float() - forward(True)[real].float()).abs().max().item()
    model.train()
    result = {"device": device.type, "preset": "base", "real_token_fraction": float(real.float().mean()),
              "max_abs_difference": difference}
    for name, unpad in (("padded", False), ("unpadded", True)):
        result[f"{name}_ms"], result[f"{name}_peak_gb"] = _ms_per_step(lambda: step(unpad), device, 2 if dry else 20)
    result["speedup"] = result["padded_ms"] / result["unpadded_ms"]
    return result


# ------------------------------------------------------------------------------------------------ driver


def run_part(name: str, dry: bool, peak_tflops: float, workdir: str) -> dict:
    """One part in a fresh process (the FSDP part under `accelerate launch`), working in its own folder."""
    folder = os.path.join(workdir, name)
    os.makedirs(folder)
    shutil.copytree(os.path.join(workdir, TOKENIZER), os.path.join(folder, TOKENIZER))
    argv = [os.path.abspath(__file__), "--part", name, "--peak_tflops", str(peak_tflops), "--workdir", folder]
    argv += ["--dry-run"] if dry else []
    if name != "fsdp":
        return common.run_child(argv, timeout=600)
    config, processes = ("fsdp-cpu-2proc.yaml", "2") if dry else ("fsdp.yaml", "1")
    launch = ["-m", "accelerate.commands.launch", "--config_file", os.path.join(common.REPO, "recipes", "accelerate",
              config), "--num_processes", processes, "--main_process_port", "0"]
    return common.run_child(launch + argv, env={"OMP_NUM_THREADS": "1"}, timeout=600)


def child(name: str, dry: bool, peak_tflops: float, folder: str) -> None:
    use_device(dry)
    if name == "peak":
        result = part_peak(dry)
    elif name.startswith("mlm_"):
        result = part_mlm(dry, name[len("mlm_"):], peak_tflops, folder)
    elif name == "fsdp":
        result = part_mlm(dry, "small", peak_tflops, folder)
    elif name.startswith("stock_"):
        result = part_stock(dry, name[len("stock_"):], peak_tflops, folder)
    elif name == "finetune":
        result = part_finetune(dry, folder)
    elif name in ("attention", "syncs", "unpadded"):
        result = {"attention": part_attention, "syncs": part_syncs, "unpadded": part_unpadded}[name](dry, folder)
    else:
        result = part_parity(dry, folder)
    if int(os.environ.get("RANK", "0")) == 0:  # under a launcher: one result line
        common.child_result(result)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="Tiny shapes, fp32, on the CPU: checks that the script runs.")
    p.add_argument("--output", help="JSON to write (default bench/results/gpu_check.json, or gpu_check_dry.json).")
    p.add_argument("--parts", default=",".join(PARTS), help="Comma-separated subset of: " + ", ".join(PARTS))
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--peak_tflops", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.part:
        child(args.part, args.dry_run, args.peak_tflops, args.workdir)
        return 0

    began = time.perf_counter()
    output = args.output or os.path.join(common.RESULTS_DIR, "gpu_check_dry.json" if args.dry_run else "gpu_check.json")
    report = {"benchmark": "gpu_check", "dry_run": args.dry_run, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "machine": common.machine_info(), "shape": shape(args.dry_run), "parts": {}, "errors": {}}
    peak = 0.0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as workdir:
        make_tokenizer(shape(args.dry_run)["vocab"], os.path.join(workdir, TOKENIZER))
        for name in ["peak"] + [n for n in args.parts.split(",") if n != "peak"]:
            common.log(f"gpu_check: {name}")
            try:
                report["parts"][name] = run_part(name, args.dry_run, peak, workdir)
            except Exception as e:  # record it, run the rest
                report["errors"][name] = str(e)[-2000:]
                continue
            if name == "peak":
                peak = report["parts"]["peak"]["matmul_peak_tflops"]
    parts = report["parts"]
    for size in ("small", "base"):
        if f"mlm_{size}" in parts and f"stock_{size}" in parts:
            report[f"speedup_{size}"] = parts[f"mlm_{size}"]["tokens_per_second"] / parts[f"stock_{size}"]["tokens_per_second"]
    report["total_wall_seconds"] = round(time.perf_counter() - began, 1)
    common.write_json(output, report)
    common.log(f"gpu_check: {len(parts)} parts ok, {len(report['errors'])} failed, "
               f"{report['total_wall_seconds']}s -> {output}")
    return 1 if report["errors"] or not parts.get("parity", {}).get("ok", True) else 0


if __name__ == "__main__":
    sys.exit(main())
