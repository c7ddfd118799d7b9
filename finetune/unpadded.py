"""Unpadded (variable-length) attention for fine-tuning batches: the padding of a batch is never computed.

    with unpadded(model, batch["attention_mask"]):   # a BERT-family task model (cls, ner, qa heads)
        logits = model(**inputs).logits              # the same outputs at every real token

Dynamic padding still pads each batch to its longest row; every layer then spends its projections, feed-forward
block and attention on padding. Here the encoder runs on the real tokens only, packed into (N, H), with SDPA on
jagged nested tensors (torch.nested, layout=torch.jagged): FlashAttention's variable-length kernel on a GPU, a
per-row fallback on CPUs. The heads see the usual (B, T, H) hidden states, zero at padding (which every task's loss
and outputs ignore). One host read per forward: the number of real tokens (the packed size).

On by default on CUDA only (`--unpadded_attention`): on CPUs SDPA runs nested tensors row by row (5.8x slower than
padded in bench/gpu_check.py's CPU dry run).
Tests: tests/finetune/test_encoder_paths.py (equal to the padded model's outputs and gradients).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from finetune.encoder_paths import encoder_replaced, task_model
from mlm.pretrain.encoder import after_attention, bert_layers


def supports_unpadding(model) -> bool:
    """Plain post-LN BERT layers (BERT, RoBERTa, ...), which `packed_layer` computes."""
    return bert_layers(model) is not None


def packed_layer(layer, x: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
    """One BERT layer on packed rows: x (N, H), the real tokens of every row in order; offsets (B + 1,) where each
    row starts in x. Returns (N, H)."""
    N, H = x.shape
    attention = layer.attention.self
    heads = attention.num_attention_heads

    def jagged(t):  # (N, H) -> (B, heads, j, H / heads), j the ragged row length
        t = t.view(N, heads, H // heads)
        return torch.nested.nested_tensor_from_jagged(t, offsets, min_seqlen=1, max_seqlen=max_len).transpose(1, 2)

    q, k, v = jagged(attention.query(x)), jagged(attention.key(x)), jagged(attention.value(x))
    p = attention.dropout.p if layer.training else 0.0
    context = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, heads, j, d)
    return after_attention(layer, context.transpose(1, 2).values().reshape(N, H), x)


def encode_unpadded(layers, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The encoder layers on the real tokens only: (B, T, H) -> (B, T, H), zero at padding."""
    B, T, H = hidden.shape
    keep = attention_mask.bool()  # (B, T)
    offsets = nn.functional.pad(keep.sum(1).cumsum(0), (1, 0))  # (B + 1,)
    x = hidden[keep]  # (N, H), row after row: the host read of N
    for layer in layers:
        x = packed_layer(layer, x, offsets, T)
    return hidden.new_zeros(B, T, H).index_put((keep,), x)


@contextmanager
def unpadded(model, attention_mask: torch.Tensor):
    """Inside, `model`'s encoder runs unpadded on this batch's attention_mask (B, T); model: a transformers task
    model with plain BERT layers (supports_unpadding), or a wrapper (DDP, accelerate) around one."""
    inner = task_model(model)
    if attention_mask.dim() != 2 or not supports_unpadding(inner):
        raise ValueError(f"unpadded attention needs plain BERT layers and a (B, T) mask ({type(inner).__name__})")
    with encoder_replaced(model, lambda layers, hidden: encode_unpadded(layers, hidden, attention_mask)):
        yield
