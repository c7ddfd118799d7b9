"""`mlm predict`: a fine-tuned checkpoint + text -> JSONL of labels / entities / answers with scores.

    mlm predict --model outputs/cls --text "a gripping film"
    mlm predict --model outputs/ner --input sentences.txt --output entities.jsonl
    mlm predict --model outputs/qa --question "Who wrote it?" --context "..."
    mlm predict --model outputs/cls --input dev.tsv --quantize     # dynamic int8 on CPU
    mlm predict --model outputs/cls --input dev.tsv --backend onnxruntime --quantize   # after mlm export --quantize

The task comes from the checkpoint (mlm_task.json, or config.json's architectures for any HF model).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Optional

from mlm.errors import ConfigError, DataError
from mlm.core.fsutil import written_whole
from mlm.core.user_files import REEXPORT, read_json


def build_parser() -> argparse.ArgumentParser:
    p = strict_parser("mlm predict", __doc__.split("\n\n")[0])
    p.add_argument("--text", help="Text to classify or tag.")
    p.add_argument("--text_pair", help="Second sentence of a pair (classification).")
    p.add_argument("--question", help="Question (QA).")
    p.add_argument("--context", help="Context to find the answer in (QA).")
    p.add_argument("--input", help="File of inputs: .jsonl/.csv/.tsv with the task's fields, or .txt one text per line.")
    p.add_argument("--output", help="Write JSON lines here, .jsonl (default: stdout).")
    add_checkpoint_options(p)
    return p


def strict_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser whose errors are ConfigError (one line), not a usage dump."""
    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise ConfigError(message)

    return Parser(prog=prog, description=description)


def add_checkpoint_options(p: argparse.ArgumentParser) -> None:
    """The options `mlm predict` and `mlm evaluate` share: the checkpoint, how it runs, how cls tables are read."""
    p.add_argument("--model", required=True, help="A fine-tuned checkpoint directory.")
    p.add_argument("--batch_size", type=int, default=32, help="Inputs per forward pass.")
    p.add_argument("--max_seq_length", type=int, default=None, help="Override the checkpoint's max_seq_length.")
    p.add_argument("--quantize", action="store_true", help="Dynamic int8 quantisation of the Linear layers (CPU); "
                   "with --backend onnxruntime, the model.int8.onnx of `mlm export --quantize`.")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                   help="Run the checkpoint's torch weights, or the model.onnx `mlm export` wrote into --model "
                   "(pip install mlm[onnx]); the same tokenisation and decoding either way.")
    p.add_argument("--num_threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime (default: "
                   "OMP_NUM_THREADS, else the cores this process may use); on a busy machine fewer can be faster.")
    p.add_argument("--text_column", help="cls tables: the text column (name or position; several joined with commas), "
                   "when not the one trained on.")
    p.add_argument("--text_pair_column", help="cls tables: the second text column of a pair model.")
    p.add_argument("--label_column", help="cls tables: the gold label column (name or position).")
    p.add_argument("--align_to_words", choices=["true", "false"],
                   help="qa: widen answers to whole words (default: as the model was trained, true).")
    p.add_argument("--no_header", nargs="?", const="true", choices=["true", "false"],
                   help="cls csv/tsv tables have no header line (default: detected per file).")
    p.add_argument("--label_names", help="cls: names for the model's classes, 'neg,pos' (in id order) or '0=neg,1=pos' "
                   "or a file of such lines; also applied to the gold labels of --input tables.")
    p.add_argument("--allow_pickle_weights", action="store_true",
                   help="Load a model with only pickle weights (pytorch_model.bin): they can run code; trusted folders only.")
    return p


def load_task(model_dir: str, max_positions: Optional[int] = None):
    """(task module, task Config with the run's settings, label names) for a checkpoint directory."""
    from finetune.saved import SavedTask
    from finetune.task import TASK_FILE, TASKS, task_of_architectures

    if max_positions is None:
        max_positions = checkpoint_positions(model_dir)

    config = read_json(os.path.join(model_dir, "config.json"), hint=REEXPORT)
    task_file = os.path.join(model_dir, TASK_FILE)
    if os.path.isfile(task_file):
        saved = SavedTask.from_json(task_file, classes=len(config.get("id2label") or {}))
        return TASKS[saved.task], saved.config(), list(saved.labels)
    name = task_of_architectures(config.get("architectures"))
    if name is None:
        raise DataError(f"--model: {model_dir} is not a fine-tuned task checkpoint (no {TASK_FILE}, no known "
                        "architecture)")
    task = TASKS[name]
    settings, labels = task.settings_from_hf(config)
    cfg = task.Config.for_model({"task": name, **settings})
    return task, cfg.with_values(fitted_lengths(task, cfg, max_positions)), labels


def checkpoint_positions(model_dir: str, allow_pickle: bool = False) -> int:
    """The longest input the checkpoint takes (DataError when model_dir is not a checkpoint)."""
    import transformers

    from mlm.core.hf import check_checkpoint_dir, usable_positions

    check_checkpoint_dir(model_dir, field="--model", allow_pickle=allow_pickle)
    return usable_positions(transformers.AutoConfig.from_pretrained(model_dir))


def fitted_lengths(task, cfg, max_positions: int) -> dict:
    """Default lengths for a checkpoint without mlm's settings, shrunk in proportion to fit its positions
    (the QA defaults 384/128/64 become 128/42/21 on a 128-position model): max_seq_length and the task's
    LENGTH_FIELDS, as {field: value} ({} when they fit)."""
    if cfg.max_seq_length <= max_positions:
        return {}
    fitted = {name: max(1, getattr(cfg, name) * max_positions // cfg.max_seq_length)
              for name in task.LENGTH_FIELDS if getattr(cfg, name, None) is not None}
    return {**fitted, "max_seq_length": max_positions}


def flag_values(cfg, args) -> dict:
    """The run's settings that --max_seq_length and the cls table flags override, as {field: value}."""
    values = {}
    if args.max_seq_length is not None:
        values["max_seq_length"] = args.max_seq_length
    if args.align_to_words is not None:
        if not hasattr(cfg, "align_to_words"):
            raise ConfigError("--align_to_words: only qa models predict spans")
        values["align_to_words"] = args.align_to_words == "true"
    for name in ("text_column", "text_pair_column", "label_column", "no_header"):
        if getattr(args, name) is None:
            continue
        if not hasattr(cfg, name):
            raise ConfigError(f"--{name}: only the cls task reads table columns")
        if name == "text_pair_column" and cfg.text_pair_column == "none":
            raise ConfigError("--text_pair_column: this model classifies single texts, not pairs")
        values[name] = getattr(args, name) == "true" if name == "no_header" else getattr(args, name)
    return values


def check_lengths(cfg, max_positions: int, args) -> None:
    """cfg.check_lengths, its error naming the flag that made the lengths wrong."""
    try:
        cfg.check_lengths(max_positions)
    except ConfigError as e:
        if args.max_seq_length is None:
            raise ConfigError(f"--model: {args.model}: {e}") from None
        raise ConfigError(f"--{e}" if str(e).startswith("max_seq_length") else f"--max_seq_length: {e}") from None


def check_output(output: str | None, input_path: str | None) -> None:
    """Refuse an --output that cannot be written or would destroy the input, before any work is done."""
    if output is None:
        return
    if output.lower().endswith((".csv", ".tsv", ".txt", ".parquet")):
        raise ConfigError(f"--output: {output}: predictions are written as JSON lines; name the file .jsonl")
    folder = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(folder):
        raise ConfigError(f"--output: folder {folder} does not exist")
    if os.path.isdir(output):
        raise ConfigError(f"--output: {output} is a folder; name a .jsonl file")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--output: cannot write in {folder}")
    if input_path and os.path.exists(output) and os.path.exists(input_path) and os.path.samefile(output, input_path):
        raise ConfigError(f"--output: {output} is the --input file")


def load_model(task, model_dir: str, quantize: bool, allow_pickle: bool = False):
    """The checkpoint in eval mode: int8 on CPU when quantize, else on the GPU when there is one."""
    import torch

    from mlm.core.hf import loading_kwargs

    model = task.AutoModel.from_pretrained(model_dir, **loading_kwargs(allow_pickle))
    model.eval()
    if quantize:
        return quantize_linear_layers(model)
    return model.to("cuda") if torch.cuda.is_available() else model


def quantize_linear_layers(model, per_channel: bool = True):
    """Dynamic int8 (CPU): Linear weights stored as int8, activations quantised batch by batch on the fly.

    Per-channel weight scales (one per output unit) instead of one per matrix: the same fbgemm kernel speed, and
    on MiniLM fine-tuned for SST-2 / CoNLL / SQuAD they stay within 1 point of float32 where per-tensor scales lost
    2 points of SST-2 accuracy (bench/serving.py measures both).
    """
    import warnings

    import torch
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():  # torch's notices that eager quantisation moves to torchao: noise for a CLI user
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)


def read_inputs(task, cfg, args) -> list[dict]:
    if args.input:
        return task.examples_from_file(args.input, cfg)
    fields = {k: getattr(args, k) for k in ("text", "text_pair", "question", "context") if getattr(args, k) is not None}
    if not fields:
        raise ConfigError("nothing to predict: pass --text, --question/--context or --input FILE")
    return task.examples_from_text(cfg, **fields)


def predict(task, model, tokenizer, cfg, labels, examples: list[dict], batch_size: int) -> list[dict]:
    from finetune.inference import predict_features

    features = task.encode(examples, tokenizer, cfg, labels, with_labels=False)
    return predict_features(task, model, examples, features, tokenizer, cfg, labels, batch_size)


def load_settings(args):
    """(task, cfg, labels) of args.model with the flags applied and checked, before any data or weights are read."""
    for name in ("batch_size", "num_threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name}: must be >= 1, got {getattr(args, name)}")
    if args.backend == "onnxruntime":  # an exported folder need not hold torch weights
        from finetune.onnxrt.runtime import onnx_positions

        positions = onnx_positions(args.model, args.quantize)
    else:
        positions = checkpoint_positions(args.model, args.allow_pickle_weights)
    task, cfg, labels = load_task(args.model, positions)
    cfg = cfg.with_values(flag_values(cfg, args))  # checked below, the errors naming the flags
    if args.label_names is not None:
        labels, values = task.rename_classes(cfg, labels, args.label_names)
        cfg = cfg.with_values(values)
    check_lengths(cfg, positions, args)
    return task, cfg, labels


def load_checkpoint(task, cfg, args):
    """(model, tokenizer) of args.model, ready to predict."""
    from mlm.core.hf import fit_tokenizer_to_model, load_tokenizer, usable_positions
    from mlm.core.threads import use_threads

    threads = use_threads(args.num_threads)
    tokenizer = load_tokenizer(args.model, field="--model")
    if args.backend == "onnxruntime":
        from finetune.onnxrt.runtime import load_onnx_model

        model = load_onnx_model(args.model, args.quantize, threads)
    else:
        model = load_model(task, args.model, args.quantize, args.allow_pickle_weights)
    check_lengths(cfg, usable_positions(model.config, model), args)  # the model itself shows any position offset
    fit_tokenizer_to_model(tokenizer, model)
    return model, tokenizer


def main(argv: list[str]) -> None:
    from mlm.core.runlog import logger, setup_console_logging

    args = build_parser().parse_args(argv)
    setup_console_logging(True)
    check_output(args.output, args.input)
    task, cfg, labels = load_settings(args)
    examples = read_inputs(task, cfg, args)
    if not examples:
        raise DataError(f"{args.input}: no inputs found")
    model, tokenizer = load_checkpoint(task, cfg, args)
    start = time.perf_counter()
    records = predict(task, model, tokenizer, cfg, labels, examples, args.batch_size)
    seconds = time.perf_counter() - start
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if args.output:  # temp file + rename: a failure never leaves half a file in place of an earlier one
        try:
            with written_whole(args.output) as tmp, open(tmp, "w", encoding="utf-8") as f:
                f.write(lines)
        except OSError as e:
            raise DataError(f"--output: cannot write {args.output} ({e.strerror})") from None
    else:
        sys.stdout.write(lines)
    logger.info("%d predictions in %.2fs (%.1f/s)%s", len(records), seconds, len(records) / max(seconds, 1e-9),
                f", written to {args.output}" if args.output else "")
