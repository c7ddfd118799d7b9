"""Masked-LM loss with a fixed, seeded set of masks: one number that compares any two MLM checkpoints.

    python -m mlm.pretrain.fixed_mask_eval MODEL_DIR TEXT_FILE [--max_blocks 500]

The validation loss a pretraining run logs draws new masks every time, and its masking rate is the run's own
(a run trained at 30% is scored at 30%), so two runs' logged losses are not comparable. Here the text is
tokenized by the model's tokenizer, cut into consecutive blocks of `max_seq_length` ([CLS] ... [SEP]), and
`mask_rate` of the non-special tokens of each block are chosen by a generator seeded with `seed` (80% [MASK],
10% a random token, 10% kept): two models that share a tokenizer are scored on exactly the same inputs.
The result is the mean cross-entropy (nats) over the chosen tokens, from the model's full output logits.
"""
from __future__ import annotations

import math

import torch

IGNORE = -100


def fixed_masks(tokenizer, lines, max_seq_length: int = 128, mask_rate: float = 0.15, seed: int = 0,
                max_blocks: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels), each (N, max_seq_length): the text's blocks with their fixed masks.

    Lines are stripped, empty ones skipped, and the rest concatenated (one token stream, as packing does);
    the last block may be shorter (padded, attention 0). labels hold the original id at chosen positions, else -100.
    """
    ids: list[int] = []
    texts = [line.strip() for line in lines if line.strip()]
    for start in range(0, len(texts), 1000):
        # verbose=False: a line longer than the model is fine, the stream is cut into blocks below
        for row in tokenizer(texts[start:start + 1000], add_special_tokens=False, verbose=False)["input_ids"]:
            ids.extend(row)
    body = max_seq_length - 2
    blocks = [ids[i:i + body] for i in range(0, len(ids), body)]
    if max_blocks is not None:
        blocks = blocks[:max_blocks]
    if not blocks:
        raise ValueError("fixed_masks: the text has no tokens")
    n = len(blocks)
    input_ids = torch.full((n, max_seq_length), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, max_seq_length), dtype=torch.long)
    for row, block in enumerate(blocks):
        tokens = [tokenizer.cls_token_id, *block, tokenizer.sep_token_id]
        input_ids[row, :len(tokens)] = torch.tensor(tokens)
        attention[row, :len(tokens)] = 1
    maskable = attention.bool()
    maskable[:, 0] = False
    maskable[torch.arange(n), attention.sum(1) - 1] = False  # [SEP]
    gen = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(input_ids.shape, generator=gen) < mask_rate) & maskable
    # At least one prediction per block: a block with none would contribute nothing and hide nothing.
    first = torch.argmax(maskable.int(), dim=1)
    chosen[torch.arange(n), first] |= ~chosen.any(1) & maskable.any(1)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    draw = torch.rand(input_ids.shape, generator=gen)
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=gen)
    masked = input_ids.clone()
    masked[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    swap = chosen & (draw >= 0.8) & (draw < 0.9)
    masked[swap] = random_ids[swap]
    return masked, attention, labels


@torch.no_grad()
def masked_lm_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                   batch_size: int = 64) -> dict:
    """Mean cross-entropy (nats) of `model` (any AutoModelForMaskedLM) over the labelled positions."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(input_ids), batch_size):
        rows = slice(start, start + batch_size)
        logits = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows]).logits  # (B, T, V)
        target = labels[rows]
        keep = target != IGNORE
        total += torch.nn.functional.cross_entropy(logits[keep].float(), target[keep], reduction="sum").item()
        count += int(keep.sum())
    loss = total / count
    return {"mlm_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "masked_tokens": count,
            "blocks": len(input_ids)}


def evaluate_folder(model_dir: str, text_file: str, max_seq_length: int = 128, mask_rate: float = 0.15,
                    seed: int = 0, max_blocks: int | None = None, batch_size: int = 64) -> dict:
    """The fixed-mask loss of the MLM checkpoint in `model_dir` (its own tokenizer) on `text_file`."""
    from transformers import AutoModelForMaskedLM

    from mlm.core.hf import check_checkpoint_dir, load_tokenizer, loading_kwargs

    model_dir = check_checkpoint_dir(model_dir)
    tokenizer = load_tokenizer(model_dir, field="model_dir")
    model = AutoModelForMaskedLM.from_pretrained(model_dir, **loading_kwargs(False))
    with open(text_file, encoding="utf-8") as f:
        batch = fixed_masks(tokenizer, f, max_seq_length, mask_rate, seed, max_blocks)
    return masked_lm_loss(model, *batch, batch_size=batch_size)


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("text_file")
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--mask_rate", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_blocks", type=int, default=None)
    args = parser.parse_args()
    print(json.dumps(evaluate_folder(args.model_dir, args.text_file, args.max_seq_length, args.mask_rate, args.seed,
                                     args.max_blocks)))
