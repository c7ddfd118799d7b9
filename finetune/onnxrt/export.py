"""A transformers task model -> an ONNX graph with dynamic batch and sequence axes (torch.onnx, dynamo exporter).

    export_graph(model, tokenizer, "out/model.onnx", max_length=512)

The dynamo exporter (torch.export) is used because the legacy TorchScript tracer bakes the sample's attention mask
into transformers 5's mask code: its graph was off by up to 1e-2 on other masks, the dynamo one by 1e-7.
"""
from __future__ import annotations

import torch

from finetune.onnxrt import quiet
from mlm.core.fsutil import written_whole

INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what finetune.common.pad_batch gives a model


class _TupleOutputs(torch.nn.Module):
    """The model with named inputs and its outputs as a tuple (logits; start_logits, end_logits), which the
    exporter names in order."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.model(**{k: v for k, v in given.items() if v is not None}).to_tuple()


def graph_inputs(tokenizer) -> list[str]:
    """The inputs predictions will feed: the tokenizer's, once fit_tokenizer_to_model has dropped unused token types."""
    return [name for name in INPUTS if name in tokenizer.model_input_names]


def sample_batch(names: list[str], tokenizer, max_length: int) -> dict:
    """A (2, 8) batch: sizes above 1 and unequal, so the exporter keeps both axes symbolic rather than
    specialising them; the second row padded, two token types, as real batches have."""
    pad_id = tokenizer.pad_token_id
    word = next(i for i in (tokenizer.unk_token_id, tokenizer.cls_token_id, 0, 1) if i is not None and i != pad_id)
    length = min(8, max_length)
    ids = torch.full((2, length), word, dtype=torch.long)
    mask = torch.ones_like(ids)
    ids[1, length // 2:], mask[1, length // 2:] = pad_id, 0
    types = torch.zeros_like(ids)
    types[:, length // 2:] = 1
    return {name: value for name, value in zip(INPUTS, (ids, mask, types)) if name in names}


def output_names(model, sample: dict) -> list[str]:
    with torch.no_grad():
        return list(model(**sample).keys())


def export_graph(model, tokenizer, path: str, max_length: int, opset: int = 18) -> dict:
    """Write `model` (eval mode, CPU) to `path` (written whole, then renamed); returns the sample batch used."""
    from torch.export import Dim

    sample = sample_batch(graph_inputs(tokenizer), tokenizer, max_length)
    batch, sequence = Dim("batch"), Dim("sequence", max=max_length)
    with written_whole(path) as tmp, quiet("torch.onnx"):
        torch.onnx.export(_TupleOutputs(model), (), tmp, kwargs=sample, dynamo=True, external_data=False,
                          opset_version=opset, input_names=list(sample), output_names=output_names(model, sample),
                          dynamic_shapes={name: {0: batch, 1: sequence} for name in sample}, verbose=False)
    return sample
