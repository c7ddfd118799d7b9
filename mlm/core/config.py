"""Typed run configuration: dataclasses whose `help` metadata is the `--help` text.

A run is configured by an optional recipe (a small YAML of field deltas) and then flags of the same
names, which win over the recipe:

    cfg = parse_config(PretrainConfig, ["--recipe", "recipes/pretrain/demo.yaml", "--max_steps", "50"])

Unknown keys, bad values and contradictions raise ConfigError with a one-line message naming the field.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import shlex
from dataclasses import dataclass, field
from typing import Literal, Optional, TypeVar

import yaml

from mlm.core.budget import check_budget_schedule, parse_duration
from mlm.errors import ConfigError


# Metric names (suffixes) where smaller is better: the default of greater_is_better.
LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse", "error", "perplexity")
# Trainer's lr_scheduler_type names that transformers.get_scheduler builds from warmup and total steps alone.
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial",
              "inverse_sqrt")
# Fields whose values are never written anywhere (training_args.json, checkpoints, model cards).
SECRET_FIELDS = frozenset({"hub_token"})
# Trainer's --do_* switches a config may have (fine-tuning adds do_predict).
DO_SWITCHES = ("do_train", "do_eval", "do_predict")


def arg(default, help: str, **kw):
    """A dataclass field carrying its `--help` text."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainingConfig:
    """Fields of the shared training loop (pretraining and fine-tuning alike)."""

    output_dir: str = arg("outputs/run", "Where checkpoints, logs, metrics and the final model are written.")
    overwrite_output_dir: bool = arg(False, "Allow writing into an output_dir that already holds a finished run.")
    seed: int = arg(42, "Seed for initialisation, data order, masking and dropout.")
    per_device_train_batch_size: int = arg(32, "Training sequences per device per micro-batch.")
    per_device_eval_batch_size: int = arg(64, "Evaluation sequences per device per batch.")
    gradient_accumulation_steps: int = arg(1, "Micro-batches accumulated before each optimizer step.")
    global_batch_size: Optional[int] = arg(
        None,
        "If set, gradient_accumulation_steps is derived from it: global = per_device x processes x accumulation.",
    )
    learning_rate: float = arg(5e-5, "Peak learning rate of AdamW.")
    weight_decay: float = arg(0.01, "AdamW weight decay (not applied to biases and LayerNorm weights).")
    adam_beta1: float = arg(0.9, "AdamW beta1.")
    adam_beta2: float = arg(0.999, "AdamW beta2.")
    adam_epsilon: float = arg(1e-8, "AdamW epsilon.")
    layer_lr_decay: float = arg(
        1.0, "Layer-wise learning-rate decay for fine-tuning (ELECTRA, DeBERTa: 0.8-0.9): the task head and pooler "
        "train at learning_rate, the top encoder layer at learning_rate x decay, each layer below at one more factor, "
        "the embeddings at the lowest. 1.0: every parameter at learning_rate.")
    max_grad_norm: float = arg(1.0, "Gradient clipping norm (0 disables clipping).")
    num_train_epochs: float = arg(3.0, "Epochs over the training data (ignored when max_steps > 0).")
    max_steps: int = arg(-1, "Total optimizer steps; overrides num_train_epochs when > 0.")
    max_time: Optional[str] = arg(
        None, "Wall-clock training budget, e.g. 90s, 15m, 2h, 1h30m: the learning-rate schedule (warmup and decay) "
        "runs on the fraction of the budget used, and the run stops when it is spent, then evaluates, checkpoints "
        "and exports. It ends earlier only at max_steps (num_train_epochs is then ignored). The clock counts "
        "evaluations and checkpoints and survives a resume.")
    warmup_ratio: Optional[float] = arg(None, "Fraction of steps with linear warmup (exclusive with warmup_steps).")
    warmup_steps: Optional[int] = arg(None, "Steps of linear warmup (exclusive with warmup_ratio).")
    lr_scheduler_type: Literal[SCHEDULERS] = arg(
        "linear", "Schedule after warmup, Trainer's names: linear / cosine decay to 0, constant (ignores warmup), "
        "constant_with_warmup, cosine_with_restarts, polynomial, inverse_sqrt.")
    optim: Literal["adamw_torch_fused", "adamw_torch", "sgd", "adafactor"] = arg(
        "adamw_torch_fused", "Optimizer, Trainer's names (adamw_torch_fused: one fused kernel, the fastest AdamW).")
    logging_steps: int = arg(10, "Write a log.jsonl line (and update the progress bar) every N steps.")
    eval_strategy: Optional[Literal["no", "steps", "epoch"]] = arg(
        None, "When to evaluate during training: steps (every eval_steps), epoch, or no (only at the end). "
        "Default: steps when eval_steps is set, else epoch. Alias --evaluation_strategy.",
        aliases=["--evaluation_strategy"])
    eval_steps: Optional[float] = arg(
        None, "Evaluate every N steps, or with a value below 1 at every such fraction of the run (of the max_time "
        "budget when set), as Trainer (default: once per epoch and at the end).")
    save_strategy: Optional[Literal["no", "steps", "epoch"]] = arg(
        None, "When to write checkpoints: steps (every save_steps), epoch, or no. Default: at every evaluation.")
    save_steps: Optional[float] = arg(
        None, "Checkpoint every N steps, or with a value below 1 at every such fraction of the run (of the max_time "
        "budget when set) (default: at every evaluation).")
    save_total_limit: int = arg(2, "Keep the last N checkpoints (the best one is kept in addition).")
    resume_from_checkpoint: Optional[str] = arg(None, "A checkpoints/step-N directory, or 'latest' in output_dir.")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = arg(
        "auto", "auto: bf16 on GPUs that support it, fp32 on CPUs (bf16 is ~40x slower on CPUs without it)."
    )
    torch_compile: bool = arg(False, "Compile the model with torch.compile (pays off on long runs).")
    metric_for_best_model: Optional[str] = arg(None, "Evaluation metric that picks the best checkpoint, e.g. f1.")
    greater_is_better: Optional[bool] = arg(
        None, "Whether a larger metric is better (default: False for losses, errors and perplexity, else True).")
    early_stopping_patience: Optional[int] = arg(None, "Stop after N evaluations without improvement.")
    load_best_model_at_end: bool = arg(True, "With metric_for_best_model, restore the best checkpoint at the end.")
    max_eval_samples: Optional[int] = arg(None, "Evaluate on at most this many examples (quick runs).")
    num_threads: Optional[int] = arg(
        None, "CPU threads per process for torch's operators (default: OMP_NUM_THREADS, else the cores this process "
        "may use, shared among the processes launched here); on a busy machine fewer can be faster.")
    ddp_timeout: int = arg(7200, "Seconds a process waits for the others (rank 0 may be packing a large corpus).")
    report_to: Literal["none", "all", "tensorboard", "wandb", "mlflow"] = arg(
        "none", "Experiment tracker (all: every installed one); mlflow keeps a local store in output_dir/mlruns.")
    run_name: Optional[str] = arg(None, "A name for the run: tracker run name and model card (default: output_dir's).")
    push_to_hub: bool = arg(False, "Upload output_dir (model, tokenizer, card, results; not checkpoints) to the "
                            "Hugging Face hub at the end of the run; the hub must be reachable at the start.")
    hub_model_id: Optional[str] = arg(None, "The hub repository to push to, owner/name (default: output_dir's name).")
    hub_token: Optional[str] = arg(None, "Hub token (default: the one `hf auth login` saved); never written to disk.")
    disable_tqdm: bool = arg(False, "Hide the progress bar.")
    gradient_checkpointing: bool = arg(
        False, "Recompute each layer's activations in the backward pass: less memory, ~30%% more compute.")
    dataloader_num_workers: Optional[int] = arg(
        None, "Worker processes that collate batches (0: in the training process; default 2 on a GPU, 0 on CPUs).")
    do_train: Optional[bool] = arg(None, "Trainer's switch: mlm always trains (score a model with `mlm evaluate`).",
                                   nargs="?", const=True)
    do_eval: Optional[bool] = arg(
        None, "Trainer's switch: when any --do_* flag is given, evaluation runs only with --do_eval.", nargs="?",
        const=True)
    fp16: bool = arg(False, "Trainer's spelling of --mixed_precision fp16 (CUDA GPUs only).")
    bf16: bool = arg(False, "Trainer's spelling of --mixed_precision bf16 (GPUs with bf16, CPUs with AVX-512 BF16/AMX).")
    allow_pickle_weights: bool = arg(
        False, "Load a model folder that has only pickle weights (pytorch_model.bin): loading them can run code, "
        "so only for folders you trust.")

    def __post_init__(self):
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("eval_steps", "save_steps"):  # N steps, or a fraction of the run (Trainer's meaning)
            value = getattr(self, name)
            if value is not None and not (0 < value < 1 or (value >= 1 and float(value).is_integer())):
                raise ConfigError(f"{name}: must be a whole number of steps >= 1 or a fraction in (0, 1), got {value}")
            if value is not None and value >= 1:
                setattr(self, name, int(value))  # "500" parses as 500.0: keep a step count an int
        for name in ("global_batch_size", "early_stopping_patience", "num_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}: must be >= 1, got {value}")
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ConfigError("warmup_ratio and warmup_steps are both set: choose one")
        if self.warmup_ratio is not None and not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.max_time is not None:
            self.time_budget()  # a bad duration fails here, naming the key
            if self.warmup_steps is not None:
                raise ConfigError("warmup_steps: with max_time the warmup is a fraction of the budget: use warmup_ratio")
            check_budget_schedule(self.lr_scheduler_type)
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("max_steps and num_train_epochs are both <= 0: nothing to train")
        if not 0 < self.learning_rate < math.inf:
            raise ConfigError(f"learning_rate: must be a finite number > 0, got {self.learning_rate}")
        if not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"layer_lr_decay: must be in (0, 1], got {self.layer_lr_decay}")
        if self.early_stopping_patience is not None and self.metric_for_best_model is None:
            raise ConfigError("early_stopping_patience needs metric_for_best_model")
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith(LOWER_IS_BETTER)
        if (self.hub_model_id or self.hub_token) and not self.push_to_hub:
            raise ConfigError("hub_model_id / hub_token are only used with --push_to_hub")
        if self.dataloader_num_workers is not None and self.dataloader_num_workers < 0:
            raise ConfigError(f"dataloader_num_workers: must be >= 0, got {self.dataloader_num_workers}")
        self._resolve_trainer_spellings()

    def _resolve_trainer_spellings(self) -> None:
        """Trainer's flags with Trainer's meaning, onto mlm's own fields (the one place they are mapped)."""
        if self.fp16 and self.bf16:
            raise ConfigError("fp16 and bf16 are both set: choose one")
        for name in ("fp16", "bf16"):
            if getattr(self, name):
                if self.mixed_precision not in ("auto", name):
                    raise ConfigError(f"{name} contradicts mixed_precision {self.mixed_precision}")
                self.mixed_precision = name
        switches = [name for name in DO_SWITCHES if hasattr(self, name)]
        if any(getattr(self, name) is not None for name in switches):  # Trainer: what is not asked for does not run
            for name in switches:
                setattr(self, name, bool(getattr(self, name)))
            if not self.do_train:
                raise ConfigError("do_train: mlm always trains; to score a trained model on labelled files use "
                                  "`mlm evaluate --model DIR --input FILE`")
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps  # Trainer's default
        if self.save_strategy == "steps" and self.save_steps is None:
            raise ConfigError("save_strategy steps needs save_steps")
        without = self.eval_strategy == "no" or self.save_strategy == "no" or self.do_eval is False
        if self.metric_for_best_model and without:
            raise ConfigError("metric_for_best_model needs evaluations and checkpoints during training: it cannot go "
                              "with eval_strategy no, save_strategy no or without --do_eval")

    def time_budget(self) -> Optional[float]:
        """max_time in seconds, or None without a budget."""
        return None if self.max_time is None else parse_duration(self.max_time, "max_time")

    def evaluates(self) -> bool:
        """Whether the run evaluates at all (--do_* flags may leave evaluation out)."""
        return self.do_eval is not False

    def accumulation_steps(self, num_processes: int) -> int:
        """Derived accumulation: from global_batch_size when set, else the field itself."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps
        per_step = self.per_device_train_batch_size * num_processes
        if self.global_batch_size % per_step:
            raise ConfigError(
                f"global_batch_size: {self.global_batch_size} is not a multiple of per_device_train_batch_size x "
                f"processes = {per_step}"
            )
        return self.global_batch_size // per_step


C = TypeVar("C")


# `--help` sections, in this order: what the run reads and builds first, then how it trains. A field not named here
# is a data field (the corpus, the task's files, columns, windows, masking).
HELP_GROUPS = {
    "model": ("model_name_or_path", "tokenizer_name", "vocab_size", "do_lower_case", "model_preset", "hidden_size",
              "num_hidden_layers", "num_attention_heads", "intermediate_size", "tie_word_embeddings",
              "position_embedding_init", "hidden_dropout_prob", "attention_probs_dropout_prob", "allow_pickle_weights",
              "gradient_checkpointing"),
    "optimisation": ("per_device_train_batch_size", "gradient_accumulation_steps", "global_batch_size", "learning_rate",
                     "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "layer_lr_decay", "max_grad_norm",
                     "optim"),
    "schedule": ("num_train_epochs", "max_steps", "max_time", "warmup_ratio", "warmup_steps", "lr_scheduler_type", "seed"),
    "evaluation": ("do_train", "do_eval", "do_predict", "per_device_eval_batch_size", "eval_strategy", "eval_steps",
                   "max_eval_samples", "max_test_samples", "metric_for_best_model", "greater_is_better",
                   "early_stopping_patience", "load_best_model_at_end"),
    "checkpointing": ("output_dir", "overwrite_output_dir", "save_strategy", "save_steps", "save_total_limit",
                      "resume_from_checkpoint", "push_to_hub", "hub_model_id", "hub_token"),
    "distillation": ("teacher", "distill_alpha", "temperature", "student_layers", "cosine_weight"),
    "runtime": ("mixed_precision", "fp16", "bf16", "torch_compile", "num_threads", "dataloader_num_workers", "ddp_timeout",
                "logging_steps", "report_to", "run_name", "disable_tqdm"),
}


def _group_help(parser) -> None:
    """Put each field's flag under its HELP_GROUPS section (data first), so --help reads data, model, then the
    loop's settings; parsing is unchanged (argument groups only arrange the help)."""
    section = {name: title for title, names in HELP_GROUPS.items() for name in names}
    groups = {title: parser.add_argument_group(title) for title in ("data", *HELP_GROUPS)}
    parser._action_groups.remove(groups["data"])  # data first, right after the general options
    parser._action_groups.insert(2, groups["data"])
    general = {"help", "recipe"}
    for holder in parser._action_groups[:2]:
        for action in list(holder._group_actions):
            if action.dest in general:
                continue
            holder._group_actions.remove(action)
            groups[section.get(action.dest, "data")]._group_actions.append(action)


class _Parser:
    """HfArgumentParser whose errors become ConfigError (one line) instead of usage dumps."""

    def __init__(self, cls, prog: str):
        from transformers import HfArgumentParser

        class Strict(HfArgumentParser):
            def error(self, message):  # argparse calls this for bad values
                raise ConfigError(message)

        # No abbreviations: "--rec x" or "--learn 1" silently standing for another flag hides typos.
        self.parser = Strict(cls, prog=prog, description=(cls.__doc__ or "").strip(), allow_abbrev=False)
        self.parser.add_argument("--recipe", default=None, help="YAML file of field values; flags win over it.")
        _group_help(self.parser)


def read_recipe(path: str) -> dict:
    """A recipe file as a mapping (safe YAML); ConfigError naming the file (and line) when it cannot be one."""
    if not os.path.isfile(path):
        raise ConfigError(f"--recipe: {path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of field: value")
    return data


def load_recipe(path: str, cls) -> dict:
    """Read a recipe with safe YAML and reject keys the config does not have."""
    data = read_recipe(path)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        if isinstance(value, (list, dict)):
            raise ConfigError(f"{path}: {key}: expected one value, got a {'list' if isinstance(value, list) else 'mapping'}")
        if value is None and fields[key].default is not None:  # (HfArgumentParser rewrites field types)
            raise ConfigError(f"{path}: {key}: null is not allowed (remove the key for the default, "
                              f"{fields[key].default!r})")
    return data


def parse_config(cls: type[C], argv: list[str], prog: str = "mlm") -> C:
    """Recipe (optional) + flags -> a validated config instance of `cls`."""
    parser = _Parser(cls, prog).parser
    path = recipe_path(argv)
    recipe = load_recipe(path, cls) if path else {}
    argv, nulls = _take_nulls(list(argv), {f.name for f in dataclasses.fields(cls) if f.default is None})
    # Recipe values go through the same string parsing as flags, so their types are checked too; "--key=value"
    # keeps a value that starts with "--" a value.
    recipe_argv = []
    for key, value in recipe.items():
        if value is None:
            nulls.setdefault(key, None)
        elif key not in nulls:  # a flag's null wins over the recipe's value
            recipe_argv.append(f"--{key}={value}")
    parser.set_defaults(**nulls)
    try:
        *outputs, extra = parser.parse_args_into_dataclasses(recipe_argv + list(argv), return_remaining_strings=True)
    except ConfigError as e:
        bad = [key for key in recipe if f"--{key}" in str(e)]
        raise ConfigError(f"{e} (from {path})" if bad and not _given(argv, bad[0]) else str(e)) from None
    except TypeError as e:
        raise ConfigError(str(e)) from None
    cfg = outputs[0]  # outputs[1], when present, is the namespace holding --recipe
    if extra:
        names = [f"--{f.name}" for f in dataclasses.fields(cls)]
        close = difflib.get_close_matches(extra[0].split("=")[0], names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"unknown option {extra[0]}{hint}")
    # Where the values came from, for training_args.json and the model card (not a field: never compared or saved
    # as a setting).
    flags = _redacted(argv)
    cfg.origin = {"command": " ".join(prog.split()[:2] + [shlex.quote(a) for a in flags]), "recipe": path,
                  "recipe_values": {k: ("<hidden>" if k in SECRET_FIELDS else v) for k, v in recipe.items()},
                  "flags": flags}
    return cfg


def _redacted(argv: list[str]) -> list[str]:
    """argv with the values of secret fields replaced."""
    out = list(argv)
    for i, token in enumerate(out):
        name, eq, _ = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name in SECRET_FIELDS:
            if eq:
                out[i] = f"--{name}=<hidden>"
            elif i + 1 < len(out):
                out[i + 1] = "<hidden>"
    return out


def recipe_path(argv: list[str]) -> Optional[str]:
    """The value of --recipe PATH / --recipe=PATH (the last one wins, as for any flag)."""
    path = None
    for i, token in enumerate(argv):
        if token == "--recipe":
            path = argv[i + 1] if i + 1 < len(argv) else ""
        elif token.startswith("--recipe="):
            path = token.split("=", 1)[1]
    if path is not None and not path.strip():  # e.g. an unset $RECIPE: never silently the defaults
        raise ConfigError("--recipe: expected a YAML file, got nothing")
    return path


def _take_nulls(argv: list[str], optional: set[str]) -> tuple[list[str], dict]:
    """Flags `--key null` / `--key=null` of optional fields (default None), taken out of argv as {key: None}: the flag form of
    a recipe's `key: null`, to unset a recipe's value."""
    kept, nulls, i = [], {}, 0
    while i < len(argv):
        name, eq, value = argv[i][2:].partition("=") if argv[i].startswith("--") else ("", "", "")
        if name in optional and eq and value.lower() == "null":
            nulls[name], i = None, i + 1
        elif name in optional and not eq and i + 1 < len(argv) and argv[i + 1].lower() == "null":
            nulls[name], i = None, i + 2
        else:
            kept.append(argv[i])
            i += 1
    return kept, nulls


def _given(argv: list[str], key: str) -> bool:
    return any(token == f"--{key}" or token.startswith(f"--{key}=") for token in argv)
