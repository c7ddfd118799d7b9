"""model.onnx -> model.int8.onnx: ONNX Runtime's dynamic int8, the counterpart of `mlm predict --quantize`.

Weights of every MatMul (the Linear layers) stored as int8 with one scale per output channel, activations
quantised batch by batch at run time, as finetune.predict.quantize_linear_layers does in torch; embeddings and
the classifier's Gemm stay float32. ONNX Runtime's int8 kernels (MLAS) have AVX2 paths as well as AVX-512 VNNI
ones, where torch's dynamic int8 gained only 1.2x on an AVX2-only CPU (issue #22).
"""
from __future__ import annotations

from finetune.onnxrt import quiet
from mlm.core.fsutil import written_whole


def quantize_dynamic_int8(src: str, dst: str) -> None:
    """Write the int8 copy of the graph at `src` to `dst` (written whole, then renamed)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(src)
    # The dynamo exporter records intermediate shapes that onnx's shape inference, which the quantizer runs,
    # rejects (384 vs 2 on MiniLM): drop them, to be inferred afresh.
    del model.graph.value_info[:]
    # (quiet: its advice to pre-process the graph; it infers the shapes itself, ONNX Runtime optimises at load)
    with written_whole(dst) as tmp, quiet():
        quantize_dynamic(model, tmp, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
