"""The sparse MLM head gives the stock BertForMaskedLM loss; presets; checkpoint round trip."""
import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM

from mlm.errors import ConfigError, DataError
from mlm.model import PRESETS, SparseMaskedLM, build_masked_lm, preset_config, train_flops_per_token


def _tiny_model(vocab=97):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForMaskedLM(config).eval()


def test_sparse_loss_equals_stock_bert_for_masked_lm():
    model = _tiny_model()
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 97, (3, 16), generator=g)
    attention = torch.ones_like(input_ids)
    attention[2, 12:] = 0  # a padded row
    positions = torch.tensor([[1, 4, 7, 0], [2, 3, 9, 15], [5, 6, 0, 0]])
    labels = torch.tensor([[11, 12, 13, -100], [21, 22, 23, 24], [31, 32, -100, -100]])
    dense_labels = torch.full_like(input_ids, -100)
    for row in range(3):
        for pos, lab in zip(positions[row].tolist(), labels[row].tolist()):
            if lab != -100:
                dense_labels[row, pos] = lab
    with torch.no_grad():
        stock = model(input_ids=input_ids, attention_mask=attention, labels=dense_labels).loss
        out = SparseMaskedLM(model)(input_ids, attention, positions, labels)
    assert out["count"].item() == 9  # 3 + 4 + 2 real targets
    assert torch.allclose(out["loss_sum"] / out["count"], stock, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_head_runs_on_the_masked_positions_only(training):
    # Evaluation too: no (B, T, V) logits tensor is ever made, so eval memory follows the masked count.
    from mlm.model import mlm_head

    model = SparseMaskedLM(_tiny_model()).train(training)
    seen = []
    mlm_head(model.model).register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape)))
    input_ids = torch.randint(5, 97, (3, 16))
    positions = torch.tensor([[1, 4], [2, 3], [5, 6]])
    labels = torch.tensor([[11, 12], [21, -100], [31, 32]])
    out = model(input_ids, torch.ones_like(input_ids), positions, labels)
    assert seen == [(3, 2, 97)] and out["count"].item() == 5


def test_presets_follow_turc_et_al_shapes():
    config = preset_config("small", vocab_size=1000)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (4, 512, 8, 2048)
    assert PRESETS["base"] == (12, 768, 12) and PRESETS["large"] == (24, 1024, 16)
    assert preset_config("mini", 1000, hidden_size=384, num_attention_heads=6).hidden_size == 384
    with pytest.raises(ConfigError, match="model_preset"):
        preset_config("huge", 1000)
    with pytest.raises(ConfigError, match="hidden_size"):
        preset_config("mini", 1000, hidden_size=250)


def test_checkpoint_round_trip_gives_identical_logits(tmp_path):
    model = _tiny_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, 97, (2, 10))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_build_rejects_bad_checkpoints_and_lengths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no config.json"):
        build_masked_lm(str(tmp_path / "empty"), "mini", 100, 128)
    with pytest.raises(DataError, match="not a directory"):
        build_masked_lm(str(tmp_path / "missing"), "mini", 100, 128)
    _tiny_model().save_pretrained(tmp_path / "ok")
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        build_masked_lm(str(tmp_path / "ok"), "mini", 97, 128)


def test_flops_per_token_formula():
    config = preset_config("mini", vocab_size=16000)
    h, L, V = 256, 4, 16000
    n = L * (4 * h * h + 2 * h * 4 * h)
    assert train_flops_per_token(config, 128, 0.15) == 6 * n + 12 * L * 128 * h + 0.15 * 6 * h * (h + V)


def test_tiny_model_overfits_a_repeated_batch(tiny_tokenizer):
    from mlm.collator import MaskingCollator

    model = SparseMaskedLM(_tiny_model(vocab=len(tiny_tokenizer)).train())
    ids = tiny_tokenizer(["the movie was great and the plot was fun", "john visited paris and london"],
                         padding="max_length", max_length=16)["input_ids"]
    batch = MaskingCollator(tiny_tokenizer, mlm_probability=0.3, seed=0)([{"input_ids": r, "example_id": 0} for r in ids])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "masked_positions", "masked_labels")}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        out = model(**inputs)
        loss = out["loss_sum"] / out["count"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 and "correct" not in out  # accuracy costs an argmax: evaluation only
    with torch.no_grad():
        out = model.eval()(**inputs)
    assert out["correct"].item() == out["count"].item()
