"""QA answers widened to whole words (the default) against sub-word spans, on a fine-tuned model's validation split.

    python bench/qa_word_alignment.py --model outputs/finetune-qa [--max_examples 2000]

The validation split is rebuilt from the run's own settings (mlm_task.json: its files, split_articles, window
sizes), the model runs once, and the same logits are post-processed both ways, so the difference is the word
alignment alone. JSON: bench/results/qa_word_alignment.json (`--output` to change).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402  (bench/common.py: machine facts, the JSON writer; puts the repository on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="A fine-tuned QA folder (mlm finetune --task qa).")
    p.add_argument("--max_examples", type=int, default=None, help="Score the first N validation questions.")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--output", default=os.path.join(ROOT, "bench", "results", "qa_word_alignment.json"))
    args = p.parse_args(argv)

    from finetune.inference import compute_outputs
    from finetune.predict import load_model, load_task
    from mlm.core.hf import fit_tokenizer_to_model, load_tokenizer

    task, cfg, labels = load_task(args.model)
    if cfg.task != "qa":
        raise SystemExit(f"--model: {args.model} is a {cfg.task} model, not qa")
    examples = task.load_splits(cfg)[0]["validation"][: args.max_examples]
    tokenizer, model = load_tokenizer(args.model, field="--model"), load_model(task, args.model, quantize=False)
    fit_tokenizer_to_model(tokenizer, model)
    features = task.encode(examples, tokenizer, cfg, labels, with_labels=False)
    start = time.perf_counter()
    outputs = compute_outputs(task, model, features, tokenizer, args.batch_size)
    seconds = time.perf_counter() - start
    results, texts = {}, {}
    for name, align in (("whole_words", True), ("sub_words", False)):
        cfg.align_to_words = align
        records = task.predictions(examples, features, outputs, cfg, labels)
        texts[name] = [r["prediction_text"] for r in records]
        scores = task.metrics(examples, records, cfg, labels)
        results[name] = {"exact_match": scores["exact_match"], "f1": scores["f1"]}
    changed = sum(a != b for a, b in zip(texts["whole_words"], texts["sub_words"]))
    report = {
        **results,
        "questions": len(examples), "windows": len(features), "answers_changed": changed,
        "inference_seconds": round(seconds, 1), "model": args.model,
        "machine": common.machine_info(), "command": shlex.join([sys.executable, *sys.argv]),
    }
    common.write_json(args.output, report)
    print(f"{len(examples)} questions, {changed} answers widened: EM {results['sub_words']['exact_match']:.2f} -> "
          f"{results['whole_words']['exact_match']:.2f}, F1 {results['sub_words']['f1']:.2f} -> "
          f"{results['whole_words']['f1']:.2f}; {args.output}")
    return report


if __name__ == "__main__":
    main()
