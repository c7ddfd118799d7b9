"""Fine-tuning, top to bottom: task data -> features -> model -> the shared loop -> metrics and predictions.

    mlm finetune --task ner --recipe recipes/finetune/ner.yaml        # or: make finetune TASK=ner
    accelerate launch -m mlm finetune --task cls --train_file train.csv --validation_file dev.csv

output_dir afterwards holds the final (best) model with its tokenizer and `mlm_task.json` (what
`mlm predict` needs), `metrics.json` (eval_* and test_*, or test_<name>_* for each of several --test_file a,b),
`log.jsonl`, `predictions/<split>.jsonl`
and `checkpoints/step-N/`.
"""
from __future__ import annotations

import os

from mlm.core.config import parse_config, read_recipe, recipe_path
from mlm.core.records import first_line
from finetune.task import TASK_FILE
from mlm.errors import ConfigError


def task_name_from_args(argv: list[str]) -> str | None:
    """--task from the flags (the last one, as for any flag), else the recipe's `task` key."""
    task = None
    for i, token in enumerate(argv):
        if token == "--task" and i + 1 < len(argv):
            task = argv[i + 1]
        elif token.startswith("--task="):
            task = token.split("=", 1)[1]
    path = recipe_path(argv)
    return task if task is not None or not path else _recipe_task(path)


def _recipe_task(path: str) -> str | None:
    if not os.path.isfile(path):
        raise ConfigError(f"--recipe: {path}: file not found")
    try:
        return read_recipe(path).get("task")
    except ConfigError:
        return None  # parse_config reports the error with its line


def parse_finetune_args(argv: list[str]):
    from finetune.task import TASKS

    task = task_name_from_args(argv)
    if task is None:
        if "-h" in argv or "--help" in argv:
            print("usage: mlm finetune --task {%s} [--recipe FILE.yaml] [--FIELD VALUE ...]\n"
                  "Run `mlm finetune --task NAME --help` for the fields of a task." % ",".join(TASKS))
            raise SystemExit(0)
        raise ConfigError(f"task: missing; pass --task {{{','.join(TASKS)}}}")
    if task not in TASKS:
        raise ConfigError(f"task: unknown task {task!r} (choose from {', '.join(TASKS)})")
    argv = argv if any(t == "--task" or t.startswith("--task=") for t in argv) else ["--task", task, *argv]
    return parse_config(TASKS[task].Config, argv, prog=f"mlm finetune --task {task}")


def command(argv: list[str]) -> None:
    """`mlm finetune ARGS` (registered in pyproject.toml under the `mlm.commands` entry points)."""
    main(parse_finetune_args(argv))


def dropout_overrides(cfg, path: str) -> dict:
    """--hidden_dropout_prob / --attention_probs_dropout_prob as config overrides of the backbone. A backbone
    pretrained without dropout (the budget recipes: faster, and better at a fixed budget) otherwise fine-tunes
    without it too, which overfits small task data; the fine-tuning recipes set 0.1, as Cramming does."""
    from transformers import AutoConfig

    from finetune.config import DROPOUTS
    from mlm.core.runlog import logger

    wanted = {name: getattr(cfg, name) for name in DROPOUTS if getattr(cfg, name) is not None}
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        return wanted  # from_pretrained then says what is wrong with the folder
    for name in wanted:
        if not hasattr(config, name):
            raise ConfigError(f"{name}: {path}: a {config.model_type} config has no {name}")
    if not wanted and getattr(config, "hidden_dropout_prob", None) == 0:
        logger.info("the backbone has no dropout (hidden_dropout_prob 0): fine-tuning keeps none; "
                    "--hidden_dropout_prob 0.1 --attention_probs_dropout_prob 0.1 to regularise")
    return wanted


def load_backbone(task, cfg, labels, tokenizer_size: int):
    """The task model on the backbone: a new head on top of the pretrained encoder (whose folder main's
    check_sources checked)."""
    from mlm.errors import DataError
    from mlm.core.hf import check_vocabulary, enable_activation_checkpointing, loading_kwargs, usable_positions
    from mlm.core.hub import locate

    path = locate(cfg.model_name_or_path, "model_name_or_path")
    try:
        model = task.AutoModel.from_pretrained(path, **task.model_kwargs(cfg, labels), **dropout_overrides(cfg, path),
                                               **loading_kwargs(cfg.allow_pickle_weights))
    except (OSError, ValueError) as e:
        raise DataError(f"model_name_or_path: cannot load {cfg.model_name_or_path}: {first_line(e)}") from None
    cfg.check_lengths(usable_positions(model.config, model))
    check_vocabulary(model.config, tokenizer_size)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model


ENCODER_PATH_LOG = {
    "transformers": "the model's own layers",
    "mlm_layers": "mlm's BERT layers (lane dropout masks; first-token-only last layer for sequence heads)",
    "unpadded": "mlm's BERT layers unpadded: variable-length attention (SDPA on nested tensors)",
}


def main(cfg) -> dict:
    import torch

    from finetune.common import write_predictions
    from finetune.distill import task_loss
    from finetune.config import is_test_split
    from finetune.inference import score
    from finetune.task import TASKS
    from mlm.core.hub import check_sources, tokenizer_source
    from mlm.core.loop import check_metric, LoopParts, train
    from mlm.core.plan import check_plan
    from mlm.core.accel import make_accelerator, shards_parameters
    from mlm.core.run_dir import check_output_dir, run_directory
    from finetune.saved import SavedTask
    from finetune.encoder_paths import encoder_path, training_loss
    from mlm.core.run_files import write_run_files
    from mlm.core.runlog import logger, plot_losses, write_json
    from mlm.core.distill import keep_layers, layer_indices
    from mlm.core.hf import fit_tokenizer_to_model, load_tokenizer

    task = TASKS[cfg.task]
    check_sources(cfg)
    check_output_dir(cfg)  # before reading and encoding the data
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    splits, found = task.load_splits(cfg)
    if found:  # the run's settings: the user's, with what the data resolved (the user's cfg stays as parsed)
        logger.info("from the data: %s", ", ".join(f"{k} {v!r}" for k, v in found.items()))
        cfg = cfg.with_values(found)
    labels = task.label_list(splits["train"], cfg)  # from the whole training split, before any sampling
    if cfg.max_train_samples is not None:
        splits["train"] = splits["train"][: cfg.max_train_samples]
    for split in splits:
        limit = cfg.max_eval_samples if split == "validation" else cfg.max_test_samples if is_test_split(split) else None
        if limit is not None:
            splits[split] = splits[split][:limit]
    logger.info("%s: %s; labels: %s", cfg.task, ", ".join(f"{len(v)} {k} {task.UNITS[0]}" for k, v in splits.items()),
                ", ".join(labels[:20]) + (" ..." if len(labels) > 20 else "") if labels else "-")

    tokenizer = load_tokenizer(*tokenizer_source(cfg))
    model = keep_layers(load_backbone(task, cfg, labels, len(tokenizer)), layer_indices(cfg.student_layers))
    fit_tokenizer_to_model(tokenizer, model)
    loss_fn = task_loss(task, cfg, labels, tokenizer, accelerator)  # task.loss, or with --teacher the distillation mix
    path = encoder_path(cfg, model, accelerator.device, shards_parameters(accelerator), task.HEAD_READS_FIRST_TOKEN)
    logger.info("training batches through %s", ENCODER_PATH_LOG[path])
    loss_fn = training_loss(loss_fn, path, task.HEAD_READS_FIRST_TOKEN)
    features = {
        split: task.encode(examples, tokenizer, cfg, labels, with_labels=split in ("train", "validation"))
        for split, examples in splits.items()
    }

    def evaluate_split(model, split: str):
        return score(task, model, splits[split], features[split], tokenizer, cfg, labels,
                     cfg.per_device_eval_batch_size, accelerator)

    evaluate = (lambda m: evaluate_split(m, "validation")[0]) if "validation" in splits else None
    if cfg.metric_for_best_model and evaluate is not None:  # a typo must not wait for the first evaluation
        check_metric(cfg, probe_metrics(task, model, splits["validation"], features["validation"], tokenizer, cfg,
                                        labels, accelerator))

    def export(model, state_dict, output_dir):
        model.save_pretrained(output_dir, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
        SavedTask.of_run(cfg, labels).write(os.path.join(output_dir, TASK_FILE))

    logger.info("encoded: %s", ", ".join(f"{split} {len(splits[split])} {task.UNITS[0]} -> {len(f)} {task.UNITS[1]}"
                                       for split, f in features.items()))
    lengths = [len(f["input_ids"]) for f in features["train"]] if cfg.group_by_length else None
    check_plan(cfg, accelerator, len(features["train"]))
    with run_directory(cfg, accelerator):  # the data is read and encoded: from here on output_dir is this run's
        parts = LoopParts(lambda b: task.collate(b, tokenizer), loss_fn, evaluate, export, lengths=lengths)
        metrics = train(cfg, accelerator, model, features["train"], parts)

        # The final (best) model on every evaluated split, with its predictions.
        final_model = accelerator.unwrap_model(model)
        for split in [s for s in splits if s != "train"]:
            split_metrics, records = evaluate_split(final_model, split)
            prefix = "eval" if split == "validation" else split  # test, or test_<name> for each of several test files
            metrics.update({f"{prefix}_{k}": v for k, v in split_metrics.items()})
            if accelerator.is_main_process:
                write_predictions(os.path.join(cfg.output_dir, "predictions"), split, records, task)
        if accelerator.is_main_process:
            write_json(os.path.join(cfg.output_dir, "metrics.json"), metrics)
            write_run_files(cfg, metrics, cfg.task, dict(cfg.data_files()))
            plot_losses(os.path.join(cfg.output_dir, "log.jsonl"), os.path.join(cfg.output_dir, "loss.png"))
            shown = [k for k in metrics if k.startswith(("eval_", "test_")) and isinstance(metrics[k], float)]
            logger.info("done: %s", ", ".join(f"{k} {metrics[k]:.4f}" for k in shown[:8]))
            logger.info("model written to %s", cfg.output_dir)
        return metrics


def probe_metrics(task, model, examples: list[dict], features: list[dict], tokenizer, cfg, labels, accelerator,
                  size: int = 64) -> dict:
    """The metrics of the untrained model on the first `size` examples: which names a run will report."""
    from finetune.inference import score

    probe = [f for f in features if f["example_index"] < size]
    return score(task, model, examples[:size], probe, tokenizer, cfg, labels, cfg.per_device_eval_batch_size,
                 accelerator)[0]
