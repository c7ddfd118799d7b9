"""The files a finished run leaves beside its model for people and tools that know Hugging Face's Trainer.

    training_args.json   every setting's final value, where it came from (recipe, flags), library versions
    all_results.json     train_* and eval_* (and test_*) metrics in Trainer's key style
    train_results.json   the train_* part; eval_results.json the eval_* part (test_results.json the test_* part)
    README.md            a model card with the hub's YAML front matter: task, base model, data, settings,
                         results and the command that reproduces the run
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Optional

from mlm.core.resume_settings import settings_of
from mlm.core.runlog import logger, write_json

LIBRARIES = ("mlm", "torch", "transformers", "tokenizers", "accelerate", "datasets", "safetensors")
# The hub's pipeline tag of each kind of run.
PIPELINE_TAGS = {"pretrain": "fill-mask", "cls": "text-classification", "ner": "token-classification",
                 "qa": "question-answering"}


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def trainer_results(metrics: dict) -> dict:
    """metrics in Trainer's key style: train_samples_per_second (not examples), train_steps_per_second; eval_*/test_*
    and epoch as they are."""
    results = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) or v is None}
    if "train_examples_per_second" in results:
        results["train_samples_per_second"] = results.pop("train_examples_per_second")
    runtime, steps = results.get("train_runtime"), results.get("global_step")
    if runtime and steps:
        results["train_steps_per_second"] = steps / runtime
    return results


def write_run_files(cfg, metrics: dict, kind: str, data: dict[str, str]) -> None:
    """All of the above into cfg.output_dir (main process), then the upload of --push_to_hub.
    `kind`: pretrain / cls / ner / qa; `data`: {split: file}."""
    out = cfg.output_dir
    origin = getattr(cfg, "origin", {})
    write_json(os.path.join(out, "training_args.json"), {
        "command": origin.get("command"), "recipe": origin.get("recipe"), "recipe_values": origin.get("recipe_values"),
        "flags": origin.get("flags"), "settings": settings_of(cfg), "versions": library_versions(),
    }, sort_keys=False)
    results = trainer_results(metrics)
    write_json(os.path.join(out, "all_results.json"), results)
    for prefix in ("train", "eval", "test"):
        part = {k: v for k, v in results.items() if k.startswith(prefix + "_") or k == "epoch"}
        if len(part) > 1:
            write_json(os.path.join(out, f"{prefix}_results.json"), part)
    with open(os.path.join(out, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(cfg, results, kind, data, origin.get("command")))
    if cfg.push_to_hub:
        from mlm.core.hub import push_to_hub

        logger.info("pushed to the hub: %s", push_to_hub(cfg))


def model_card(cfg, results: dict, kind: str, data: dict[str, str], command: Optional[str]) -> str:
    base = getattr(cfg, "model_name_or_path", None)
    name = cfg.run_name or os.path.basename(os.path.abspath(cfg.output_dir))
    what = "masked-language-model pretraining" if kind == "pretrain" else f"fine-tuning ({kind}: {PIPELINE_TAGS[kind]})"
    front = ["---", "library_name: transformers", f"pipeline_tag: {PIPELINE_TAGS[kind]}", "tags:", "- mlm",
             f"- {PIPELINE_TAGS[kind]}"]
    if base and not os.path.isdir(base):  # a hub id; a local folder means nothing on the hub
        front.append(f"base_model: {base}")
    lines = front + ["---", "", f"# {name}", "",
                     f"Trained with mlm by {what}"
                     + (f", from `{base}`." if base else ", from scratch."), ""]
    if data:
        lines += ["## Data", "", "| split | file |", "|---|---|"]
        lines += [f"| {split} | `{path}` |" for split, path in data.items()] + [""]
    scores = {k: v for k, v in results.items()
              if k.startswith(("eval_", "test_")) and not k.endswith("_runtime") and isinstance(v, float)}
    if scores:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in scores.items()] + [""]
    settings = settings_of(cfg)
    shown = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "global_batch_size",
             "max_steps", "num_train_epochs", "warmup_ratio", "warmup_steps", "lr_scheduler_type", "optim",
             "weight_decay", "max_seq_length", "mixed_precision", "seed")
    lines += ["## Training settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {settings[k]} |" for k in shown if settings.get(k) is not None]
    summary = f"{results.get('global_step')} steps in {results.get('train_runtime')} s"
    if isinstance(results.get("train_loss"), float):
        summary += f", average train loss {results['train_loss']:.4f}"
    lines += ["", f"All settings: `training_args.json`; {summary}.", ""]
    if command:
        lines += ["## Reproduce", "", "```bash", command, "```", ""]
    lines += ["## Framework versions", ""]
    lines += [f"- {k} {v}" for k, v in library_versions().items() if v] + [""]
    return "\n".join(lines)
