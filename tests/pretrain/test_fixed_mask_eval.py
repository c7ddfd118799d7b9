"""The common masked-LM evaluation: fixed, seeded masks, identical for every model that shares a tokenizer."""
import math

import pytest
import torch

from mlm.pretrain.fixed_mask_eval import IGNORE, evaluate_folder, fixed_masks, masked_lm_loss

LINES = ["john visited paris when he was new", "", "  ", "they love the movie and the plot", "i hate boring acting"] * 20


def test_masks_are_fixed_by_the_seed_and_never_on_specials_or_padding(tiny_tokenizer):
    ids, attention, labels = fixed_masks(tiny_tokenizer, LINES, max_seq_length=16, mask_rate=0.3, seed=7)
    again = fixed_masks(tiny_tokenizer, LINES, max_seq_length=16, mask_rate=0.3, seed=7)
    other = fixed_masks(tiny_tokenizer, LINES, max_seq_length=16, mask_rate=0.3, seed=8)
    assert all(torch.equal(a, b) for a, b in zip((ids, attention, labels), again))
    assert not torch.equal(labels, other[2])
    chosen = labels != IGNORE
    assert chosen.any(1).all()  # at least one prediction per block
    lengths = attention.sum(1)
    assert not chosen[:, 0].any() and not chosen[torch.arange(len(ids)), lengths - 1].any()  # [CLS], [SEP]
    assert not (chosen & (attention == 0)).any()
    assert abs(chosen.sum().item() / (lengths - 2).sum().item() - 0.3) < 0.08
    # 80% of the chosen positions read [MASK]; unchosen positions keep their token
    assert (ids[chosen] == tiny_tokenizer.mask_token_id).float().mean().item() > 0.6
    unmasked = fixed_masks(tiny_tokenizer, LINES, max_seq_length=16, mask_rate=1e-9, seed=7)
    original = torch.where(unmasked[2] != IGNORE, unmasked[2], unmasked[0])
    assert torch.equal(ids[~chosen], original[~chosen]) and torch.equal(labels[chosen], original[chosen])


def test_blocks_are_the_token_stream_cut_in_order(tiny_tokenizer):
    ids, attention, labels = fixed_masks(tiny_tokenizer, ["john visited paris", "i love the plot"], max_seq_length=8,
                                         mask_rate=1e-9)
    stream = tiny_tokenizer(["john visited paris", "i love the plot"], add_special_tokens=False)["input_ids"]
    stream = [t for row in stream for t in row]
    original = torch.where(labels != IGNORE, labels, ids)  # the one forced mask per block undone
    body = [original[r, 1:attention[r].sum() - 1].tolist() for r in range(len(ids))]
    assert [t for block in body for t in block] == stream and all(len(b) <= 6 for b in body)


def test_the_loss_is_the_mean_cross_entropy_over_the_chosen_positions(tiny_bert_dir, tiny_tokenizer):
    from transformers import AutoModelForMaskedLM

    model = AutoModelForMaskedLM.from_pretrained(tiny_bert_dir)
    ids, attention, labels = fixed_masks(tiny_tokenizer, LINES, max_seq_length=16)
    result = masked_lm_loss(model, ids, attention, labels, batch_size=3)  # batches that do not divide the blocks
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
    keep = labels != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep]).item()
    assert result["mlm_loss"] == pytest.approx(expected, rel=1e-5)
    assert result["masked_tokens"] == keep.sum().item() and result["perplexity"] == pytest.approx(math.exp(expected))


def test_a_folder_is_scored_with_its_own_tokenizer(tiny_bert_dir, tmp_path):
    text = tmp_path / "test.txt"
    text.write_text("\n".join(LINES))
    first = evaluate_folder(tiny_bert_dir, str(text), max_seq_length=16)
    assert first == evaluate_folder(tiny_bert_dir, str(text), max_seq_length=16)  # deterministic
    assert 0 < first["mlm_loss"] < 2 * math.log(80)


def test_an_empty_text_is_refused(tiny_tokenizer):
    with pytest.raises(ValueError, match="no tokens"):
        fixed_masks(tiny_tokenizer, ["", "   "])
