"""Task distillation: a fine-tuning run that also learns from a fine-tuned teacher's logits.

    mlm finetune --task cls --teacher outputs/cls-teacher --model_name_or_path BACKBONE --student_layers 0,2,4 \
        --distill_alpha 0.5 --temperature 2 ...

Everything else is the task's own (data, labels, windows, collate, metrics, outputs, export), so a distilled
model is saved, scored and predicted exactly like a fine-tuned one. The loss builds on the task hooks only:
`forward` gives both models' logits on the same batch, `loss_of` the hard loss and its count, and the soft term
is summed over the targets that count holds (mlm/distill.py explains why that keeps the loop's normalisation).
"""
from __future__ import annotations

import inspect
import os
from contextlib import nullcontext

import torch

from mlm.core.distill import check_same_vocabulary, freeze, mix, soft_target_kl
from mlm.errors import ConfigError, UserError

IGNORE = -100  # the tasks' "no target here" label id (cross-entropy's ignore_index)


def soft_loss_sum(student, teacher, labels: torch.Tensor, attention_mask: torch.Tensor, temperature: float):
    """The soft-target loss summed over the targets the hard loss counts, read from the logits' structure:

    - (start, end) span logits (B, T) each: per feature, the mean of the two KLs over its non-padding positions;
      features whose answer position is unknown (label -100) count nothing, as in the hard loss;
    - class logits (B, C) or (B, T, C) with long labels: one KL per example or per labelled sub-word;
    - float labels: multi-label (B, C): a binary KL per class (sigmoid at T), the mean over classes per example,
      as the hard loss takes it; regression (B, 1): the squared distance to the teacher's score (no temperature).
    """
    if isinstance(student, tuple):
        keep = attention_mask.bool()  # (B, T): padding is no answer position, in either model
        kl = sum(soft_target_kl(s, t, temperature, keep) for s, t in zip(student, teacher)) / 2  # (B,)
        return kl[labels != IGNORE].sum()
    if labels.is_floating_point():
        if labels.dim() == 1:
            return ((student.squeeze(-1) - teacher.squeeze(-1)) ** 2).sum()
        zeros = torch.zeros_like(student)  # sigmoid(z) is the softmax of (0, z): a two-class KL per class
        kl = soft_target_kl(torch.stack([zeros, student], -1), torch.stack([zeros, teacher.float()], -1), temperature)
        return kl.mean(dim=-1).sum()
    kl = soft_target_kl(student, teacher, temperature)  # (B,) or (B, T), the labels' shape
    return kl[labels != IGNORE].sum()


def distillation_loss(task, teacher, alpha: float, temperature: float, label_order=None, accelerator=None):
    """The loop's loss_fn: (mix of hard and soft sums, the hard loss's count). `label_order` maps the student's
    class ids to the teacher's (same label names, another order)."""
    takes_types = "token_type_ids" in inspect.signature(teacher.forward).parameters  # DistilBERT takes none

    def loss(model, batch):
        student = task.forward(model, batch)
        hard, count = task.loss_of(student, batch)
        inputs = batch if takes_types else {k: v for k, v in batch.items() if k != "token_type_ids"}
        # The student's autocast comes from its prepared forward; the teacher is not prepared, so it gets it here.
        with torch.no_grad(), accelerator.autocast() if accelerator is not None else nullcontext():
            target = task.forward(teacher, inputs)
        if label_order is not None:
            target = target[..., label_order]
        soft = soft_loss_sum(student, target, batch[task.TARGETS[0]], batch["attention_mask"], temperature)
        return mix(hard, soft, alpha), count

    return loss


def task_loss(task, cfg, labels: list[str], tokenizer, accelerator):
    """The loss_fn of a fine-tuning run: the task's own, or with --teacher the distillation mix."""
    if not cfg.teacher:
        return task.loss
    teacher, label_order = load_teacher(task, cfg, labels, tokenizer)
    return distillation_loss(task, teacher.to(accelerator.device), cfg.distill_alpha, cfg.temperature, label_order,
                             accelerator)


def load_teacher(task, cfg, labels: list[str], tokenizer):
    """(frozen teacher model, label order or None): a task model of the same task, labels and vocabulary.

    A folder of `mlm finetune` (mlm_task.json) or any AutoModelFor<Task> folder (labels from config.json's
    id2label), read by the code `mlm predict` uses. One-line errors name the key and the file that differ."""
    from finetune.predict import load_task
    from finetune.task import TASKS
    from mlm.core.hf import check_checkpoint_dir, check_vocabulary, loading_kwargs, usable_positions

    try:
        folder = check_checkpoint_dir(cfg.teacher, field="teacher", allow_pickle=cfg.allow_pickle_weights)
        teacher_task, _, teacher_labels = load_task(folder)
    except UserError as e:  # predict's messages name its --model flag
        raise type(e)("teacher: " + str(e).removeprefix("--model: ")) from None
    source = _labels_file(folder)
    if teacher_task is not task:
        name = next(n for n, module in TASKS.items() if module is teacher_task)
        raise ConfigError(f"teacher: {source}: a {name} model; this run fine-tunes {cfg.task}")
    if sorted(teacher_labels) != sorted(labels):
        raise ConfigError(f"teacher: {source}: labels {_show(teacher_labels)} differ from the training data's "
                          f"{_show(labels)}")
    check_same_vocabulary(folder, tokenizer)
    teacher = task.AutoModel.from_pretrained(folder, **loading_kwargs(cfg.allow_pickle_weights))
    check_vocabulary(teacher.config, len(tokenizer))
    positions = usable_positions(teacher.config, teacher)
    if cfg.max_seq_length > positions:
        raise ConfigError(f"teacher: {folder}/config.json: the teacher takes {positions} positions, max_seq_length "
                          f"is {cfg.max_seq_length}")
    if getattr(teacher.config, "problem_type", None) not in (None, task_problem_type(task, cfg, labels)):
        raise ConfigError(f"teacher: {folder}/config.json: problem_type {teacher.config.problem_type!r}, the "
                          f"student's is {task_problem_type(task, cfg, labels)!r}")
    label_order = None if teacher_labels == labels else [teacher_labels.index(label) for label in labels]
    return freeze(teacher), label_order


def task_problem_type(task, cfg, labels: list[str]):
    """HF's problem_type the student's head gets (None for tasks without one)."""
    return task.model_kwargs(cfg, labels).get("problem_type")


def _labels_file(folder: str) -> str:
    from finetune.task import TASK_FILE

    path = os.path.join(folder, TASK_FILE)
    return path if os.path.isfile(path) else os.path.join(folder, "config.json")


def _show(labels: list[str], most: int = 8) -> str:
    return "[" + ", ".join(labels[:most]) + (", ..." if len(labels) > most else "") + "]"
