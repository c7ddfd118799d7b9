"""Unpadded (variable-length, nested-tensor SDPA) attention equals the padded model on every real token."""
import pytest
import torch
from transformers import (AutoModelForQuestionAnswering, AutoModelForSequenceClassification,
                          AutoModelForTokenClassification, BertConfig, DistilBertConfig)

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


@pytest.mark.parametrize("head", sorted(HEADS))
def test_unpadded_outputs_and_gradients_equal_the_padded_model(head):
    model, batch = _model(head).train(), _batch()  # train mode with dropout 0: the training path, deterministic
    real = batch["attention_mask"].bool()
    padded = _outputs(model(**batch))
    loss = sum(o[real].sum() if o.dim() > 2 or head == "qa" else o.sum() for o in padded)
    loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with unpadded(model, batch["attention_mask"]):
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


def test_unpadded_by_default_on_cuda_only_and_refused_in_one_line_where_it_cannot_run():
    from types import SimpleNamespace

    from finetune.unpadded import use_unpadded
    from mlm.errors import ConfigError

    def cfg(asked=None):
        return SimpleNamespace(unpadded_attention=asked, gradient_checkpointing=False, torch_compile=False)

    bert, cuda, cpu = _model("cls"), torch.device("cuda"), torch.device("cpu")
    assert use_unpadded(cfg(), bert, cuda, False) and not use_unpadded(cfg(), bert, cpu, False)
    assert not use_unpadded(cfg(), bert, cuda, True)  # FSDP: the layers' own forward gathers their weights
    assert use_unpadded(cfg(True), bert, cpu, False) and not use_unpadded(cfg(False), bert, cuda, False)
    with pytest.raises(ConfigError, match=r"^unpadded_attention: cannot run here \(parameters are sharded"):
        use_unpadded(cfg(True), bert, cuda, True)


def test_a_fine_tuning_run_unpadded_trains_as_the_padded_one(tmp_path, tiny_bert_dir, data_dir):
    """`mlm finetune --task ner --unpadded_attention true` on CPU: the same loss at every step (dropout off)."""
    import json
    import os

    from finetune.run import main, parse_finetune_args

    recipe = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "finetune", "ner-tiny.yaml")
    losses = {}
    for unpad in ("true", "false"):
        out = tmp_path / unpad
        main(parse_finetune_args(["--task", "ner", "--recipe", recipe,
                                  "--model_name_or_path", tiny_bert_dir, "--data_dir",
                                  os.path.join(data_dir, "conll2003"), "--output_dir", str(out), "--logging_steps", "1",
                                  "--disable_tqdm", "true", "--unpadded_attention", unpad,
                                  "--hidden_dropout_prob", "0", "--attention_probs_dropout_prob", "0"]))
        losses[unpad] = [r["loss"] for r in map(json.loads, open(out / "log.jsonl")) if "loss" in r]
    assert len(losses["true"]) == 4 and losses["true"] == pytest.approx(losses["false"], rel=1e-4)
