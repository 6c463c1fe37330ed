"""Features from exported graphs (ONNX, OpenVINO IR): the input of the final linear layer made the output.

resnetkit's exports end ``... -> pooled features -> Gemm or MatMul (+ Add) -> logits``; int8 graphs
put quantize/dequantize (or FakeQuantize) nodes in between. Walking back from the output to the
first Gemm/MatMul finds the pooled features, which the runtime returns once they are the output.
TorchScript files keep only the logits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..run.loading import Classifier

if TYPE_CHECKING:
    import onnx

    from ..backends.base import Runner
    from ..backends.onnxruntime import OnnxRuntimeRunner
    from ..backends.openvino import OpenVinoRunner

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


def exported_features_runner(classifier: Classifier) -> Runner | None:
    """A runner returning the pooled features of a classifier loaded from an exported graph, or None."""
    from ..backends.onnxruntime import OnnxRuntimeRunner
    from ..backends.openvino import OpenVinoRunner

    if isinstance(classifier.runner, OnnxRuntimeRunner):
        return _onnx_features(classifier.runner)
    if isinstance(classifier.runner, OpenVinoRunner):
        return _openvino_features(classifier.runner)
    return None


def _onnx_features(runner: OnnxRuntimeRunner) -> OnnxRuntimeRunner | None:
    """The same graph with the head's input as its only output (ONNX Runtime prunes the head)."""
    import onnx

    from ..backends.onnxruntime import OnnxRuntimeRunner

    name = head_input(runner.model)
    if name is None:
        return None
    model = onnx.ModelProto()
    model.CopyFrom(runner.model)
    del model.graph.output[:]
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return OnnxRuntimeRunner(model, runner.precision)


def _openvino_features(runner: OpenVinoRunner) -> OpenVinoRunner | None:
    """A model from the same parameters to the input of the head's MatMul, with the runner's precision hint."""
    import openvino as ov

    from ..backends.openvino import HINTS, OpenVinoRunner

    node = runner.model.outputs[0].get_node()
    for _ in range(MAX_STEPS):
        if node.get_type_name() == "MatMul":
            features = ov.Model([node.input_value(0)], runner.model.get_parameters(), "features")
            hint = runner.config.get("INFERENCE_PRECISION_HINT")
            return OpenVinoRunner(features, next((k for k, v in HINTS.items() if v == hint), None))
        upstream = [v for v in node.input_values() if v.get_node().get_type_name() != "Constant"]
        if not upstream:
            return None
        node = upstream[0].get_node()
    return None
