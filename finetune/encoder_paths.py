"""How a fine-tuning run's encoder computes a training batch: transformers' own layers, or mlm's BERT layers
(mlm.pretrain.encoder) on the same weights, padded (here) or unpadded (finetune/unpadded.py).

    path = encoder_path(cfg, model, device, shards_parameters, task.HEAD_READS_FIRST_TOKEN)  # one of PATHS
    loss_fn = training_loss(loss_fn, path, task.HEAD_READS_FIRST_TOKEN)

mlm's layers (`--mlm_layers`, default on CPUs for sequence classification with plain BERT layers) do the arithmetic
of transformers' BertLayer with two savings only the caller can make:
* dropout masks from 16-bit random lanes (mlm.pretrain.encoder.dropout), 3-4x cheaper on CPU than `bernoulli_`;
  attention with dropout on the explicit path that uses them;
* a head that reads the first token only (sequence classification: BERT's pooler, RoBERTa's head) gets the last
  layer at that row only (its keys and values still come from every token): ~5/6 of the last layer saved.
Measured over whole epochs against transformers' layers under a well-configured Trainer (bench/results/
finetune_throughput_epoch.json, MiniLM, 1 thread, AVX-512 EPYC): SST-2 1.13x; CoNLL 0.98x and SQuAD 0.98x, where
the explicit attention's backward costs more than the lane masks save. Hence the default: on for heads that read the
first token only, off for token heads (asking for it still works). The rest of a step is the same matmuls, norms
and optimizer in the same modules on both sides: no loop or data pipeline makes them cheaper.
The model itself is untouched: only its encoder's forward is replaced for the batch, so checkpoints, evaluation and
prediction see a standard transformers model. Tests: tests/finetune/test_encoder_paths.py.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

import torch

from mlm.errors import ConfigError
from mlm.pretrain.encoder import LaneDropout, bert_layer, bert_layers

PATHS = ("transformers", "mlm_layers", "unpadded")


def task_model(model):
    """The transformers model inside DDP / compile wrappers."""
    inner = model
    while not hasattr(inner, "base_model") and hasattr(inner, "module"):
        inner = inner.module
    return inner


def own_layers_blocker(cfg, model, shards_parameters: bool) -> Optional[str]:
    """Why mlm cannot run this model's layers itself in this run, or None."""
    return ("the model has no plain BERT layers" if bert_layers(model) is None else
            "parameters are sharded (FSDP / ZeRO-3)" if shards_parameters else  # gathered only in a layer's forward
            "gradient_checkpointing runs the model's own layers" if cfg.gradient_checkpointing else
            "torch_compile" if cfg.torch_compile else None)


def asked_or_default(flag: str, asked: Optional[bool], default: bool, blocker: Optional[str]) -> bool:
    """A path's switch: as asked (refused in one line where it cannot run), else `default` where it can run."""
    if asked is None:
        return default and blocker is None
    if asked and blocker:
        raise ConfigError(f"{flag}: cannot run here ({blocker}); pass --{flag} false")
    return asked


def use_unpadded(cfg, model, device, shards_parameters: bool) -> bool:
    """--unpadded_attention as asked, else on CUDA (on CPUs SDPA runs nested tensors row by row)."""
    return asked_or_default("unpadded_attention", cfg.unpadded_attention, device.type == "cuda",
                            own_layers_blocker(cfg, model, shards_parameters))


def use_mlm_layers(cfg, model, device, shards_parameters: bool, first_token_only: bool) -> bool:
    """--mlm_layers as asked, else on CPUs for heads that read the first token only (where it measured faster)."""
    return asked_or_default("mlm_layers", cfg.mlm_layers, device.type == "cpu" and first_token_only,
                            own_layers_blocker(cfg, model, shards_parameters))


def encoder_path(cfg, model, device, shards_parameters: bool, first_token_only: bool) -> str:
    """Which of PATHS trains this run: unpadded where it runs (CUDA by default), else mlm's layers (by default on CPUs
    for first-token heads), else transformers' own."""
    if use_unpadded(cfg, model, device, shards_parameters):
        return "unpadded"
    return "mlm_layers" if use_mlm_layers(cfg, model, device, shards_parameters, first_token_only) else "transformers"


@contextmanager
def encoder_replaced(model, encode: Callable):
    """Inside, `model`'s encoder returns encode(layers, hidden_states) instead of running its own forward; model: a
    transformers task model with plain BERT layers, or a wrapper (DDP, accelerate) around one. Embedding dropout
    draws lane masks meanwhile."""
    from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions as EncoderOutput

    inner = task_model(model)
    layers = bert_layers(inner)
    if layers is None:
        raise ValueError(f"mlm's layers need a model of plain BERT layers ({type(inner).__name__})")
    encoder, embeddings = inner.base_model.encoder, inner.base_model.embeddings
    dropout = embeddings.dropout

    def forward(hidden_states, *args, **kwargs):  # the mask transformers built is not needed: the caller's is exact
        return EncoderOutput(last_hidden_state=encode(layers, hidden_states))

    encoder.forward = forward  # this instance only, for this batch
    embeddings.dropout = LaneDropout(dropout.p).train(dropout.training)  # a new module is in training mode
    try:
        yield
    finally:
        del encoder.forward
        embeddings.dropout = dropout


def encode_padded(layers, hidden: torch.Tensor, attention_mask: torch.Tensor, first_token_only: bool) -> torch.Tensor:
    """mlm's BERT layers on a padded batch: (B, T, H) -> (B, T, H), or (B, 1, H) (the first token's row) when the
    head reads nothing else."""
    key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T): True for the keys to attend to
    for layer in layers[:-1]:
        hidden = bert_layer(layer, hidden, key_mask)
    rows = hidden.new_zeros(hidden.size(0), 1, dtype=torch.long) if first_token_only else None
    return bert_layer(layers[-1], hidden, key_mask, rows)


@contextmanager
def mlm_layers(model, attention_mask: torch.Tensor, first_token_only: bool = False):
    """Inside, `model`'s encoder runs mlm's BERT layers on this batch's attention_mask (B, T)."""
    with encoder_replaced(model, lambda layers, hidden: encode_padded(layers, hidden, attention_mask, first_token_only)):
        yield


def training_loss(loss_fn, path: str, first_token_only: bool):
    """The loop's loss_fn with the student's encoder on `path` for every batch (a distillation teacher untouched)."""
    from finetune.unpadded import unpadded

    if path == "transformers":
        return loss_fn

    def loss(model, batch):
        mask = batch["attention_mask"]
        with unpadded(model, mask) if path == "unpadded" else mlm_layers(model, mask, first_token_only):
            return loss_fn(model, batch)

    return loss
