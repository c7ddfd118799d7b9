"""The sparse MLM head gives the stock BertForMaskedLM loss; presets; checkpoint round trip."""
import math

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig

from mlm.errors import ConfigError, DataError
from mlm.pretrain.model import (PADDING_LOGIT, PRESETS, SparseMaskedLM, build_masked_lm, preset_config,
                                train_flops_per_token)
from mlm.core.hf import usable_positions


def _tiny_model(vocab=97, attn_implementation="sdpa"):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return AutoModelForMaskedLM.from_config(config, attn_implementation=attn_implementation).eval()


def _masked_batch():
    """Three rows of 16 tokens, the last one padded after 12; K = 4 slots, some unused (-100)."""
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 97, (3, 16), generator=g)
    attention = torch.ones_like(input_ids)
    attention[2, 12:] = 0
    positions = torch.tensor([[1, 4, 7, 0], [2, 3, 9, 15], [5, 6, 0, 0]])
    labels = torch.tensor([[11, 12, 13, -100], [21, 22, 23, 24], [31, 32, -100, -100]])
    return input_ids, attention, positions, labels


def _dense_labels(input_ids, positions, labels):
    """The (B, T) labels of the stock models: -100 except at the masked positions."""
    dense = torch.full_like(input_ids, -100)
    for row in range(len(input_ids)):
        for pos, lab in zip(positions[row].tolist(), labels[row].tolist()):
            if lab != -100:
                dense[row, pos] = lab
    return dense


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("fast_encoder", [True, False])
def test_sparse_loss_equals_stock_bert_for_masked_lm(fast_encoder, attn_implementation):
    model = _tiny_model(attn_implementation=attn_implementation)
    input_ids, attention, positions, labels = _masked_batch()
    with torch.no_grad():
        stock = model(input_ids=input_ids, attention_mask=attention,
                      labels=_dense_labels(input_ids, positions, labels)).loss
        sparse = SparseMaskedLM(model, fast_encoder=fast_encoder)
        assert sparse.fast_encoder == fast_encoder
        out = sparse(input_ids, attention, positions, labels)
    assert out["count"].item() == 9  # 3 + 4 + 2 real targets
    assert torch.allclose(out["loss_sum"] / out["count"], stock, atol=1e-5)


@pytest.mark.parametrize("family", ["distilbert", "electra", "albert"])
def test_other_mlm_heads_give_the_stock_loss(family):
    # Their layers are not BERT's: the model's own encoder runs, and the head is found and run on the K slots.
    import transformers

    small = dict(vocab_size=97, max_position_embeddings=32)
    config = {
        "distilbert": transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, dropout=0.0,
                                                    attention_dropout=0.0, **small),
        "electra": transformers.ElectraConfig(embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64, **small),
        "albert": transformers.AlbertConfig(embedding_size=16, hidden_size=32, num_hidden_layers=2,
                                            num_attention_heads=2, intermediate_size=64, **small),
    }[family]
    torch.manual_seed(0)
    model = transformers.AutoModelForMaskedLM.from_config(config).eval()
    input_ids, attention, positions, labels = _masked_batch()
    with torch.no_grad():
        stock = model(input_ids=input_ids, attention_mask=attention,
                      labels=_dense_labels(input_ids, positions, labels)).loss
        sparse = SparseMaskedLM(model)
        out = sparse(input_ids, attention, positions, labels)
    assert not sparse.fast_encoder
    assert torch.allclose(out["loss_sum"] / out["count"], stock, atol=1e-5)
    assert train_flops_per_token(config, 16, 0.15) > 0


@pytest.mark.parametrize("training", [True, False])
def test_head_runs_on_the_masked_positions_only(training):
    # Evaluation too: no (B, T, V) logits tensor is ever made, so eval memory follows the masked count.
    from mlm.pretrain.model import mlm_head

    model = SparseMaskedLM(_tiny_model()).train(training)
    seen = []
    mlm_head(model.model).register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape)))
    input_ids = torch.randint(5, 97, (3, 16))
    positions = torch.tensor([[1, 4], [2, 3], [5, 6]])
    labels = torch.tensor([[11, 12], [21, -100], [31, 32]])
    out = model(input_ids, torch.ones_like(input_ids), positions, labels)
    assert seen == [(3, 2, 97)] and out["count"].item() == 5


def test_fast_encoder_gives_the_full_encoders_gradients():
    # The last layer computed at the masked rows only is the same function of every weight: the same
    # loss and the same gradient for each parameter (those of unmasked rows are zero in the full encoder).
    batch = _masked_batch()
    grads = {}
    for sparse in (True, False):
        model = SparseMaskedLM(_tiny_model(), fast_encoder=sparse).train()
        out = model(*batch)
        (out["loss_sum"] / out["count"]).backward()
        grads[sparse] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 20
    for name, grad in grads[False].items():
        assert torch.allclose(grads[True][name], grad, atol=1e-6), name


def test_fast_encoder_runs_its_feed_forward_on_the_masked_rows_only():
    model = SparseMaskedLM(_tiny_model())
    seen = []
    for layer in model.model.bert.encoder.layer:
        layer.intermediate.register_forward_hook(lambda module, inputs, output: seen.append(tuple(output.shape)))
    model(*_masked_batch())
    assert seen == [(3, 16, 64), (3, 4, 64)]  # layer 1 on all 16 positions, the last on the K = 4 slots


def test_fast_encoder_on_roberta_and_fallback_for_other_layers():
    from transformers import RobertaConfig, RobertaForMaskedLM

    from mlm.pretrain.encoder import bert_layers

    torch.manual_seed(0)
    roberta = RobertaForMaskedLM(RobertaConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=40, pad_token_id=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )).eval()
    input_ids, attention, positions, labels = _masked_batch()
    input_ids[2, 12:] = 1  # RoBERTa's position ids skip its padding id
    with torch.no_grad():
        losses = [SparseMaskedLM(roberta, fast_encoder=s)(input_ids, attention, positions, labels)["loss_sum"]
                  for s in (True, False)]
    assert SparseMaskedLM(roberta).fast_encoder
    assert torch.allclose(losses[0], losses[1], atol=1e-5)
    decoder = _tiny_model()
    decoder.config.is_decoder = True  # causal layers: not the layer layer_at_positions computes
    assert bert_layers(decoder) is None and not SparseMaskedLM(decoder).fast_encoder


def test_lane_dropout_drops_p_in_every_lane_and_keeps_the_mean():
    from mlm.pretrain.encoder import LaneDropout, dropout

    torch.manual_seed(0)
    x = torch.ones(1001, 1000)  # 1,001,000 elements: not a multiple of the 4 lanes per draw
    y = dropout(x, 0.1, training=True)
    dropped = y == 0
    kept_value = 65536 / (65536 - 6554)  # p = 0.1 rounds to 6554 / 65536
    assert torch.all(dropped | torch.isclose(y, torch.tensor(kept_value)))
    for lane in range(4):  # each 16-bit lane of the 64-bit draws is a fair source on its own
        rate = dropped.reshape(-1)[lane::4].float().mean().item()
        assert abs(rate - 0.1) < 0.003, (lane, rate)
    assert abs(y.mean().item() - 1.0) < 0.005
    assert abs(dropout(x, 0.5, True).eq(0).float().mean().item() - 0.5) < 0.003
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0, training=True) is x
    torch.manual_seed(3)
    a = LaneDropout(0.2)(x)
    torch.manual_seed(3)
    assert torch.equal(a, dropout(x, 0.2, True))  # seeded by torch's generator: reproducible
    x.requires_grad_(True)
    out = dropout(x, 0.1, True)
    out.sum().backward()
    assert torch.equal(x.grad, out.detach())  # gradient: the same mask and scale


def test_attention_with_dropout_path_matches_sdpa_and_ignores_padding():
    # p = 1e-9 takes the explicit (dropout) path but rounds to a threshold of 0: nothing is dropped, so it
    # must equal SDPA's output; padded keys must get no weight in either path.
    from mlm.pretrain.encoder import _attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g) for _ in range(3))
    key_mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    key_mask[1, ..., 3:] = False
    for p in (1e-9, 0.0):
        out = _attend(q, k, v, key_mask, p)
        v2 = v.clone()
        v2[1, :, 3:] = 100.0  # values at padded keys
        assert torch.allclose(out, _attend(q, k, v2, key_mask, p), atol=1e-6)
    assert torch.allclose(_attend(q, k, v, key_mask, 1e-9), _attend(q, k, v, key_mask, 0.0), atol=1e-6)


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


@pytest.mark.parametrize("tied", [True, False])
def test_a_new_models_vocabulary_is_padded_to_64_and_the_padding_never_predicted(tmp_path, tied):
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    hf = build_masked_lm(None, "tiny", 100, 32, tie_word_embeddings=tied, **tiny)
    assert hf.config.vocab_size == 128 and hf.get_input_embeddings().weight.shape == (128, 32)
    assert (hf.get_input_embeddings().weight is hf.get_output_embeddings().weight) == tied
    assert build_masked_lm(None, "tiny", 128, 32, **tiny).config.vocab_size == 128  # already a multiple
    assert build_masked_lm(None, "tiny", 100, 32, pad_vocab_multiple=0, **tiny).config.vocab_size == 100  # off

    # the sparse head: padding logits are exactly the bias, never the argmax; the loss is the one over the real ids
    model = SparseMaskedLM(hf).train()
    input_ids, attention, positions, labels = _masked_batch()
    out = model(input_ids, attention, positions, labels)
    assert (out["logits"][:, 100:] == PADDING_LOGIT).all() and (out["logits"].argmax(-1) < 100).all()
    real = torch.nn.functional.cross_entropy(out["logits"][:, :100], labels.reshape(-1), reduction="sum")
    assert torch.allclose(out["loss_sum"], real, rtol=1e-6)

    # training never moves the padding rows: their gradients are exactly 0 (mlm's AdamW, weight decay on; the bias,
    # 1-D, gets none)
    from mlm.core.config import TrainingConfig
    from mlm.core.optim import build_optimizer

    optimizer = build_optimizer(model, TrainingConfig(output_dir=str(tmp_path / "o"), learning_rate=1e-2,
                                                      weight_decay=0.1))
    for _ in range(3):
        optimizer.zero_grad()
        model(input_ids, attention, positions, labels)["loss_sum"].backward()
        optimizer.step()
    output = hf.get_output_embeddings()
    assert (hf.get_input_embeddings().weight[100:] == 0).all() and (output.weight[100:] == 0).all()
    assert (output.bias[100:] == PADDING_LOGIT).all() and output.bias[:100].abs().sum() > 0

    # an ordinary checkpoint: plain transformers loads it with the padding rows as they were, and it loads unchanged
    # (untied: the output bias too, which transformers' resize had shared with the head's)
    hf.save_pretrained(tmp_path / "padded")
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "padded").eval()
    assert loaded.config.tie_word_embeddings == tied
    with torch.no_grad():
        logits = loaded(input_ids=input_ids, attention_mask=attention).logits  # (B, T, 128)
        assert torch.equal(logits, hf.eval()(input_ids=input_ids, attention_mask=attention).logits)
    assert logits.shape == (3, 16, 128) and (logits[..., 100:] == PADDING_LOGIT).all()
    assert (logits.argmax(-1) < 100).all()
    assert build_masked_lm(str(tmp_path / "padded"), "tiny", 100, 32).config.vocab_size == 128


def test_an_existing_checkpoint_keeps_its_vocabulary(tmp_path):
    _tiny_model().save_pretrained(tmp_path / "old")  # vocab 97, not a multiple of 64
    assert build_masked_lm(str(tmp_path / "old"), "mini", 97, 32).config.vocab_size == 97


def test_build_rejects_bad_checkpoints_and_lengths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no config.json"):
        build_masked_lm(str(tmp_path / "empty"), "mini", 100, 128)
    with pytest.raises(ConfigError, match=rf"^model_name_or_path: {tmp_path / 'missing'}: no such folder$"):
        build_masked_lm(str(tmp_path / "missing"), "mini", 100, 128)
    _tiny_model().save_pretrained(tmp_path / "ok")
    with pytest.raises(ConfigError, match="max_seq_length: 128 exceeds the model's 64 positions"):
        build_masked_lm(str(tmp_path / "ok"), "mini", 97, 128)
    with pytest.raises(ConfigError, match="^tie_word_embeddings: False, but the checkpoint .* has True;"):
        build_masked_lm(str(tmp_path / "ok"), "mini", 97, 32, tie_word_embeddings=False)
    with pytest.raises(ConfigError, match="^position_embedding_init: sinusoidal describes a new model; the checkpoint"):
        build_masked_lm(str(tmp_path / "ok"), "mini", 97, 32, position_init="sinusoidal")
    with pytest.raises(ConfigError, match="^position_embedding_init: unknown 'rope'"):
        build_masked_lm(None, "mini", 97, 32, position_init="rope")


def test_sinusoidal_positions_put_every_offset_one_linear_map_away_and_change_nothing_else():
    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    normal = build_masked_lm(None, "tiny", 100, 32, **tiny)
    torch.manual_seed(0)
    sinusoidal = build_masked_lm(None, "tiny", 100, 32, position_init="sinusoidal", **tiny)
    rows = sinusoidal.bert.embeddings.position_embeddings.weight.detach().double()
    assert rows.shape == (512, 32) and abs(rows.std().item() - 0.02) < 1e-6  # the spread of BERT's random rows
    assert (rows[0, 0::2] == 0).all() and torch.allclose(rows[0, 1::2], rows[0, 1])  # sin 0 = 0, cos 0 = 1
    assert torch.allclose(rows[1, 0] / rows[0, 1], torch.tensor(math.sin(1.0), dtype=torch.float64))

    def offset_residual(table, k):  # how far row i+k is from one linear map of row i, over every i
        solution = torch.linalg.lstsq(table[:-k], table[k:]).solution
        return ((table[:-k] @ solution - table[k:]).norm() / table[k:].norm()).item()

    assert max(offset_residual(rows, k) for k in (1, 2, 7, 100)) < 1e-5
    random_rows = normal.bert.embeddings.position_embeddings.weight.detach().double()
    assert offset_residual(random_rows, 1) > 0.5
    # no random number drawn: every other tensor is the one the normal initialisation gives
    others = {k: v for k, v in normal.state_dict().items() if "position_embeddings" not in k}
    assert all(torch.equal(v, sinusoidal.state_dict()[k]) for k, v in others.items())


def test_usable_positions_skip_roberta_padding_offset():
    from transformers import BertConfig, RobertaConfig

    assert usable_positions(BertConfig(max_position_embeddings=512)) == 512
    assert usable_positions(RobertaConfig(max_position_embeddings=514, pad_token_id=1)) == 512


def test_flops_per_token_formula():
    config = preset_config("mini", vocab_size=16000)
    h, L, V = 256, 4, 16000
    n = L * (4 * h * h + 2 * h * 4 * h)
    assert train_flops_per_token(config, 128, 0.15) == 6 * n + 12 * L * 128 * h + 0.15 * 6 * h * (h + V)
    # SparseMaskedLM's last layer: K and V on all 128 positions, the rest (and attention) on 20 of them.
    f = 20 / 128
    last = 2 * h * h + f * (2 * h * h + 8 * h * h)
    performed = 6 * (3 * (12 * h * h) + last) + 12 * (3 + f) * 128 * h + f * 6 * h * (h + V)
    assert train_flops_per_token(config, 128, f, last_layer_fraction=f) == pytest.approx(performed)


def test_tiny_model_overfits_a_repeated_batch(tiny_tokenizer):
    from mlm.pretrain.masking import MaskingCollator

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
