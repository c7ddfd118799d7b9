"""Pretraining distillation (DistilBERT's objective): `mlm pretrain --teacher MLM_DIR`.

The soft-target loss is computed on the masked positions only: the sparse MLM head gathers them, so teacher and
student logits exist for K positions per row, not for the whole sequence. Shared pieces: mlm/core/distill.py.
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mlm.core.config import arg
from mlm.core.distill import DistillConfig, check_same_vocabulary, freeze, mix, soft_target_kl
from mlm.errors import ConfigError, UserError


@dataclass
class PretrainDistillConfig(DistillConfig):
    """DistillConfig with pretraining's extra term (a mixin of PretrainConfig)."""

    cosine_weight: float = arg(
        0.0, "With --teacher: weight of DistilBERT's cosine loss between student and teacher last hidden states at "
        "the masked positions (same hidden size only); 0: off.")

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.cosine_weight < float("inf"):
            raise ConfigError(f"cosine_weight: must be a finite number >= 0, got {self.cosine_weight}")
        if self.teacher and not (self.tokenizer_name or self.model_name_or_path):
            self.tokenizer_name = self.teacher  # the teacher reads the student's ids: its vocabulary, not a new one



# ------------------------------------------------------------------------------------- pretraining loss


def load_mlm_teacher(cfg, tokenizer, student_hf, device):
    """The teacher of `mlm pretrain --teacher`: a SparseMaskedLM on the same vocabulary, frozen, on `device`."""
    from mlm.core.hf import check_checkpoint_dir
    from mlm.pretrain.model import SparseMaskedLM, build_masked_lm

    folder = check_checkpoint_dir(cfg.teacher, field="teacher", allow_pickle=cfg.allow_pickle_weights)
    check_same_vocabulary(folder, tokenizer)
    if not has_head_weights(folder):  # from_pretrained would start a missing head random: no teacher at all
        raise ConfigError(f"teacher: {folder} has no MLM head weights (an encoder-only checkpoint?); the teacher "
                          "must be a masked LM")
    try:
        hf = build_masked_lm(folder, cfg.model_preset, len(tokenizer), cfg.max_seq_length,
                             allow_pickle_weights=cfg.allow_pickle_weights)
    except UserError as e:  # its messages name the student's field
        raise type(e)("teacher: " + str(e).removeprefix("model_name_or_path: ")) from None
    if hf.config.vocab_size != student_hf.config.vocab_size:
        raise ConfigError(f"teacher: {cfg.teacher}/config.json: vocab_size {hf.config.vocab_size}, the student's is "
                          f"{student_hf.config.vocab_size}; the soft targets need the same output classes")
    if cfg.cosine_weight and hf.config.hidden_size != student_hf.config.hidden_size:
        raise ConfigError(f"cosine_weight: the teacher's hidden size {hf.config.hidden_size} differs from the "
                          f"student's {student_hf.config.hidden_size}; set --cosine_weight 0")
    return freeze(SparseMaskedLM(hf, fast_encoder=True)).to(device)


# Weight names of the MLM heads mlm.model.mlm_head finds (BERT, RoBERTa, ALBERT, ELECTRA, DistilBERT).
HEAD_WEIGHT_PREFIXES = ("cls.predictions.", "lm_head.", "predictions.", "generator_lm_head.", "vocab_projector.")


def has_head_weights(folder: str) -> bool:
    """Whether the folder's safetensors hold an MLM head (pickle-only folders are taken on trust)."""
    from safetensors import safe_open

    files = [n for n in os.listdir(folder) if n.endswith(".safetensors")]
    for name in files:
        with safe_open(os.path.join(folder, name), framework="pt") as f:
            if any(key.startswith(HEAD_WEIGHT_PREFIXES) for key in f.keys()):
                return True
    return not files


def pretraining_loss(cfg, tokenizer, student_hf, accelerator, mlm_loss):
    """The loss_fn of a pretraining run: `mlm_loss`, or with --teacher DistilBERT's objective."""
    if not cfg.teacher:
        return mlm_loss
    teacher = load_mlm_teacher(cfg, tokenizer, student_hf, accelerator.device)
    return mlm_distill_loss(teacher, cfg.distill_alpha, cfg.temperature, cfg.cosine_weight, accelerator.autocast)


def mlm_distill_loss(teacher, alpha: float, temperature: float, cosine_weight: float = 0.0, autocast=nullcontext):
    """The loop's loss_fn for DistilBERT's objective on the masked positions only (the sparse head's K slots):
    (1 - alpha) * MLM + alpha * T^2 KL(teacher || student) + cosine_weight * (1 - cos(hidden states)), each a sum
    over the masked tokens, with the masked-token count."""

    def loss(model, batch):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "masked_positions", "masked_labels")}
        inputs["padded"] = batch.get("padded")
        out = model(**inputs)
        with torch.no_grad(), autocast():  # the student's autocast is in its prepared forward; the teacher's is here
            target = teacher(**inputs)
        valid = inputs["masked_labels"].reshape(-1) != -100  # (B*K,): the unused slots count nothing
        soft = soft_target_kl(out["logits"], target["logits"], temperature)[valid].sum()
        total = mix(out["loss_sum"], soft, alpha)
        if cosine_weight:
            cosine = F.cosine_similarity(out["hidden"].float(), target["hidden"].float(), dim=-1).reshape(-1)
            total = total + cosine_weight * (1 - cosine)[valid].sum()
        return total, out["count"]

    return loss
