"""Dynamic int8 projections (onnxruntime.quantization.quantize_dynamic), read back as float weights.

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

from .walk import backward, constant, consumers, forward, is_standard, produced_by


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
