"""Masked-language-model pretraining, top to bottom.

    mlm pretrain --recipe recipes/pretrain/demo.yaml            # or: make pretrain
    accelerate launch -m mlm pretrain --recipe ...              # several processes / GPUs

corpus -> tokenizer -> packed blocks (memmap cache) -> masking collator -> encoder + sparse MLM head
-> the shared loop -> a standard Hugging Face checkpoint at output_dir.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from mlm.core.config import TrainingConfig, arg
from mlm.errors import ConfigError
from mlm.core.hub import check_sources
from mlm.pretrain.corpus import CorpusArgs
from mlm.pretrain.distill import PretrainDistillConfig
from mlm.pretrain.model import POSITION_INITS

logger = logging.getLogger("mlm")


def default_cache_dir() -> str:
    return os.environ.get("MLM_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "mlm"))


@dataclass
class PretrainConfig(PretrainDistillConfig, TrainingConfig, CorpusArgs):
    """Pretrain a BERT-style encoder with masked-language modelling; every field is also a --flag."""

    output_dir: str = arg("outputs/pretrain", "Where checkpoints, logs, metrics and the final model are written.")
    validation_file: Optional[str] = arg(None, "Validation corpus (default: hold out validation_split_percentage).")
    validation_split_percentage: float = arg(5.0, "Percent of documents held out for validation (no validation_file).")
    cache_dir: Optional[str] = arg(None, "Cache of packed token arrays and trained tokenizers ($MLM_CACHE_DIR or ~/.cache/mlm).")
    tokenizer_name: Optional[str] = arg(None, "Existing tokenizer dir/name; default: train a WordPiece tokenizer.")
    vocab_size: int = arg(30522, "Vocabulary size of a newly trained WordPiece tokenizer.")
    pad_vocab_multiple: int = arg(
        64, "Round a new model's vocabulary (embeddings, MLM head) up to a multiple of this: aligned GPU matmuls. "
        "The extra ids are never predicted and the tokenizer is unchanged; 0 or 1: no padding. A checkpoint given "
        "by --model_name_or_path keeps its own vocabulary.")
    do_lower_case: bool = arg(True, "Lower-case (and strip accents) in a newly trained tokenizer.")
    model_name_or_path: Optional[str] = arg(None, "Continue from a local HF BERT-family checkpoint instead of a preset.")
    model_preset: Literal["tiny", "mini", "small", "medium", "base", "large"] = arg(
        "mini", "Size of a new model: tiny 2x128, mini 4x256, small 4x512, medium 8x512, base 12x768, large 24x1024."
    )
    hidden_size: Optional[int] = arg(None, "Override the preset's hidden size.")
    num_hidden_layers: Optional[int] = arg(None, "Override the preset's number of layers.")
    num_attention_heads: Optional[int] = arg(None, "Override the preset's number of attention heads.")
    intermediate_size: Optional[int] = arg(None, "Override the preset's feed-forward size (default 4 x hidden).")
    tie_word_embeddings: Optional[bool] = arg(
        None, "A new model's MLM output projection shares the input embeddings (default: true, BERT's). false: "
        "separate, so that the input rows of rare tokens move only where the tokens occur (tied, Adam moves every "
        "rare row together at the full learning rate, towards one shared direction).")
    position_embedding_init: Literal[POSITION_INITS] = arg(
        "normal", "How a new model's learned position rows start: normal (BERT's random rows) or sinusoidal (the "
        "sinusoids of the original Transformer at the same scale: a neighbour is one linear map away, so attention "
        "turns local sooner; lower loss and better NER at a 15-minute budget, see recipes/pretrain/budget-15m.yaml). "
        "The checkpoint is an ordinary BERT one either way.")
    hidden_dropout_prob: Optional[float] = arg(
        None, "Dropout on hidden states (default: 0.1 for a new model, the checkpoint's own when continuing).")
    attention_probs_dropout_prob: Optional[float] = arg(
        None, "Dropout on attention probabilities (default: 0.1 for a new model, the checkpoint's own).")
    max_seq_length: int = arg(128, "Tokens per packed training sequence, [CLS] and [SEP] included.")
    mlm_probability: float = arg(0.15, "Fraction of (non-special) tokens selected for prediction.")
    mask_replace_prob: float = arg(0.8, "Of the selected tokens: fraction replaced by [MASK].")
    random_replace_prob: float = arg(0.1, "Of the selected tokens: fraction replaced by a random token (rest kept).")
    whole_word_masking: bool = arg(False, "Select whole words (all their ## pieces) instead of single tokens.")
    learning_rate: float = arg(5e-4, "Peak learning rate of AdamW.")
    adam_beta2: float = arg(0.98, "AdamW beta2 (0.98 is the usual choice for MLM pretraining).")
    warmup_ratio: Optional[float] = arg(None, "Fraction of steps with linear warmup (exclusive with warmup_steps).")
    num_train_epochs: float = arg(1.0, "Epochs over the packed corpus (ignored when max_steps > 0).")

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"mlm_probability: must be in (0, 1), got {self.mlm_probability}")
        if self.mask_replace_prob < 0 or self.random_replace_prob < 0 or self.mask_replace_prob + self.random_replace_prob > 1:
            raise ConfigError("mask_replace_prob + random_replace_prob: must be non-negative and sum to at most 1")
        if self.pad_vocab_multiple < 0:
            raise ConfigError(f"pad_vocab_multiple: must be >= 0, got {self.pad_vocab_multiple}")
        if self.max_seq_length < 8:
            raise ConfigError(f"max_seq_length: must be >= 8, got {self.max_seq_length}")
        if not 0 <= self.validation_split_percentage < 100:
            raise ConfigError(f"validation_split_percentage: must be in [0, 100), got {self.validation_split_percentage}")


def mlm_loss(model, batch):
    """(sum of token losses, number of masked tokens) for the shared loop."""
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        masked_positions=batch["masked_positions"], masked_labels=batch["masked_labels"], padded=batch.get("padded"),
    )
    return out["loss_sum"], out["count"]


EVAL_METRICS = ("loss", "perplexity", "masked_accuracy")


def make_evaluate(valid_data, collate, batch_size: int, accelerator):
    """MLM loss, perplexity and masked-token accuracy on fixed validation masks (never (B, T, V) logits)."""
    from mlm.core.sampling import KeyedDataset, eval_batches

    keyed = KeyedDataset(valid_data, epoch=0)  # example_id = index: the same masks at every evaluation

    def evaluate(model) -> dict:
        totals = torch.zeros(3, dtype=torch.float64, device=accelerator.device)
        for batch, counts in eval_batches(keyed, collate, batch_size, accelerator):
            out = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                masked_positions=batch["masked_positions"], masked_labels=batch["masked_labels"],
                padded=batch.get("padded"),
            )
            if counts:
                totals += torch.stack([out["loss_sum"].double(), out["count"].double(), out["correct"].double()])
        loss_sum, count, correct = accelerator.reduce(totals, reduction="sum").tolist()
        loss = loss_sum / max(count, 1)
        return dict(zip(EVAL_METRICS, (loss, math.exp(min(loss, 50.0)), correct / max(count, 1))))

    return evaluate


def main(cfg: PretrainConfig) -> dict:
    from mlm.pretrain.masking import MaskingCollator
    from mlm.pretrain.corpus import corpus_sources
    from mlm.core.loop import check_metric, LoopParts, train
    from mlm.core.plan import check_plan
    from mlm.core.accel import make_accelerator, shards_parameters
    from mlm.pretrain.model import SparseMaskedLM, build_masked_lm, train_flops_per_token
    from mlm.core.distill import keep_layers, layer_indices
    from mlm.core.hf import enable_activation_checkpointing
    from mlm.pretrain.distill import pretraining_loss
    from mlm.pretrain.packing import build_packed_dataset
    from mlm.pretrain.wordpiece import copy_tokenizer, prepare_tokenizer
    from mlm.core.run_dir import check_output_dir, run_directory
    from mlm.core.run_files import write_run_files
    from mlm.core.runlog import plot_losses, write_json

    check_sources(cfg)
    check_output_dir(cfg)  # before minutes of tokenizer training and packing
    cache = cfg.cache_dir or default_cache_dir()
    if os.path.exists(cache) and not os.path.isdir(cache):
        raise ConfigError(f"cache_dir: {cache} is a file, not a folder")
    accelerator = make_accelerator(cfg)
    torch.manual_seed(cfg.seed)
    train_corpus, valid_corpus = corpus_sources(
        train_file=cfg.train_file, validation_file=cfg.validation_file, dataset_name=cfg.dataset_name,
        dataset_config_name=cfg.dataset_config_name, text_column=cfg.text_column,
        document_separator=cfg.document_separator,
    )
    logger.info("corpus: %s", train_corpus.description)
    tokenizer, tokenizer_folder = prepare_tokenizer(cfg, train_corpus, accelerator, cache)
    hf_model = build_masked_lm(
        cfg.model_name_or_path, cfg.model_preset, len(tokenizer), cfg.max_seq_length,
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        tie_word_embeddings=cfg.tie_word_embeddings,
        hidden_dropout_prob=cfg.hidden_dropout_prob, attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
        allow_pickle_weights=cfg.allow_pickle_weights, pad_vocab_multiple=cfg.pad_vocab_multiple,
        position_init=cfg.position_embedding_init,
    )
    hf_model = keep_layers(hf_model, layer_indices(cfg.student_layers))
    loss_fn = pretraining_loss(cfg, tokenizer, hf_model, accelerator, mlm_loss)  # with --teacher: distillation
    with accelerator.main_process_first():  # rank 0 tokenises and packs; the others then hit the cache
        train_blocks, valid_blocks = build_packed_dataset(
            train_corpus, valid_corpus, tokenizer, cfg.max_seq_length, cfg.cache_dir or default_cache_dir(),
            validation_split_percentage=cfg.validation_split_percentage,
        )
    logger.info("packed: %d training and %d validation blocks of %d tokens", len(train_blocks), len(valid_blocks),
                cfg.max_seq_length)
    if cfg.max_eval_samples is not None and len(valid_blocks) > cfg.max_eval_samples:
        valid_blocks = torch.utils.data.Subset(valid_blocks, range(cfg.max_eval_samples))

    n_params = sum(p.numel() for p in hf_model.parameters())
    logger.info("model: %s, %.1fM parameters", _shape(hf_model.config, len(tokenizer)), n_params / 1e6)
    collate = MaskingCollator(
        tokenizer, mlm_probability=cfg.mlm_probability, mask_replace_prob=cfg.mask_replace_prob,
        random_replace_prob=cfg.random_replace_prob, whole_word_masking=cfg.whole_word_masking, seed=cfg.seed,
    )
    evaluate = make_evaluate(valid_blocks, collate, cfg.per_device_eval_batch_size, accelerator) \
        if len(valid_blocks) and cfg.evaluates() else None
    if cfg.metric_for_best_model and evaluate is not None:
        check_metric(cfg, dict.fromkeys(EVAL_METRICS, 0.0))

    def export(model, state_dict, output_dir):
        weights = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
        model.model.save_pretrained(output_dir, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)

    if cfg.gradient_checkpointing:  # the model's own layers then run (mlm's fast path keeps every activation)
        enable_activation_checkpointing(hf_model)
    model = SparseMaskedLM(hf_model, fast_encoder=not (shards_parameters(accelerator) or cfg.gradient_checkpointing))
    flops = train_flops_per_token(hf_model.config, cfg.max_seq_length, cfg.mlm_probability)
    if model.fast_encoder:
        logger.info("MLM head and last layer on the masked positions only")
    elif shards_parameters(accelerator):
        sparse = train_flops_per_token(hf_model.config, cfg.max_seq_length, cfg.mlm_probability, cfg.mlm_probability)
        logger.info("MLM head on the masked positions only; the last layer runs on every position (+%.0f%% FLOPs per "
                    "token): parameters are sharded, whole only inside a layer's own forward, which the sparse last "
                    "layer bypasses", 100 * (flops / sparse - 1))
    elif cfg.gradient_checkpointing:
        logger.info("MLM head on the masked positions only; the model's own layers run, under gradient checkpointing")
    else:
        logger.info("MLM head on the masked positions only (%s is not a plain BERT layer stack)", type(hf_model).__name__)
    check_plan(cfg, accelerator, len(train_blocks))
    with run_directory(cfg, accelerator):  # everything above is checked: from here on output_dir is this run's
        if accelerator.is_main_process and tokenizer_folder and tokenizer_folder != cfg.output_dir:
            copy_tokenizer(tokenizer_folder, cfg.output_dir)
        metrics = train(cfg, accelerator, model, train_blocks,
                        LoopParts(collate, loss_fn, evaluate, export, flops_per_token=flops))
        if "eval_loss" in metrics:
            metrics["perplexity"] = metrics["eval_perplexity"]
            metrics["masked_accuracy"] = metrics["eval_masked_accuracy"]
        metrics.update({"num_parameters": n_params, "train_flops_per_token": flops})
        if accelerator.is_main_process:
            write_json(os.path.join(cfg.output_dir, "metrics.json"), metrics)
            write_run_files(cfg, metrics, "pretrain", {"train": train_corpus.description})
            plot_losses(os.path.join(cfg.output_dir, "log.jsonl"), os.path.join(cfg.output_dir, "loss.png"))
            logger.info("done: %s", ", ".join(f"{k} {metrics[k]:.4g}" for k in ("eval_loss", "perplexity", "masked_accuracy", "train_tokens_per_second") if k in metrics))
            logger.info("model written to %s", cfg.output_dir)
    return metrics


def _shape(config, ids: int) -> str:
    padding = config.vocab_size - ids
    return (f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, {config.num_attention_heads} heads, "
            f"vocab {config.vocab_size}" + (f" ({ids} ids + {padding} padding rows)" if padding > 0 else ""))
