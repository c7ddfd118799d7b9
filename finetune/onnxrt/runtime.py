"""ONNX Runtime behind the torch model interface the tasks use: `model(**inputs).logits` (start_logits, end_logits).

    model = load_onnx_model("outputs/finetune-cls", quantize=False, threads=1)
    finetune.predict.predict(task, model, tokenizer, cfg, labels, examples, batch_size=32)

An exported folder (finetune/export.py) holds model.onnx (model.int8.onnx with --quantize), config.json,
mlm_task.json and the tokenizer: everything but the torch weights, which ONNX Runtime does not read.
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Optional

import torch

from mlm.errors import ConfigError, DataError

FP32_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
INSTALL_HINT = "pip install mlm[onnx]"


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError(f"--backend onnxruntime: onnxruntime is not installed ({INSTALL_HINT})") from None
    return onnxruntime


def onnx_file(model_dir: str, quantize: bool) -> str:
    """The graph `mlm predict --backend onnxruntime [--quantize]` runs from model_dir; one-line errors when absent."""
    if not os.path.isdir(model_dir):
        raise DataError(f"--model: {model_dir} is not a folder")
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise DataError(f"--model: {model_dir} is not a task model folder (no config.json)")
    name = INT8_FILE if quantize else FP32_FILE
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
        raise DataError(f"--model: {model_dir} has no {name}; write it with "
                        f"`mlm export --model {model_dir}{' --quantize' if quantize else ''}`")
    return path


def onnx_positions(model_dir: str, quantize: bool) -> int:
    """The longest input the exported model takes (checks first that onnxruntime and the graph are there)."""
    import transformers

    from mlm.core.hf import usable_positions

    import_onnxruntime()
    onnx_file(model_dir, quantize)
    return usable_positions(transformers.AutoConfig.from_pretrained(model_dir))


def open_session(path: str, threads: int):
    """An ONNX Runtime CPU session with `threads` intra-op threads (--num_threads) and no inter-op pool: a BERT
    graph is a chain, so a second pool would only compete for the same cores."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads would spin between batches, taking the cores that tokenisation and decoding (and, on a
    # shared machine, other jobs) need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for damaged or foreign files
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: cannot load the ONNX model ({reason}); re-export it with mlm export") from None


class OnnxModel(torch.nn.Module):
    """A session that answers like a transformers task model: outputs as attributes, as CPU float tensors.

    The explicit token_type_ids parameter lets mlm.core.hf.fit_tokenizer_to_model decide on token types as it did
    for the torch model at export time; inputs the graph does not take are left out.
    """

    def __init__(self, session, config):
        super().__init__()
        self.session, self.config = session, config
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        missing = [name for name in self.input_names if given.get(name) is None]
        if missing:
            raise ValueError(f"the ONNX model needs {', '.join(missing)}, which the batch lacks")
        feeds = {name: given[name].cpu().numpy() for name in self.input_names}  # (B, T) int64 each
        outputs = self.session.run(self.output_names, feeds)
        return SimpleNamespace(**{name: torch.from_numpy(out) for name, out in zip(self.output_names, outputs)})


def load_onnx_model(model_dir: str, quantize: bool, threads: Optional[int]) -> OnnxModel:
    """model_dir's model.onnx (model.int8.onnx when quantize) in a session of `threads` threads (None: torch's)."""
    return onnx_model_at(onnx_file(model_dir, quantize), model_dir, threads)


def onnx_model_at(path: str, model_dir: str, threads: Optional[int]) -> OnnxModel:
    """The graph at `path` in a session of `threads` threads (None: torch's), answering with model_dir's config."""
    import transformers

    session = open_session(path, threads or torch.get_num_threads())
    return OnnxModel(session, transformers.AutoConfig.from_pretrained(model_dir)).eval()
