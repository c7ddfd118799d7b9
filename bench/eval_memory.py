"""Evaluation memory: peak resident memory while evaluating vs while training, ours against the stock head.

Target (performance issue, item 4): MLM evaluation never materialises a [batch, sequence, vocab] logits
tensor, and its peak RSS stays within 10% of training's. Each side runs in its own process on the same packed
WikiText-2 blocks (or the embedded default corpus when the data is absent), same `mini` shape (4 layers,
hidden 256, vocab 16k, sequence 128), a few training steps then a few evaluation batches:

* ours:  `mlm.pretrain.run.main` (the real entry point): SparseMaskedLM, head on the masked positions only.
* stock: BertForMaskedLM(labels=...) on the same batches: the head on every position, logits [B, T, V].

A thread samples this process's RSS every millisecond and keeps the maximum per phase (set-up, train,
eval). Usage: python bench/eval_memory.py [--quick] [--eval-batch-size N]
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

VOCAB, SEQ, TRAIN_BATCH = 16000, 128, 32


class PhaseRSS:
    """The largest resident set seen in each phase, sampled from /proc/self/statm by a background thread."""

    def __init__(self, interval: float = 0.001):
        self.phase, self.peaks, self.interval = "setup", {}, interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self._stop = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self):
        with open("/proc/self/statm") as f:
            while not self._stop.is_set():
                f.seek(0)
                rss = int(f.read().split()[1]) * self.page / 2**20
                self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
                time.sleep(self.interval)

    def enter(self, phase: str):
        time.sleep(3 * self.interval)  # let the sampler see the end of the previous phase
        self.phase = phase

    def result(self) -> dict:
        self._stop.set()
        return {k: round(v, 1) for k, v in self.peaks.items()}


def run_ours(args, tracker: PhaseRSS) -> dict:
    import mlm.pretrain.run as pretrain
    from mlm.core.config import parse_config

    loss_fn, make_evaluate = pretrain.mlm_loss, pretrain.make_evaluate

    def tracked_loss(model, batch):
        tracker.enter("train") if tracker.phase != "train" else None
        return loss_fn(model, batch)

    def tracked_make_evaluate(*a, **k):
        evaluate = make_evaluate(*a, **k)

        def run(model):
            tracker.enter("eval")
            metrics = evaluate(model)
            tracker.enter("after_eval")
            return metrics

        return run

    pretrain.mlm_loss, pretrain.make_evaluate = tracked_loss, tracked_make_evaluate
    cfg = parse_config(pretrain.PretrainConfig, [
        "--train_file", args.train_file, "--validation_file", args.valid_file, "--tokenizer_name", args.tokenizer,
        "--model_preset", "mini", "--max_seq_length", str(SEQ), "--per_device_train_batch_size", str(TRAIN_BATCH),
        "--per_device_eval_batch_size", str(args.eval_batch_size), "--max_steps", str(args.steps),
        "--max_eval_samples", str(args.eval_batch_size * args.eval_batches), "--eval_steps", str(args.steps),
        "--save_steps", str(args.steps), "--output_dir", args.output_dir, "--overwrite_output_dir", "true",
        "--disable_tqdm", "true", "--cache_dir", common.cache_dir(), "--document_separator", "line",
    ])
    metrics = pretrain.main(cfg)
    return {"eval_loss": metrics.get("eval_loss")}


def run_stock(args, tracker: PhaseRSS) -> dict:
    import torch

    from mlm.pretrain.masking import MaskingCollator
    from mlm.pretrain.corpus import corpus_sources
    from mlm.pretrain.model import build_masked_lm
    from mlm.pretrain.packing import build_packed_dataset
    from mlm.core.hf import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    train, valid = corpus_sources(train_file=args.train_file, validation_file=args.valid_file,
                                  document_separator="line")
    train_blocks, valid_blocks = build_packed_dataset(train, valid, tokenizer, SEQ, common.cache_dir())
    torch.manual_seed(0)
    model = build_masked_lm(None, "mini", len(tokenizer), SEQ)
    collate = MaskingCollator(tokenizer, seed=0)

    def dense_batch(blocks, start, size):
        """The same masked batch, with labels at every position (-100 where not masked), as HF's collator gives."""
        batch = collate([{**blocks[i], "example_id": i} for i in range(start, start + size)])
        labels = torch.full_like(batch["input_ids"], -100)
        rows = torch.arange(size).unsqueeze(1).expand_as(batch["masked_positions"])
        keep = batch["masked_labels"] != -100
        labels[rows[keep], batch["masked_positions"][keep]] = batch["masked_labels"][keep]
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}

    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    model.train()
    tracker.enter("train")
    for step in range(args.steps):
        loss = model(**dense_batch(train_blocks, step * TRAIN_BATCH, TRAIN_BATCH)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    tracker.enter("eval")
    losses = []
    with torch.no_grad():
        for b in range(args.eval_batches):
            losses.append(model(**dense_batch(valid_blocks, b * args.eval_batch_size, args.eval_batch_size)).loss.item())
    tracker.enter("after_eval")
    return {"eval_loss_mean_of_batches": sum(losses) / len(losses)}


def child(args):
    import torch

    torch.set_num_threads(args.threads)
    tracker = PhaseRSS()
    out = (run_ours if args.child == "ours" else run_stock)(args, tracker)
    peaks = tracker.result()
    out.update(peak_rss_mb_by_phase=peaks,
               eval_over_train=round(peaks["eval"] / peaks["train"], 4) if "eval" in peaks and "train" in peaks else None)
    common.child_result(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and batches; writes eval_memory_quick.json")
    p.add_argument("--eval-batch-size", type=int, default=64, help="default: the recipes' per_device_eval_batch_size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", choices=["ours", "stock"], help=argparse.SUPPRESS)
    for name in ("--tokenizer", "--train-file", "--valid-file", "--output-dir"):
        p.add_argument(name, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--eval-batches", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    train_file, valid_file = common.wikitext2_file("train"), common.wikitext2_file("valid")
    if not (train_file and valid_file):
        print("SKIPPED: WikiText-2 not found under $MLM_DATA_DIR/wikitext-2-raw")
        return
    steps, batches = (3, 2) if args.quick else (10, 6)
    _, tokenizer_dir = common.wordpiece_tokenizer(train_file, VOCAB)
    scratch = common.scratch_dir("eval-memory-")
    base = ["bench/eval_memory.py", "--tokenizer", tokenizer_dir, "--train-file", train_file, "--valid-file", valid_file,
            "--output-dir", os.path.join(scratch, "out"), "--steps", str(steps), "--eval-batches", str(batches),
            "--eval-batch-size", str(args.eval_batch_size), "--threads", str(args.threads)]
    results = {}
    for side in ("ours", "stock"):
        common.log(f"{side}: {steps} training steps of {TRAIN_BATCH} x {SEQ}, {batches} eval batches of {args.eval_batch_size}")
        results[side] = common.run_child(base + ["--child", side])
        common.log(f"{side}: peak RSS by phase {results[side]['peak_rss_mb_by_phase']}")
    logits_mb = args.eval_batch_size * SEQ * VOCAB * 4 / 2**20
    out = {
        "benchmark": "eval_memory",
        "command": "python " + " ".join(sys.argv),
        "machine": common.machine_info(),
        "settings": {"model": "mini preset (4 layers, hidden 256, 4 heads, FFN 1024)", "vocab_size": VOCAB,
                     "seq_len": SEQ, "train_batch_size": TRAIN_BATCH, "eval_batch_size": args.eval_batch_size,
                     "train_steps": steps, "eval_batches": batches, "threads": args.threads,
                     "data": train_file},
        "dense_logits_tensor_mb": round(logits_mb, 1),
        "ours": results["ours"],
        "stock": results["stock"],
        "target": "ours: eval peak RSS <= 1.10 x train peak RSS",
        "target_met": results["ours"]["eval_over_train"] is not None and results["ours"]["eval_over_train"] <= 1.10,
    }
    name = "eval_memory" + ("" if args.eval_batch_size == 64 else f"_eval{args.eval_batch_size}") + \
        ("_quick" if args.quick else "") + ".json"
    common.write_json(os.path.join(common.RESULTS_DIR, name), out)
    common.log(f"ours eval/train peak RSS {out['ours']['eval_over_train']}, stock {out['stock']['eval_over_train']} "
               f"(dense logits alone: {logits_mb:.0f} MB) -> bench/results/{name}")


if __name__ == "__main__":
    main()
