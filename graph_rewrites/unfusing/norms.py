"""onnxruntime's fused norms as standard ops.

From the operator schemas: SkipLayerNormalization(input, skip, gamma, beta?, bias?) is
``LayerNorm(input + skip + bias)`` (epsilon default 1e-12) with optional outputs mean, inv_std_var
and ``input_skip_bias_sum``, the pre-norm residual sum (a pre-LN block's output).
SkipSimplifiedLayerNormalization(input, skip, gamma, bias?) is the same with an RMSNorm;
SimplifiedLayerNormalization(X, scale) is ``X / sqrt(mean(X^2) + epsilon) * scale`` (epsilon default
1e-5) over the last axis. The bias is added to the non-residual operand first, so the matcher sees
the output projection's bias before the residual Add.
"""

from __future__ import annotations

import onnx_ir as ir

from .builder import Builder, UnsupportedFusedOpError, used

SKIP_LN_EPSILON = 1e-12
SIMPLIFIED_LN_EPSILON = 1e-5


def _epsilon(node: ir.Node, default: float) -> float:
    attr = node.attributes.get("epsilon")
    return default if attr is None else float(attr.value)


def _skip_sum(node: ir.Node, b: Builder, bias: ir.Value | None) -> ir.Value:
    """``(projection + bias) + residual``: the operand a MatMul/Gemm produced takes the bias."""
    first, skip = node.inputs[0], node.inputs[1]
    if _is_projection(skip) and not _is_projection(first):
        first, skip = skip, first
    if bias is not None:
        first = b.op("Add", first, bias)
    return b.op("Add", first, skip)


def _is_projection(value: ir.Value) -> bool:
    producer = value.producer()
    return producer is not None and producer.op_type in ("MatMul", "Gemm", "MatMulInteger", "MatMulIntegerToFloat")


def _refuse_stats(node: ir.Node) -> None:
    for value in node.outputs[1:3]:
        if used(value):
            raise UnsupportedFusedOpError(
                f"{node.domain}.{node.op_type} node '{node.name}': its training statistics output '{value.name}' is in use"
            )


def unfuse_skip_layer_norm(node: ir.Node, b: Builder) -> list[ir.Value | None]:
    """SkipLayerNormalization -> Add(bias) -> Add(skip) -> LayerNormalization (outputs: y, -, -, sum)."""
    _refuse_stats(node)
    inputs = list(node.inputs) + [None] * (5 - len(node.inputs))
    gamma, beta, bias = inputs[2], inputs[3], inputs[4]
    summed = _skip_sum(node, b, bias)
    return [layer_norm(b, summed, gamma, beta, _epsilon(node, SKIP_LN_EPSILON)), None, None, summed]


def layer_norm(b: Builder, x: ir.Value, gamma: ir.Value, beta: ir.Value | None, epsilon: float) -> ir.Value:
    """LayerNormalization over the last axis (opset 17+), else its ReduceMean/Sub/Pow/... decomposition."""
    if b.opset >= 17:
        inputs = [x, gamma] + ([beta] if beta is not None else [])
        return b.op("LayerNormalization", *inputs, axis=-1, epsilon=epsilon)
    centered = b.op("Sub", x, b.reduce_mean_last(x))
    variance = b.reduce_mean_last(b.op("Pow", centered, b.float_const(2.0)))
    normed = b.op("Div", centered, b.op("Sqrt", b.op("Add", variance, b.float_const(epsilon))))
    scaled = b.op("Mul", normed, gamma)
    return scaled if beta is None else b.op("Add", scaled, beta)


def unfuse_skip_simplified_layer_norm(node: ir.Node, b: Builder) -> list[ir.Value | None]:
    """SkipSimplifiedLayerNormalization -> Add(bias) -> Add(skip) -> decomposed RMSNorm (outputs: y, -, -, sum)."""
    _refuse_stats(node)
    gamma = node.inputs[2]
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    summed = _skip_sum(node, b, bias)
    return [rms_norm(b, summed, gamma, _epsilon(node, SKIP_LN_EPSILON)), None, None, summed]


def unfuse_simplified_layer_norm(node: ir.Node, b: Builder) -> list[ir.Value | None]:
    """SimplifiedLayerNormalization (onnxruntime, default domain) -> decomposed RMSNorm."""
    axis = node.attributes.get("axis")
    if axis is not None and axis.value != -1:
        raise UnsupportedFusedOpError(f"SimplifiedLayerNormalization node '{node.name}' normalizes from axis {axis.value}")
    if used(node.outputs[1] if len(node.outputs) > 1 else None):
        raise UnsupportedFusedOpError(f"SimplifiedLayerNormalization node '{node.name}': inv_std_var output in use")
    return [rms_norm(b, node.inputs[0], node.inputs[1], _epsilon(node, SIMPLIFIED_LN_EPSILON)), None]


def rms_norm(b: Builder, x: ir.Value, gamma: ir.Value, epsilon: float) -> ir.Value:
    """``x / sqrt(mean(x^2) + eps) * gamma`` in float32 (as onnxruntime's kernel stashes in float),
    cast back to x's type: the Pow/ReduceMean/Add/Sqrt/Div/Mul chain layer_norm.py recognizes."""
    wide = b.dtype != "float32"
    if wide:
        x = b.op("Cast", x, to=ir.DataType.FLOAT)
    two, eps = b.const(2.0, "float32"), b.const(epsilon, "float32")
    variance = b.reduce_mean_last(b.op("Pow", x, two))
    normed = b.op("Div", x, b.op("Sqrt", b.op("Add", variance, eps)))
    if wide:
        normed = b.op("Cast", normed, to=ir.DataType.from_numpy(b.dtype))
    return b.op("Mul", normed, gamma)
