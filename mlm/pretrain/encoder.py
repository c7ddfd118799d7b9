"""BERT encoder layers run by mlm on the Hugging Face modules' own weights, for MLM pretraining.

    layers = bert_layers(hf_model)          # the encoder's nn.ModuleList, or None when they are not plain BERT layers
    hidden = bert_layer(layer, hidden, key_mask)                     # (B, T, H) -> (B, T, H), like layer(hidden)
    rows = bert_layer(layer, hidden, key_mask, positions=positions)  # (B, T, H) -> (B, K, H): those rows only

Why not call the layers' forward: two things only the caller knows.
* The MLM loss reads the last layer at the masked positions only; `positions` computes just those rows
  (keys and values still come from every position), about 70% of the last layer's work saved.
* Dropout on CPU: `torch.bernoulli_` draws one random number per element on one thread (~12% of a
  2-thread training step of a small BERT). `dropout` takes its masks from 16-bit lanes of 64-bit
  draws, 4 per draw, 3-4x faster; the drop probability is rounded to a multiple of 1/65536 (0.1 ->
  0.100006). On GPUs it is F.dropout, and attention is SDPA with `dropout_p` (the fused FlashAttention /
  memory-efficient kernels draw their masks inside the kernel: no (B, heads, T, T) probabilities in memory).
Row for row it is the arithmetic of transformers' BertLayer (post-LN, absolute positions), proven against
BertForMaskedLM's loss and gradients in tests/pretrain/test_model.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


# Model types whose base model is embeddings -> a ModuleList of post-LN BERT layers, nothing in between.
_BERT_LAYER_MODELS = {"bert", "roberta", "xlm-roberta", "camembert"}
_BERT_LAYER_PARTS = (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.self.dropout",
    "attention.output.dense", "attention.output.LayerNorm", "attention.output.dropout",
    "intermediate", "output.dense", "output.LayerNorm", "output.dropout",
)
_LANES = 65536  # a 16-bit lane takes this many values


def bert_layers(model) -> Optional[nn.ModuleList]:
    """The encoder's layers when they are standard BERT layers `bert_layer` computes, else None."""
    config = model.config
    layers = getattr(getattr(model.base_model, "encoder", None), "layer", None)
    if (config.model_type not in _BERT_LAYER_MODELS or not isinstance(layers, nn.ModuleList) or not len(layers)
            or config.is_decoder or getattr(config, "position_embedding_type", "absolute") not in (None, "absolute")):
        return None
    try:
        for layer in layers:
            for part in _BERT_LAYER_PARTS:
                layer.get_submodule(part)
            if layer.attention.self.num_attention_heads != config.num_attention_heads:
                return None
    except AttributeError:
        return None
    return layers


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout; on CPU with masks from 16-bit random lanes (see the module docstring)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, True)
    threshold = round(p * _LANES)  # drop where the lane's value (as unsigned) is below it
    n = x.numel()
    draws = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
    lanes = draws.view(torch.int16)[:n].view(x.shape)  # signed: unsigned value u is stored as u - 32768
    keep = lanes >= threshold - _LANES // 2
    return torch.where(keep, x, 0.0) * (_LANES / (_LANES - threshold))


class LaneDropout(nn.Dropout):
    """nn.Dropout through `dropout`: swapped in for a module whose forward mlm does not run itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def fused_attention(device: torch.device, p: float) -> bool:
    """Whether SDPA serves attention: always without dropout; with dropout off the CPU only, where SDPA's fused
    kernels draw the masks themselves (on CPU SDPA would draw them with bernoulli_, slower than the lanes)."""
    return p == 0.0 or device.type != "cpu"


def _attend(q, k, v, key_mask, p: float):
    """softmax(q k^T / sqrt(d) + mask) v with dropout p on the probabilities: (B, heads, N, d)."""
    if fused_attention(q.device, p):
        return nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p)
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-1, -2)  # scaling q: half the elements of the scores
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
    return dropout(scores.softmax(-1), p, True) @ v


def bert_layer(layer, hidden, key_mask, positions=None):
    """One BERT layer: (B, T, H) -> (B, T, H), or with positions (B, K) its output at those rows: (B, K, H).

    key_mask: None, or a boolean (B, 1, 1, T) mask, True for the keys to attend to (False: padding).
    """
    B, T, H = hidden.shape
    attention = layer.attention
    rows = hidden if positions is None else gather_masked(hidden, positions)
    N, heads = rows.size(1), attention.self.num_attention_heads

    def split_heads(x, n):  # (B, n, H) -> (B, heads, n, H / heads)
        return x.view(B, n, heads, H // heads).transpose(1, 2)

    q = split_heads(attention.self.query(rows), N)
    k, v = split_heads(attention.self.key(hidden), T), split_heads(attention.self.value(hidden), T)
    p = attention.self.dropout.p if layer.training else 0.0
    context = _attend(q, k, v, key_mask, p).transpose(1, 2).reshape(B, N, H)
    return after_attention(layer, context, rows)


def after_attention(layer, context, rows):
    """The rest of a BERT layer once attention has mixed the values: output projection, residual, LayerNorm,
    feed-forward block, residual, LayerNorm. context and rows: (..., H), any leading shape (padded or packed)."""
    self_out, out = layer.attention.output, layer.output
    attended = self_out.LayerNorm(dropout(self_out.dense(context), self_out.dropout.p, layer.training) + rows)
    return out.LayerNorm(dropout(out.dense(layer.intermediate(attended)), out.dropout.p, layer.training) + attended)


def gather_masked(hidden: torch.Tensor, masked_positions: torch.Tensor) -> torch.Tensor:
    """Hidden states at the masked positions: (B, T, H), (B, K) -> (B, K, H).

    Unused slots point at position 0; their outputs are ignored through the -100 labels.
    """
    index = masked_positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))  # (B, K, H)
    return torch.gather(hidden, 1, index)
