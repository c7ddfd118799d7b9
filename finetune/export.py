"""`mlm export`: a fine-tuned checkpoint -> model.onnx (+ model.int8.onnx) for `mlm predict --backend onnxruntime`.

    mlm export --model outputs/finetune-cls --quantize             # model.onnx, model.int8.onnx beside the weights
    mlm export --model outputs/finetune-cls --onnx serve/cls       # a folder of its own, without the torch weights
    mlm predict --model serve/cls --backend onnxruntime --quantize --text "a gripping film"

Every task (cls, ner, qa) exports the same way: the graph maps input_ids, attention_mask (and token_type_ids when
the model uses them) of any batch size and length to the head's outputs, and prediction decodes them with the
task's own code. Needs `pip install mlm[onnx]` (onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import os
import shutil

from mlm.errors import ConfigError, DataError

SIDE_FILES = ("config.json", "mlm_task.json")  # what prediction reads besides the graph and the tokenizer


def build_parser():
    from finetune.predict import strict_parser

    p = strict_parser("mlm export", __doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="A fine-tuned checkpoint directory.")
    p.add_argument("--onnx", help="Folder to write to (default: --model itself); config.json, mlm_task.json and the "
                   "tokenizer are copied there, so it serves on its own.")
    p.add_argument("--quantize", action="store_true",
                   help="Also write model.int8.onnx: dynamic int8 of the MatMul weights (per output channel).")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset of the graph.")
    p.add_argument("--allow_pickle_weights", action="store_true",
                   help="Load a model with only pickle weights (pytorch_model.bin): they can run code; trusted folders only.")
    return p


def check_installed() -> None:
    """One line naming the extra when a package the export needs is missing."""
    from finetune.onnxrt.runtime import INSTALL_HINT

    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            raise ConfigError(f"mlm export needs {name}, which is not installed ({INSTALL_HINT})") from None


def output_folder(args) -> str:
    out = args.onnx or args.model
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--onnx: {out} is a file; name a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--onnx: cannot create {out} ({e.strerror})") from None
    return out


def copy_side_files(model_dir: str, out: str, tokenizer) -> None:
    """config.json, mlm_task.json and the tokenizer as loaded (before fitting it to the model: prediction refits it)."""
    for name in SIDE_FILES:
        if os.path.isfile(os.path.join(model_dir, name)):
            shutil.copyfile(os.path.join(model_dir, name), os.path.join(out, name))
    tokenizer.save_pretrained(out)


def max_difference(model, path: str, sample: dict) -> float:
    """Largest |ONNX Runtime - torch| over the outputs of the sample batch: a check that the graph is the model."""
    import torch

    from finetune.onnxrt.runtime import OnnxModel, open_session

    graph = OnnxModel(open_session(path, torch.get_num_threads()), model.config)
    with torch.no_grad():
        expected = model(**sample)
    got = graph(**sample)
    return max(float((getattr(got, name) - value).abs().max()) for name, value in expected.items())


def main(argv: list[str]) -> None:
    from finetune.onnxrt.export import export_graph
    from finetune.onnxrt.quantize import quantize_dynamic_int8
    from finetune.onnxrt.runtime import FP32_FILE, INT8_FILE
    from finetune.predict import checkpoint_positions, load_model, load_task
    from mlm.core.hf import fit_tokenizer_to_model, load_tokenizer, usable_positions
    from mlm.core.runlog import logger, setup_console_logging

    args = build_parser().parse_args(argv)
    setup_console_logging(True)
    check_installed()
    task, _, _ = load_task(args.model, checkpoint_positions(args.model, args.allow_pickle_weights))
    out = output_folder(args)
    tokenizer = load_tokenizer(args.model, field="--model")
    if os.path.abspath(out) != os.path.abspath(args.model):
        copy_side_files(args.model, out, tokenizer)
    model = load_model(task, args.model, quantize=False, allow_pickle=args.allow_pickle_weights).cpu()
    fit_tokenizer_to_model(tokenizer, model)
    fp32 = os.path.join(out, FP32_FILE)
    sample = export_graph(model, tokenizer, fp32, usable_positions(model.config, model), opset=args.opset)
    diff = max_difference(model, fp32, sample)
    if diff > 1e-3:  # a graph that is not the model must not be served
        os.remove(fp32)
        raise DataError(f"{args.model}: the exported graph differs from the model by {diff:.2g} on a sample batch")
    logger.info("wrote %s (ONNX Runtime = torch within %.1e on a sample batch)", fp32, diff)
    if args.quantize:
        quantize_dynamic_int8(fp32, os.path.join(out, INT8_FILE))
        logger.info("wrote %s (dynamic int8)", os.path.join(out, INT8_FILE))
