"""Build the encoder + MLM head, and run the head on masked positions only.

    hf_model = build_masked_lm(model_name_or_path=None, preset="mini", vocab_size=len(tok), max_seq_length=128)
    model = SparseMaskedLM(hf_model)           # forward(batch from MaskingCollator) -> loss_sum, count (+ correct in eval mode)
    hf_model.save_pretrained(out)              # a stock BertForMaskedLM checkpoint (safetensors)

This is the only pretraining module that names transformers model classes.
"""
from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import nn

from mlm.core.hf import check_checkpoint_dir, check_vocabulary, loading_kwargs, usable_positions
from mlm.core.records import first_line
from mlm.errors import ConfigError, DataError
from mlm.pretrain.encoder import LaneDropout, bert_layer, bert_layers, gather_masked

logger = logging.getLogger("mlm")

# (layers, hidden, heads): BERT-base/large (Devlin et al. 2018) and the compact models of
# Turc et al. 2019 ("Well-Read Students Learn Better"); intermediate size is always 4 x hidden.
# Fields that describe the shape of a new model (a checkpoint has its own).
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "tie_word_embeddings")
PRESETS = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}
# New models round their vocabulary up to a multiple of this: GPU matmul kernels (tensor cores) run their
# fastest on dimensions divisible by 64, and the head's (H x V) projection is most of a small BERT's compute.
PAD_VOCAB_MULTIPLE = 64
# The output bias of a padding row: exp(-1e4) is 0 in fp32, bf16 and fp16 alike, so no softmax, loss, argmax or
# fill-mask ever picks it, and its gradient is exactly 0 (the row never moves).
PADDING_LOGIT = -1e4
# How a new model's learned position rows start: BERT's N(0, initializer_range), or `sinusoidal_positions`.
POSITION_INITS = ("normal", "sinusoidal")


def preset_config(preset: str, vocab_size: int, max_position_embeddings: int = 512, **overrides):
    """A BertConfig for a named size; explicit fields (hidden_size=..., ...) override the preset."""
    from transformers import BertConfig

    if preset not in PRESETS:
        raise ConfigError(f"model_preset: unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    layers, hidden, heads = PRESETS[preset]
    fields = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields["hidden_size"] % fields["num_attention_heads"]:
        raise ConfigError(
            f"hidden_size: {fields['hidden_size']} is not divisible by num_attention_heads {fields['num_attention_heads']}"
        )
    return BertConfig(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings, **fields)


def build_masked_lm(
    model_name_or_path: Optional[str],
    preset: str,
    vocab_size: int,
    max_seq_length: int,
    attn_implementation: str = "sdpa",
    allow_pickle_weights: bool = False,
    pad_vocab_multiple: int = PAD_VOCAB_MULTIPLE,
    position_init: str = "normal",
    **overrides,
):
    """A BertForMaskedLM (or any AutoModelForMaskedLM) from a checkpoint, or fresh from a preset.

    A fresh model's vocabulary is vocab_size rounded up to pad_vocab_multiple (0 or 1: exact), its extra rows
    silenced (`silence_padding_rows`); its position rows start as `position_init` says (normal: BERT's; sinusoidal:
    `sinusoidal_positions`); a checkpoint keeps its own vocabulary and positions."""
    from transformers import AutoConfig, AutoModelForMaskedLM

    if position_init not in POSITION_INITS:
        raise ConfigError(f"position_embedding_init: unknown {position_init!r} (choose from {', '.join(POSITION_INITS)})")
    if model_name_or_path and position_init != "normal":
        raise ConfigError(f"position_embedding_init: {position_init} describes a new model; the checkpoint "
                          f"{model_name_or_path} has position rows of its own")
    if model_name_or_path:
        model_name_or_path = check_checkpoint_dir(model_name_or_path, allow_pickle=allow_pickle_weights)
        shape = {k: v for k, v in overrides.items() if k in SHAPE_FIELDS and v is not None}
        dropout = {k: v for k, v in overrides.items() if k not in SHAPE_FIELDS and v is not None}
        try:
            config = AutoConfig.from_pretrained(model_name_or_path)
            for name, value in dropout.items():  # e.g. DistilBERT names its dropout differently
                if not hasattr(config, name):
                    raise ConfigError(f"{name}: {config.model_type} checkpoints have no such setting")
                setattr(config, name, value)
            model, info = AutoModelForMaskedLM.from_pretrained(
                model_name_or_path, config=config, attn_implementation=attn_implementation, output_loading_info=True,
                **loading_kwargs(allow_pickle_weights))
        except (OSError, ValueError) as e:
            raise DataError(f"model_name_or_path: cannot load {model_name_or_path}: {first_line(e)}") from None
        for name, value in shape.items():
            if getattr(model.config, name, value) != value:
                raise ConfigError(f"{name}: {value}, but the checkpoint {model_name_or_path} has "
                                  f"{getattr(model.config, name)}; shape fields only describe new models")
        if info.get("missing_keys"):  # e.g. a sentence-embedding checkpoint: encoder only
            missing = sorted(info["missing_keys"])
            logger.warning("%s has no weights for %d tensors, which start random: %s%s", model_name_or_path,
                           len(missing), ", ".join(missing[:4]), ", ..." if len(missing) > 4 else "")
        check_vocabulary(model.config, vocab_size)
    else:
        max_positions = max(512, max_seq_length)
        model = AutoModelForMaskedLM.from_config(
            preset_config(preset, vocab_size, max_positions, **overrides), attn_implementation=attn_implementation
        )
        pad_vocabulary(model, padded_vocab_size(vocab_size, pad_vocab_multiple))
        if position_init == "sinusoidal":
            sinusoidal_positions(model)
    mlm_head(model)  # before any packing: a model whose head is unknown cannot be trained here
    limit = usable_positions(model.config, model)
    if max_seq_length > limit:
        raise ConfigError(f"max_seq_length: {max_seq_length} exceeds the model's {limit} positions")
    return model


def sinusoidal_positions(model) -> None:
    """Start a BERT's learned position rows as the sinusoids of Vaswani et al. (2017), at the spread of its other
    rows (std initializer_range). Row i+k is then one fixed rotation of row i for every i, so attention can find a
    neighbour with one linear map; random rows give it nothing to find until it has learnt their order (lower loss
    at equal time: bench/results/pretrain_ablation.json, time_to_quality.json). The rows stay parameters, trained as
    BERT's are: the checkpoint is an ordinary one. Draws no random numbers (the run's stream is unchanged)."""
    weight = model.base_model.embeddings.position_embeddings.weight
    positions, width = weight.shape
    angle = torch.arange(positions, dtype=torch.float64)[:, None] * torch.exp(
        torch.arange(0, width, 2, dtype=torch.float64) * (-math.log(10000.0) / width))
    table = torch.zeros(positions, width, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = torch.sin(angle), torch.cos(angle[:, : width // 2])
    with torch.no_grad():
        weight.copy_(table * (model.config.initializer_range / table.std()))


def padded_vocab_size(vocab_size: int, multiple: int) -> int:
    """vocab_size rounded up to a multiple of `multiple` (0 or 1: unchanged)."""
    return vocab_size if multiple <= 1 else -(-vocab_size // multiple) * multiple


def pad_vocabulary(model, size: int) -> None:
    """Grow the vocabulary to `size` rows, the new ones silenced. The real rows keep the initialisation they had
    unpadded, and the run's random stream (dropout) is untouched: padding changes the speed, not the training."""
    real_size = model.config.vocab_size
    if size > real_size:
        with torch.random.fork_rng(devices=[]):
            model.resize_token_embeddings(size, mean_resizing=False)
        untie_resized_output_bias(model)
        silence_padding_rows(model, real_size)


def untie_resized_output_bias(model) -> None:
    """Give an untied model's output projection its own bias again after a resize.

    transformers 5.x re-ties the projection's bias to the head's `bias` when it resizes, so `save_pretrained`
    writes the shared tensor once, under the head's name; a model with untied embeddings loads the projection's
    bias by its own name, finds nothing and starts it at zero (the padding rows then get logit 0, not
    PADDING_LOGIT). Two separate tensors, as a fresh untied model has, make the checkpoint load as it was saved."""
    if getattr(model.config, "tie_word_embeddings", True):
        return
    output = model.get_output_embeddings()
    if getattr(output, "bias", None) is not None:
        output.bias = nn.Parameter(output.bias.detach().clone())


def silence_padding_rows(model, real_size: int) -> None:
    """Rows real_size.. of the vocabulary, ids no tokenizer produces: zero input and output embeddings and an
    output bias of PADDING_LOGIT, so their logit is exactly PADDING_LOGIT whatever the hidden state. A plain
    `transformers` load keeps them so (the checkpoint is an ordinary one of vocab_size rows)."""
    if model.config.vocab_size <= real_size:
        return
    with torch.no_grad():
        model.get_input_embeddings().weight[real_size:] = 0.0
        output = model.get_output_embeddings()
        output.weight[real_size:] = 0.0  # the same tensor when tied
        output.bias[real_size:] = PADDING_LOGIT


# The MLM heads of the HF masked-LM classes: one module, or modules applied in turn.
_HEAD_LAYOUTS = (
    ("cls",),  # BERT and most BERT-family models
    ("lm_head",),  # RoBERTa, XLM-R, MPNet, ...
    ("predictions",),  # ALBERT
    ("generator_predictions", "generator_lm_head"),  # ELECTRA's generator
    ("vocab_transform", "activation", "vocab_layer_norm", "vocab_projector"),  # DistilBERT
)


def mlm_head(model) -> nn.Module:
    """The module mapping hidden states (..., H) to vocabulary logits (..., V)."""
    for layout in _HEAD_LAYOUTS:
        parts = [getattr(model, name, None) for name in layout]
        if all(isinstance(part, nn.Module) for part in parts):
            return parts[0] if len(parts) == 1 else nn.Sequential(*parts)  # a view: registers nothing on model
    known = ", ".join("+".join(layout) for layout in _HEAD_LAYOUTS)
    raise ConfigError(f"model_name_or_path: {type(model).__name__} has no MLM head this framework knows ({known})")


class SparseMaskedLM(nn.Module):
    """Encoder + MLM head where only what the loss reads is computed: the head (H x V projection) and
    the whole last layer except its keys and values run on the masked positions only.

    The head is most of the compute of a small BERT (V >> H); on 15% of the positions it costs 15%.
    The last layer's output at unmasked positions feeds nothing, so its queries, output projection and
    feed-forward block run on those 15% too (a 4-layer encoder does ~18% fewer FLOPs). That needs
    mlm to run the layers itself (mlm/pretrain/encoder.py, with a faster CPU dropout), so it needs standard BERT
    layers whose weights are whole on this process: parameter-sharding launches (FSDP, ZeRO-3) pass
    fast_encoder=False and get the model's own forward, as do other architectures.
    The loss equals BertForMaskedLM's on the same weights and batch (tests/pretrain/test_model.py).
    """

    def __init__(self, hf_model, fast_encoder: bool = True):
        super().__init__()
        self.model = hf_model
        mlm_head(hf_model)  # fail early for a model without a known head
        self.fast_encoder = fast_encoder and bert_layers(hf_model) is not None
        embeddings = hf_model.base_model.embeddings
        if self.fast_encoder and type(getattr(embeddings, "dropout", None)) is nn.Dropout:
            embeddings.dropout = LaneDropout(embeddings.dropout.p)  # no weights: checkpoints are unchanged

    def encode_at(self, input_ids, attention_mask, token_type_ids, positions, padded=None):
        """Last-layer hidden states at `positions`: (B, K, H). padded: whether attention_mask has a 0, when the
        caller knows it (MaskingCollator's `padded`, from the host); None reads the mask, a host sync off the CPU."""
        base = self.model.base_model
        if not self.fast_encoder:
            types = {} if token_type_ids is None else {"token_type_ids": token_type_ids}  # DistilBERT takes none
            hidden = base(input_ids=input_ids, attention_mask=attention_mask, **types)
            return gather_masked(hidden.last_hidden_state, positions)
        hidden = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        key_mask = None  # packed pretraining rows have no padding; a mask would only slow attention down
        if padded is None and attention_mask is not None:
            padded = torch.compiler.is_compiling() or not bool(attention_mask.all())
        if padded and attention_mask is not None:
            key_mask = attention_mask[:, None, None, :].bool()  # (B, 1, 1, T); boolean for SDPA under any dtype
        *layers, last = base.encoder.layer  # plain BERT layers: checked by bert_layers in __init__
        for layer in layers:
            hidden = bert_layer(layer, hidden, key_mask)
        return bert_layer(last, hidden, key_mask, positions)

    def forward(self, input_ids, attention_mask, masked_positions, masked_labels, token_type_ids=None, padded=None):
        hidden = self.encode_at(input_ids, attention_mask, token_type_ids, masked_positions, padded)  # (B, K, H)
        logits = mlm_head(self.model)(hidden).float()  # (B, K, V)
        labels = masked_labels.reshape(-1)  # (B*K,)
        logits = logits.reshape(-1, logits.size(-1))
        loss_sum = nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        valid = labels != -100
        # logits (B*K, V) and hidden (B, K, H) are there anyway: distillation compares them with a teacher's
        out = {"loss_sum": loss_sum, "count": valid.sum(), "logits": logits, "hidden": hidden}
        if not self.training:  # accuracy is an evaluation metric: no argmax over B*K*V in training steps
            out["correct"] = ((logits.argmax(-1) == labels) & valid).sum()
        return out


def train_flops_per_token(config, seq_len: int, head_fraction: float, last_layer_fraction: float = 1.0) -> float:
    """Training FLOPs per token: 6N (encoder weights) + 12*L*S*h (attention scores and mixing)
    + f*6*h*(h+V) (the MLM head, run on a fraction f of the positions).

    With last_layer_fraction < 1 it counts what SparseMaskedLM performs: the last layer's keys and values
    on every position, its queries, attention, output projection and feed-forward block on that fraction.
    The default (1) is the standard formula, the one MFU is reported against.
    """
    h, L, V = config.hidden_size, config.num_hidden_layers, config.vocab_size
    inter = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", 4 * h)  # DistilBERT: hidden_dim
    layer = 4 * h * h + 2 * h * inter  # Q, K, V, O projections + the two feed-forward matrices
    last = 2 * h * h + last_layer_fraction * (layer - 2 * h * h)
    attention = 12 * seq_len * h * (L - 1 + last_layer_fraction)
    return 6 * ((L - 1) * layer + last) + attention + head_fraction * 6 * h * (h + V)


