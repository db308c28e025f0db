"""Quantized weights read back as floats: weight-only DequantizeLinear, and dynamic int8 projections
(onnxruntime.quantization.quantize_dynamic).

A DequantizeLinear of constant int8 weights is ``(W_q - zero_point) * scale`` (per tensor, or per
slice along ``axis``): exact floats, folded here because onnx's reference evaluator, which the
constant folder runs, has no DequantizeLinear below opset 19.

quantize_dynamic writes ``y = Cast(MatMulInteger(q, W_q, zp_x, zp_w)) * (scale_x * scale_w)`` with
``q, scale_x, zp_x = DynamicQuantizeLinear(x)``. The weight it multiplies is
``W = (W_q - zp_w) * scale_w`` (per tensor, or per output column); the activation is quantized at
run time, so a decomposition with the float activation differs from the model by that rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from .walk import backward, constant, consumers, forward, int_attr, is_standard, produced_by


@dataclass(frozen=True)
class DynamicInt8MatMul:
    """One dynamically quantized ``x @ W``: its float input, float output and dequantized weight."""

    input: ir.Value
    output: ir.Value
    weight: np.ndarray


def dynamic_int8_matmul(x: ir.Value) -> DynamicInt8MatMul | None:
    """The dynamic-int8 MatMul that reads ``x``, or None."""
    for dql in consumers(x, "DynamicQuantizeLinear"):
        quantized, scale_x, zero_x = dql.outputs
        for mmi in consumers(quantized, "MatMulInteger"):
            if mmi.inputs[0] is not quantized or (len(mmi.inputs) > 2 and mmi.inputs[2] is not zero_x):
                continue
            found = _rescaled(mmi, scale_x)
            if found is not None:
                output, scale_w = found
                return DynamicInt8MatMul(x, output, _dequantize(mmi, scale_w))
    return None


def _rescaled(mmi: ir.Node, scale_x: ir.Value) -> tuple[ir.Value, np.ndarray] | None:
    """``Cast(mmi) * (scale_x * scale_w)``: the float output and scale_w."""
    for cast in consumers(mmi.outputs[0], "Cast"):
        for mul in consumers(cast.outputs[0], "Mul"):
            scales = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
            product = produced_by(scales, "Mul")
            if product is None:
                continue
            a, b = product.inputs
            scale_w = constant(b) if a is scale_x else constant(a) if b is scale_x else None
            if scale_w is not None:
                return forward(mul.outputs[0]), np.asarray(scale_w, dtype=np.float64)
    return None


def _dequantize(mmi: ir.Node, scale_w: np.ndarray) -> np.ndarray:
    weight = constant(mmi.inputs[1])
    zero = constant(mmi.inputs[3]) if len(mmi.inputs) > 3 and mmi.inputs[3] is not None else 0
    return (np.asarray(weight, dtype=np.float64) - np.asarray(zero, dtype=np.float64)) * scale_w


def dequantized_input(node: ir.Node) -> ir.Value | None:
    """For the rescaling Mul of a dynamic-int8 MatMul, the float tensor it projects (walking the
    value path back through a quantized V projection); else None."""
    if not is_standard(node, "Mul"):
        return None
    for operand in node.inputs:
        cast = produced_by(operand, "Cast")
        if cast is None:
            continue
        mmi = produced_by(cast.inputs[0], "MatMulInteger")
        dql = None if mmi is None else produced_by(mmi.inputs[0], "DynamicQuantizeLinear")
        if dql is not None:
            return backward(dql.inputs[0])
    return None


def is_dynamically_quantized(model: onnx.ModelProto) -> bool:
    """Whether activations are quantized at run time (onnxruntime's dynamic int8), so that a float
    decomposition with dequantized weights cannot reproduce the blocks' outputs exactly."""
    return any(node.op_type == "DynamicQuantizeLinear" for node in model.graph.node)


def dequantize_constant_weights(model: ir.Model) -> int:
    """Replace (in place) every DequantizeLinear of constants by the float constant it computes;
    returns how many. Block-quantized weights (``block_size``) are left as they are."""
    count = 0
    for node in list(model.graph):
        if not is_standard(node, "DequantizeLinear") or int_attr(node, "block_size", 0):
            continue
        arrays = [constant(v) if v is not None else None for v in node.inputs]
        if arrays[0] is None or arrays[1] is None or (len(arrays) > 2 and node.inputs[2] is not None and arrays[2] is None):
            continue
        values, scale = arrays[0], np.asarray(arrays[1])
        zero = np.asarray(arrays[2]) if len(arrays) > 2 and arrays[2] is not None else np.zeros((), values.dtype)
        if scale.ndim == 1 and scale.size > 1:  # one scale per slice along axis
            shape = [1] * values.ndim
            shape[int_attr(node, "axis", 1) % values.ndim] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape) if zero.ndim else zero
        floats = (values.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)
        folded = ir.node("Constant", [], attributes={"value": ir.tensor(floats.astype(scale.dtype))})
        ir.convenience.replace_nodes_and_values(model.graph, node, [node], [folded], [node.outputs[0]], [folded.outputs[0]])
        count += 1
    return count
