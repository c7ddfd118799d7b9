"""The optimizer's parameter groups: no weight decay on biases and norms, layer-wise learning-rate decay."""
import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification

from mlm.cli import main as cli_main
from mlm.core.config import TrainingConfig
from mlm.core.optim import build_optimizer, layer_depths
from mlm.errors import ConfigError


def test_layer_depths_across_encoder_families():
    names = ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight",
             "bert.encoder.layer.11.output.LayerNorm.bias", "bert.pooler.dense.weight", "classifier.weight"]
    assert layer_depths(names) == dict(zip(names, [0, 1, 12, 13, 13]))
    names = ["distilbert.embeddings.position_embeddings.weight", "distilbert.transformer.layer.5.ffn.lin1.weight",
             "pre_classifier.weight"]
    assert layer_depths(names) == dict(zip(names, [0, 6, 7]))
    names = ["model.embeddings.tok_embeddings.weight", "model.layers.1.attn.Wqkv.weight", "model.final_norm.weight",
             "head.dense.weight"]
    assert layer_depths(names) == dict(zip(names, [0, 2, 3, 3]))
    with pytest.raises(ValueError, match="no numbered encoder layers"):
        layer_depths(["weight", "bias"])


def tiny_classifier():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=16, num_labels=2))


def test_layer_lr_decay_gives_each_parameter_the_rate_of_its_depth():
    model = tiny_classifier()
    optimizer = build_optimizer(model, TrainingConfig(learning_rate=1.0, layer_lr_decay=0.5, weight_decay=0.1))
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(rate) == len(named) == sum(len(g["params"]) for g in optimizer.param_groups)  # each exactly once
    expected = {"bert.embeddings.word_embeddings.weight": 0.125, "bert.embeddings.LayerNorm.weight": 0.125,
                "bert.encoder.layer.0.attention.self.query.weight": 0.25, "bert.encoder.layer.1.output.dense.bias": 0.5,
                "bert.pooler.dense.weight": 1.0, "classifier.bias": 1.0}
    assert {name: rate[id(named[name])] for name in expected} == expected
    assert all(decay[id(p)] == (0.1 if p.ndim >= 2 else 0.0) for p in named.values())
    assert optimizer.param_groups[0]["lr"] == 1.0  # the head's group first: the rate the log reports
    plain = build_optimizer(model, TrainingConfig(learning_rate=1.0))
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in plain.param_groups] == [
        (1.0, 0.01, sum(p.ndim >= 2 for p in named.values())), (1.0, 0.0, sum(p.ndim < 2 for p in named.values()))]


def test_layer_lr_decay_on_a_model_without_layers_is_refused():
    with pytest.raises(ConfigError, match="layer_lr_decay: no numbered encoder layers"):
        build_optimizer(torch.nn.Linear(3, 2), TrainingConfig(layer_lr_decay=0.8))
    with pytest.raises(ConfigError, match=r"layer_lr_decay: must be in \(0, 1\], got 0"):
        TrainingConfig(layer_lr_decay=0)


def test_finetuning_with_layer_lr_decay_barely_moves_the_lowest_layers(tmp_path, tiny_bert_dir):
    """Through `mlm finetune`: with decay 1e-3 the embeddings train at 1e-9 x the head's rate (Adam moves a weight by
    about its rate per step), so after 6 steps they are where the backbone had them; without it they move."""
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "great fun,pos\nbad plot,neg\na fun film,pos\nboring film,neg\n" * 2)
    backbone = load_file(f"{tiny_bert_dir}/model.safetensors")["bert.embeddings.word_embeddings.weight"]
    moved = {}
    for decay in ("1e-3", "1.0"):
        out = tmp_path / f"decay-{decay}"
        assert cli_main(["finetune", "--task", "cls", "--train_file", str(train), "--model_name_or_path", tiny_bert_dir,
                         "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size", "4",
                         "--learning_rate", "1e-2", "--lr_scheduler_type", "constant",
                         "--layer_lr_decay", decay, "--disable_tqdm", "true"]) == 0
        tuned = load_file(out / "model.safetensors")
        moved[decay] = (tuned["bert.embeddings.word_embeddings.weight"] - backbone).abs().max().item()
        assert tuned["classifier.weight"].abs().max() > 0  # the head trained in both
    assert moved["1e-3"] < 1e-7 and moved["1.0"] > 1e-3
