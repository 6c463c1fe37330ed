"""Features from exported ONNX graphs: the input of the final Gemm/MatMul, added as the graph's output.

resnetkit's ONNX export ends ``... -> pooled features -> Gemm (or MatMul + Add) -> logits``; int8
graphs put QuantizeLinear/DequantizeLinear pairs in between. Walking back from ``logits`` to the
first Gemm/MatMul finds the pooled features, which ONNX Runtime can return once they are an output.
Other exported kinds (OpenVINO IR, TorchScript) keep only the logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.loading import Classifier

if TYPE_CHECKING:
    import onnx

    from ..backends.onnxruntime import OnnxRuntimeRunner

LINEAR_OPS = ("Gemm", "MatMul")
MAX_STEPS = 6  # nodes between the head and the output: Add, QuantizeLinear, DequantizeLinear, Identity...


def head_input(model: onnx.ModelProto) -> str | None:
    """The name of the tensor feeding the graph's final linear layer, or None if there is none close to the output."""
    producers = {out: node for node in model.graph.node for out in node.output}
    initializers = {init.name for init in model.graph.initializer}
    tensor = model.graph.output[0].name
    for _ in range(MAX_STEPS):
        node = producers.get(tensor)
        if node is None:
            return None
        if node.op_type in LINEAR_OPS:
            return node.input[0]
        upstream = [name for name in node.input if name in producers and name not in initializers]
        if not upstream:
            return None
        tensor = upstream[0]
    return None


def onnx_features_runner(classifier: Classifier) -> OnnxRuntimeRunner | None:
    """A runner returning the pooled features of an ONNX Runtime classifier, or None if it has none."""
    import onnx

    from ..backends.onnxruntime import OnnxRuntimeRunner

    runner = classifier.runner
    if not isinstance(runner, OnnxRuntimeRunner):
        return None
    name = head_input(runner.model)
    if name is None:
        return None
    model = onnx.ModelProto()
    model.CopyFrom(runner.model)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return OnnxRuntimeRunner(model, runner.precision)
