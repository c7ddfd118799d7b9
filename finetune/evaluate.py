"""`mlm evaluate`: score a fine-tuned checkpoint on labelled files with its task's own metrics.

    mlm evaluate --model outputs/finetune-cls --input dev.tsv --input other.csv
    mlm evaluate --model outputs/finetune-ner --input eng.testa eng.testb --output_dir eval/

Each input is read as fine-tuning reads a validation file (the same layouts, and the cls table flags of
`mlm predict`), run through the same inference, and scored by the same metric functions, so the numbers
equal fine-tuning's eval_* for the same file. Per input NAME (its file name without .tsv/.jsonl/...):
<output_dir>/eval_NAME.json (the metrics) and <output_dir>/predictions/NAME.jsonl (as `mlm predict` writes).
"""
from __future__ import annotations

import os

from finetune.config import input_name
from mlm.errors import ConfigError


def build_parser():
    from finetune.predict import add_checkpoint_options, strict_parser

    p = strict_parser("mlm evaluate", __doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, action="extend", nargs="+", metavar="FILE",
                   help="Labelled files in any layout `mlm finetune` reads (repeat --input, or list several).")
    p.add_argument("--output_dir", help="Where eval_NAME.json and predictions/NAME.jsonl go (default: --model).")
    add_checkpoint_options(p)
    return p


def input_names(paths: list[str]) -> dict[str, str]:
    """{name: path}, refusing two inputs of one name (their results would overwrite each other)."""
    names = {}
    for path in paths:
        name = input_name(path)
        if name in names:
            raise ConfigError(f"--input: {names[name]} and {path} are both named {name!r}; copy one under another name")
        names[name] = path
    return names


def check_output_dir(folder: str) -> None:
    if not os.path.isdir(folder):
        raise ConfigError(f"--output_dir: {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--output_dir: cannot write in {folder}")


def headline(metrics: dict) -> str:
    """The flat scores of a metrics dict, for the log line."""
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


def main(argv: list[str]) -> dict[str, dict]:
    from finetune.inference import score
    from finetune.predict import load_checkpoint, load_settings
    from finetune.common import write_predictions
    from mlm.core.runlog import logger, setup_console_logging, write_json

    args = build_parser().parse_args(argv)
    setup_console_logging(True)
    inputs = input_names(args.input)
    task, cfg, labels = load_settings(args)  # (checks --model first: it is the default output_dir)
    output_dir = args.output_dir or args.model
    check_output_dir(output_dir)
    examples = {name: task.read_labelled(path, cfg) for name, path in inputs.items()}  # bad data fails before loading
    model, tokenizer = load_checkpoint(task, cfg, args)
    results = {}
    for name, path in inputs.items():
        features = task.encode(examples[name], tokenizer, cfg, labels, with_labels=False)
        metrics, records = score(task, model, examples[name], features, tokenizer, cfg, labels, args.batch_size)
        results[name] = {"input": path, "examples": len(examples[name]), **metrics}
        write_json(os.path.join(output_dir, f"eval_{name}.json"), results[name], sort_keys=False)
        write_predictions(os.path.join(output_dir, "predictions"), name, records, task)
        logger.info("%s: %d %s; %s", path, len(examples[name]), task.UNITS[0], headline(metrics))
    logger.info("written to %s: %s", output_dir, ", ".join(f"eval_{name}.json" for name in inputs))
    return results
