"""Knowledge distillation: the pieces pretraining and fine-tuning share (the losses live with each track).

    mlm pretrain --teacher T --model_name_or_path T --tokenizer_name T --student_layers 0,2,4 ...   (pretrain/distill.py)
    mlm finetune --task ner --teacher T --model_name_or_path BACKBONE --student_layers 0,2,4 ...   (finetune/distill.py)

The student learns from the teacher's temperature-softened distribution over the same targets the hard loss
counts (masked tokens here; examples, labelled sub-words or answer positions for the tasks), mixed with the hard
loss by `distill_alpha`. Both terms are SUMS over those targets and the count stays the hard loss's count, so the
loop's exact normalisation over the global batch (accumulation, processes) holds for the mix as it does for the
plain loss. The teacher runs under no_grad in eval mode; it is no attribute of the student, so it is neither in
the optimizer nor in any checkpoint, and the settings naming it are recorded (and compared on resume) with the
others.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from mlm.core.config import arg
from mlm.errors import ConfigError


@dataclass
class DistillConfig:
    """Fields of a distillation run (a mixin of PretrainConfig and FinetuneConfig)."""

    teacher: Optional[str] = arg(
        None, "Distil from this model folder: a fine-tuned task model (mlm_task.json or an AutoModelFor<Task> with "
        "the same labels) for finetune, a masked LM for pretrain; same vocabulary as the student.")
    distill_alpha: float = arg(
        0.5, "With --teacher: weight of the soft-target (KL) loss; the hard-label loss gets 1 - distill_alpha.")
    temperature: float = arg(2.0, "With --teacher: softmax temperature of teacher and student (the KL is scaled by T^2).")
    student_layers: Optional[str] = arg(
        None, "Keep only these layers of model_name_or_path, e.g. 0,2,4 (DistilBERT-style initialisation of a "
        "smaller student from a bigger model's layers); default: all.")

    def __post_init__(self):
        parent = getattr(super(), "__post_init__", None)  # TrainingConfig's, in the real configs
        if parent is not None:
            parent()
        if not 0 <= self.distill_alpha <= 1:
            raise ConfigError(f"distill_alpha: must be in [0, 1], got {self.distill_alpha}")
        if not 0 < self.temperature < float("inf"):
            raise ConfigError(f"temperature: must be a finite number > 0, got {self.temperature}")
        layer_indices(self.student_layers)  # the format now; the range once the model is loaded


def layer_indices(value: Optional[str]) -> Optional[list[int]]:
    """'0,2,4' -> [0, 2, 4]; None -> None. Increasing and distinct, so that the copy keeps the layers' order."""
    if value is None:
        return None
    try:
        indices = [int(part) for part in str(value).split(",")]
    except ValueError:
        raise ConfigError(f"student_layers: expected layer numbers separated by commas, e.g. 0,2,4; got {value!r}") from None
    if any(i < 0 for i in indices) or any(b <= a for a, b in zip(indices, indices[1:])):
        raise ConfigError(f"student_layers: layer numbers must be >= 0 and increasing, got {value!r}")
    return indices


# ------------------------------------------------------------------------------------------------ the loss


def soft_target_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                   keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(teacher || student) of the softmax over the last dim at `temperature`, times T^2: (..., C) -> (...).

    T^2 keeps the gradient's size independent of T (Hinton et al. 2015): d/d student = T * (p_student - p_teacher).
    `keep` (..., C) bool leaves classes out of both distributions (QA's padding positions).
    """
    s, t = student.float() / temperature, teacher.float() / temperature
    if keep is not None:  # after the division: the task's own -inf-ish fill could overflow for T < 1
        low = torch.finfo(torch.float32).min
        s, t = s.masked_fill(~keep, low), t.masked_fill(~keep, low)
    log_s, log_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=-1) * temperature**2


def mix(hard_sum: torch.Tensor, soft_sum: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * hard + alpha * soft: both sums over the same targets, so the hard loss's count divides both."""
    return (1 - alpha) * hard_sum + alpha * soft_sum


# ------------------------------------------------------------------------------------------ the student


def encoder_layers(model) -> nn.ModuleList:
    """The stack of transformer layers of a BERT-family model (DistilBERT's is under transformer)."""
    base = model.base_model
    for owner in (getattr(base, "encoder", None), getattr(base, "transformer", None)):
        layers = getattr(owner, "layer", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ConfigError(f"student_layers: {type(model).__name__} has no layer stack to take layers from "
                      "(BERT-family models only)")


def keep_layers(model, indices: Optional[list[int]]):
    """The model with only the layers `indices` (renumbered 0..k-1 in its state dict and config.json)."""
    if indices is None:
        return model
    layers = encoder_layers(model)
    if indices[-1] >= len(layers):
        raise ConfigError(f"student_layers: the model has {len(layers)} layers (0-{len(layers) - 1}), "
                          f"got layer {indices[-1]}")
    owner = model.base_model.encoder if hasattr(model.base_model, "encoder") else model.base_model.transformer
    owner.layer = nn.ModuleList([layers[i] for i in indices])
    model.config.num_hidden_layers = len(indices)  # DistilBERT maps the name to its n_layers
    return model


# ---------------------------------------------------------------------------------------- the teacher


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode (no dropout) and no gradients: the teacher is a fixed function of the batch."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def check_same_vocabulary(teacher_dir: str, tokenizer) -> None:
    """The teacher reads the student's input ids: its tokenizer must map every token to the same id."""
    from mlm.core.hf import load_tokenizer

    theirs = load_tokenizer(teacher_dir, field="teacher").get_vocab()
    ours = tokenizer.get_vocab()
    if theirs != ours:
        differ = sorted(set(theirs.items()) ^ set(ours.items()))
        raise ConfigError(f"teacher: {os.path.join(teacher_dir, 'tokenizer.json')}: another vocabulary than the "
                          f"student's tokenizer ({len(theirs)} vs {len(ours)} tokens, e.g. {differ[0][0]!r}); "
                          "pass the teacher's tokenizer with --tokenizer_name")


