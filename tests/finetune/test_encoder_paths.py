"""The encoder paths of fine-tuning (finetune/encoder_paths.py): mlm's BERT layers, padded or unpadded
(variable-length, nested-tensor SDPA), equal transformers' own layers on every output a head reads."""
import pytest
import torch
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, BertConfig, DistilBertConfig)

from finetune.encoder_paths import mlm_layers
from finetune.unpadded import supports_unpadding, unpadded

HEADS = {"cls": AutoModelForSequenceClassification, "ner": AutoModelForTokenClassification,
         "qa": AutoModelForQuestionAnswering}


def _model(head: str):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2 if head == "qa" else 3,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return HEADS[head].from_config(config, attn_implementation="sdpa")


def _batch():
    """Rows of 11, 4, 7 and 1 real tokens, right-padded to 11 (pad id 0)."""
    lengths = [11, 4, 7, 1]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 97, (4, 11), generator=g)
    mask = (torch.arange(11)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _outputs(out) -> list:
    return [out.logits] if hasattr(out, "logits") and out.logits is not None else [out.start_logits, out.end_logits]


PATHS = {"unpadded": lambda model, batch, head: unpadded(model, batch["attention_mask"]),
         "mlm_layers": lambda model, batch, head: mlm_layers(model, batch["attention_mask"], head == "cls")}


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("head", sorted(HEADS))
def test_outputs_and_gradients_equal_transformers_layers(head, path):
    """cls under mlm_layers computes the last layer at [CLS] only: its logits and every gradient still equal."""
    model, batch = _model(head).train(), _batch()  # train mode with dropout 0: the training path, deterministic
    real = batch["attention_mask"].bool()
    padded = _outputs(model(**batch))
    loss = sum(o[real].sum() if o.dim() > 2 or head == "qa" else o.sum() for o in padded)
    loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with PATHS[path](model, batch, head):
        ours = _outputs(model(**batch))
    for a, b in zip(padded, ours):
        if head == "cls":  # (B, C): from [CLS]
            assert torch.allclose(a, b, atol=1e-5)
        else:  # per token: equal at the real ones; the padding (which every loss masks) is not computed
            assert torch.allclose(a[real], b[real], atol=1e-5)
    sum(o[real].sum() if o.dim() > 2 or head == "qa" else o.sum() for o in ours).backward()
    for name, p in model.named_parameters():
        if name in expected:
            assert torch.allclose(p.grad, expected[name], atol=1e-5), name
    assert "forward" not in vars(model.base_model.encoder)  # the swap ends with the batch
    assert type(model.base_model.embeddings.dropout) is torch.nn.Dropout


def test_mlm_layers_keep_dropout_and_the_model_unchanged():
    """Dropout 0.1 everywhere: the path draws its own masks (two passes differ), their mean over many draws is the
    no-dropout output, and the embeddings' dropout module is the model's own again after the batch."""
    model, batch = _model("ner").train(), _batch()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.1
    with torch.no_grad():
        model.eval()
        clean = model(**batch).logits
        model.train()
        torch.manual_seed(0)
        with mlm_layers(model, batch["attention_mask"]):
            assert isinstance(model.base_model.embeddings.dropout, torch.nn.Dropout)
            draws = torch.stack([model(**batch).logits for _ in range(600)])
        model.eval()  # no dropout at all in evaluation mode, embeddings included
        with mlm_layers(model, batch["attention_mask"]):
            assert torch.allclose(model(**batch).logits, clean, atol=1e-6)
    real = batch["attention_mask"].bool()
    assert not torch.allclose(draws[0], draws[1])
    assert (draws.mean(0)[real] - clean[real]).abs().max() < 0.05 < (draws[0][real] - clean[real]).abs().max()
    assert type(model.base_model.embeddings.dropout) is torch.nn.Dropout
    assert "forward" not in vars(model.base_model.encoder)


def test_unpadded_attention_keeps_dropout_and_refuses_other_layers():
    model, batch = _model("cls").train(), _batch()
    for layer in model.base_model.encoder.layer:
        layer.attention.self.dropout.p = 0.5
    with unpadded(model, batch["attention_mask"]):
        torch.manual_seed(0)
        first = model(**batch).logits
        second = model(**batch).logits
    assert not torch.allclose(first, second)  # attention dropout is on in training
    distil = AutoModelForSequenceClassification.from_config(DistilBertConfig(vocab_size=97, dim=32, n_layers=1,
                                                                             n_heads=2, hidden_dim=64))
    assert supports_unpadding(model) and not supports_unpadding(distil)
    with pytest.raises(ValueError, match="^unpadded attention needs plain BERT layers"):
        with unpadded(distil, batch["attention_mask"]):
            pass


def test_the_path_by_default_per_device_and_refused_in_one_line_where_it_cannot_run():
    from types import SimpleNamespace

    import finetune.encoder_paths as paths
    from mlm.errors import ConfigError

    def cfg(unpad=None, own=None, checkpointing=False):
        return SimpleNamespace(unpadded_attention=unpad, mlm_layers=own, gradient_checkpointing=checkpointing,
                               torch_compile=False)

    bert, cuda, cpu = _model("cls"), torch.device("cuda"), torch.device("cpu")
    distil = AutoModelForSequenceClassification.from_config(DistilBertConfig(vocab_size=97, dim=32, n_layers=1,
                                                                             n_heads=2, hidden_dim=64))

    def encoder_path(cfg, model, device, shards, first_token_only=True):  # a sequence head unless said otherwise
        return paths.encoder_path(cfg, model, device, shards, first_token_only)

    assert encoder_path(cfg(), bert, cuda, False) == "unpadded" and encoder_path(cfg(), bert, cpu, False) == "mlm_layers"
    assert encoder_path(cfg(), bert, cpu, False, first_token_only=False) == "transformers"  # measured no faster
    assert encoder_path(cfg(own=True), bert, cpu, False, first_token_only=False) == "mlm_layers"
    # FSDP: the layers' own forward gathers their weights; DistilBERT's layers are not BERT's
    assert encoder_path(cfg(), bert, cuda, True) == encoder_path(cfg(), bert, cpu, True) == "transformers"
    assert encoder_path(cfg(), distil, cpu, False) == "transformers"
    assert encoder_path(cfg(checkpointing=True), bert, cpu, False) == "transformers"
    assert encoder_path(cfg(True), bert, cpu, False) == "unpadded"
    assert encoder_path(cfg(False), bert, cuda, False) == "transformers"
    assert encoder_path(cfg(own=True), bert, cuda, False) == "unpadded"  # unpadded does all mlm_layers does
    assert encoder_path(cfg(False, own=True), bert, cuda, False) == "mlm_layers"
    assert encoder_path(cfg(own=False), bert, cpu, False) == "transformers"
    with pytest.raises(ConfigError, match=r"^unpadded_attention: cannot run here \(parameters are sharded"):
        encoder_path(cfg(True), bert, cuda, True)
    with pytest.raises(ConfigError, match=r"^mlm_layers: cannot run here \(the model has no plain BERT layers"):
        encoder_path(cfg(own=True), distil, cpu, False)


@pytest.mark.parametrize("task", ["ner", "cls"])
def test_a_fine_tuning_run_trains_alike_on_every_path(tmp_path, tiny_bert_dir, data_dir, task, mlm_log):
    """`mlm finetune` on CPU with each path: the same loss at every step (dropout off), and the log says which."""
    import json
    import os

    from finetune.run import main, parse_finetune_args

    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "finetune", f"{task}-tiny.yaml")
    data = os.path.join(data_dir, "conll2003" if task == "ner" else "sst2")
    flags = {"transformers": ["--mlm_layers", "false"], "mlm_layers": ["--mlm_layers", "true"],
             "unpadded": ["--unpadded_attention", "true"]}
    losses = {}
    for path, extra in flags.items():
        out = tmp_path / path
        main(parse_finetune_args(["--task", task, "--recipe", recipe, "--model_name_or_path", tiny_bert_dir,
                                  "--data_dir", data, "--output_dir", str(out), "--logging_steps", "1",
                                  "--disable_tqdm", "true", "--hidden_dropout_prob", "0",
                                  "--attention_probs_dropout_prob", "0", *extra]))
        losses[path] = [r["loss"] for r in map(json.loads, open(out / "log.jsonl")) if "loss" in r]
        assert f"training batches through {'the model' if path == 'transformers' else 'mlm'}" in mlm_log.text
        mlm_log.clear()
    assert len(losses["transformers"]) >= 4
    for path in ("mlm_layers", "unpadded"):
        assert losses[path] == pytest.approx(losses["transformers"], rel=1e-4), path
