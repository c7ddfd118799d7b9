"""ONNX export and ONNX Runtime serving of fine-tuned task models (`mlm export`, `mlm predict --backend onnxruntime`).

export.py writes the graph, quantize.py its int8 copy, runtime.py runs either behind the call the tasks make on a
transformers model, so prediction keeps each task's own batching and decoding. Needs `pip install mlm[onnx]`.
"""

import contextlib
import logging
import warnings


@contextlib.contextmanager
def quiet(logger_name: str = ""):
    """Silence the warnings, and the log records below ERROR of `logger_name` ("" = root), of the ONNX tools:
    notices about their own internals (torchvision absent, pre-processing advice), noise for a CLI user."""
    log = logging.getLogger(logger_name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)
