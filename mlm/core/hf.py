"""Loading Hugging Face checkpoints and tokenizers the way every track does: located (mlm.core.hub), checked
(one-line errors for folders that are not checkpoints, damaged files, remote code, pickle weights), and fitted to
each other (vocabulary size, token types, usable positions)."""
from __future__ import annotations

import json
import os


from torch import nn

from mlm.core.checkpoint import STATE_FILE
from mlm.core.records import first_line
from mlm.core.user_files import REEXPORT, check_weights, read_json
from mlm.errors import ConfigError, DataError

# Model types whose position ids start after the padding id (transformers' create_position_ids_from_input_ids).
_OFFSET_POSITION_MODELS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "mpnet",
                           "roberta-prelayernorm", "ibert", "longformer", "xmod", "luke"}


def check_checkpoint_dir(path: str, field: str = "model_name_or_path", allow_pickle: bool = False) -> str:
    """`path` located (mlm.core.hub.locate); one-line error when it is a folder but not a Hugging Face checkpoint
    directory, its config.json or safetensors weights are damaged (mlm.core.user_files), asks for code of its own
    (auto_map), or holds only pickle weights (which can run code when loaded) and `allow_pickle` is off."""
    from mlm.core.hub import locate

    path = locate(path, field)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, STATE_FILE)) and not os.path.isfile(os.path.join(path, "config.json")):
            run = os.path.dirname(os.path.dirname(os.path.abspath(path)))  # a sharded (FSDP) checkpoint: no model
            raise DataError(f"{field}: {path} is a sharded training checkpoint, for --resume_from_checkpoint; the "
                            f"run exports its model to {run}")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise DataError(f"{field}: {path} is not a checkpoint directory (no config.json)")
        config = read_json(os.path.join(path, "config.json"), hint=REEXPORT)
        if isinstance(config, dict) and config.get("auto_map"):
            raise DataError(f"{path}/config.json: asks for the model's own code (auto_map); mlm never runs code "
                            "from a model folder")
        weights = [n for n in os.listdir(path) if n.endswith((".safetensors", ".bin")) or n.endswith(".index.json")]
        if not weights:
            raise DataError(f"{field}: {path} has a config.json but no weights (model.safetensors)")
        if not allow_pickle and not any(n.endswith((".safetensors", ".safetensors.index.json")) for n in weights):
            raise DataError(f"{field}: {path} holds only pickle weights ({', '.join(sorted(weights)[:2])}), which can "
                            "run code when loaded; convert them to model.safetensors, or pass --allow_pickle_weights "
                            "true for a folder you trust")
        check_weights(path, hint=REEXPORT)
    return path


def loading_kwargs(allow_pickle: bool = False) -> dict:
    """from_pretrained arguments: safetensors weights unless pickle ones are allowed, never the model's own code."""
    return {"use_safetensors": None if allow_pickle else True, "trust_remote_code": False}


def check_vocabulary(config, tokenizer_size: int) -> None:
    """Every id the tokenizer can produce must have an embedding."""
    if config.vocab_size < tokenizer_size:
        raise ConfigError(f"tokenizer_name: the tokenizer has {tokenizer_size} ids but the checkpoint's vocabulary "
                          f"has {config.vocab_size}")


def usable_positions(config, model=None) -> int:
    """The longest input a checkpoint's position embeddings take: RoBERTa-style models number positions from
    padding id + 1, so 514 embeddings hold 512 tokens. With the model at hand the offset is read from its
    position embedding (such models give it a padding_idx); from a config alone, from the model type."""
    embeddings = getattr(getattr(model, "base_model", None), "embeddings", None)
    positions = getattr(embeddings, "position_embeddings", None)
    if isinstance(positions, nn.Embedding):
        offset = 0 if positions.padding_idx is None else positions.padding_idx + 1
    elif config.model_type in _OFFSET_POSITION_MODELS:
        offset = (config.pad_token_id or 0) + 1
    else:
        offset = 0
    return config.max_position_embeddings - offset


def enable_activation_checkpointing(model) -> None:
    """Recompute each layer's activations in the backward pass (transformers renamed the switch in 5.x)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()



def pre_tokenizer_steps(tokenizer) -> list[dict]:
    """The fast tokenizer's pre-tokenizer as a list of steps (tokenizer.json's "pre_tokenizer", a Sequence
    flattened): how words are cut and marked (BertPreTokenizer, ByteLevel "Ġ", Metaspace "▁")."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    config = (json.loads(backend.to_str()).get("pre_tokenizer") if backend is not None else None) or {}
    return config.get("pretokenizers", [config]) if config.get("type") == "Sequence" else [config]


def fit_tokenizer_to_model(tokenizer, model) -> None:
    """Stop the tokenizer returning token_type_ids to a model that has no use for them: one that takes none
    (DistilBERT) or has a single token type (RoBERTa; a BERT tokenizer would send the second segment as 1)."""
    import inspect

    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    if (not takes_types or getattr(model.config, "type_vocab_size", 2) < 2) and \
            "token_type_ids" in tokenizer.model_input_names:
        tokenizer.model_input_names = [name for name in tokenizer.model_input_names if name != "token_type_ids"]


def load_tokenizer(name_or_dir: str, field: str = "tokenizer_name"):
    """A fast tokenizer from a local dir or a hub name; DataError/ConfigError (one line, naming `field` when the
    folder is missing) when it is unusable."""
    from transformers import AutoTokenizer

    from mlm.core.hub import locate

    name_or_dir = locate(name_or_dir, field)
    is_local = os.path.isdir(name_or_dir)
    if is_local:
        files = set(os.listdir(name_or_dir))
        if not files & {"tokenizer.json", "vocab.txt", "tokenizer_config.json"}:
            raise DataError(f"{field}: {name_or_dir}: no tokenizer files here (expected tokenizer.json or vocab.txt)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir)
    except Exception as e:  # OSError (not found / offline), ValueError (unknown class), ...
        reason = first_line(e)[:200]
        where = name_or_dir if is_local else f"tokenizer {name_or_dir!r}"
        hint = f"; {REEXPORT} (a damaged tokenizer file?)" if is_local else ""
        raise DataError(f"{field}: {where}: cannot load the tokenizer ({reason}){hint}") from None
    if not getattr(tokenizer, "is_fast", False):
        kind = type(tokenizer).__name__
        raise ConfigError(f"{name_or_dir}: {kind} is not a fast (Rust) tokenizer; packing needs one")
    _check_vocab(tokenizer, name_or_dir, is_local)
    return tokenizer


def _check_vocab(tokenizer, name_or_dir: str, is_local: bool) -> None:
    """Fail loudly on the transformers 5 trap of a silently specials-only vocabulary, and on missing specials."""
    size = len(tokenizer)
    vocab_txt = os.path.join(name_or_dir, "vocab.txt") if is_local else None
    if vocab_txt and os.path.isfile(vocab_txt):
        with open(vocab_txt, encoding="utf-8") as f:
            expected = len({line.rstrip("\n") for line in f} - {""})  # distinct tokens: some vocabs repeat one
        if size < expected:
            raise DataError(f"{vocab_txt}: lists {expected} tokens but the loaded tokenizer has only {size}")
    if size <= len(tokenizer.all_special_tokens) + 1:
        raise DataError(f"{name_or_dir}: the loaded tokenizer has only {size} tokens (an empty vocabulary?)")
    for name in ("pad_token", "cls_token", "sep_token", "mask_token"):
        if getattr(tokenizer, name + "_id", None) is None:
            raise ConfigError(f"{name_or_dir}: the tokenizer has no {name}; masked-language modelling needs it")
