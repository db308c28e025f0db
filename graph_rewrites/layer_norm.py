"""Recognise a norm applied to a tensor: LayerNorm or RMSNorm, as one op or decomposed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .walk import (
    consumers,
    constant,
    forward,
    int_attr,
    is_standard,
    produced_by,
    reduce_axes,
    same,
    split_constant,
)


@dataclass(frozen=True)
class LayerNormMatch:
    """``output = weight * (input - mean) / sqrt(var + epsilon) + bias`` over the last axis."""

    input: ir.Value
    output: ir.Value
    weight: np.ndarray
    bias: np.ndarray
    epsilon: float


def match_layer_norm(x: ir.Value, width: int) -> LayerNormMatch | None:
    """The layer norm over the last axis that reads ``x``, or None."""
    return _fused(x, width) or _decomposed(x, width)


def _fused(x: ir.Value, width: int) -> LayerNormMatch | None:
    for node in consumers(x, "LayerNormalization"):
        if node.inputs[0] is not x or int_attr(node, "axis", -1) not in (-1,):
            continue
        weight = constant(node.inputs[1])
        bias = constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if weight is None:
            continue
        bias = _vector(bias if bias is not None else np.zeros(width), width)
        return LayerNormMatch(x, node.outputs[0], _vector(weight, width), bias, _epsilon(node))
    return None


def _is_last_axis_mean(node: ir.Node) -> bool:
    """A mean over one axis that is the last of a [B, S, D] activation."""
    axes = reduce_axes(node)
    return axes is not None and len(axes) == 1 and (axes[0] == -1 or axes[0] >= 2)


def _decomposed(x: ir.Value, width: int) -> LayerNormMatch | None:
    """ReduceMean -> Sub -> Pow(2)/Mul -> ReduceMean -> Add(eps) -> Sqrt -> Div -> Mul(gamma) -> Add(beta)."""
    for mean_node in consumers(x, "ReduceMean"):
        if not _is_last_axis_mean(mean_node):
            continue
        mean = mean_node.outputs[0]
        for sub in consumers(x, "Sub"):
            if sub.inputs[0] is not x or not same(sub.inputs[1], mean):
                continue
            centered = sub.outputs[0]
            match = _normalize_centered(x, centered, width)
            if match is not None:
                return match
    return None


def _normalize_centered(x: ir.Value, centered: ir.Value, width: int) -> LayerNormMatch | None:
    for div in consumers(centered, "Div"):
        if div.inputs[0] is not centered:
            continue
        epsilon = _epsilon_of_std(div.inputs[1], centered)
        if epsilon is None:
            continue
        output, weight, bias = _affine(forward(div.outputs[0]), width)
        return LayerNormMatch(input=x, output=output, weight=weight, bias=bias, epsilon=epsilon)
    return None


def _epsilon_of_std(std: ir.Value, centered: ir.Value) -> float | None:
    """Epsilon when ``std`` is Sqrt(ReduceMean(centered**2) + epsilon)."""
    sqrt = produced_by(std, "Sqrt")
    add = None if sqrt is None else produced_by(sqrt.inputs[0], "Add")
    if add is None:
        return None
    eps, variance = split_constant(add)
    if eps is None or variance is None:
        return None
    var_node = produced_by(variance, "ReduceMean")
    if var_node is None:
        return None
    square = var_node.inputs[0].producer()
    if square is None:
        return None
    if is_standard(square, "Pow") and same(square.inputs[0], centered):
        exponent = constant(square.inputs[1])
        if exponent is None or float(np.ravel(exponent)[0]) != 2.0:
            return None
    elif not (is_standard(square, "Mul") and same(square.inputs[0], centered) and same(square.inputs[1], centered)):
        return None
    return float(np.ravel(eps)[0])


def _affine(normed: ir.Value, width: int, with_bias: bool = True) -> tuple[ir.Value, np.ndarray, np.ndarray]:
    """Follow the optional Mul(gamma) and Add(beta) after the normalisation."""
    weight, bias, out = np.ones(width), np.zeros(width), normed
    muls = consumers(out, "Mul")
    if len(muls) == 1:
        gamma, other = split_constant(muls[0])
        if gamma is not None and other is out:
            weight, out = _vector(gamma, width), forward(muls[0].outputs[0])
    adds = consumers(out, "Add") if with_bias else []
    if len(adds) == 1:
        beta, other = split_constant(adds[0])
        if beta is not None and other is out:
            bias, out = _vector(beta, width), forward(adds[0].outputs[0])
    return out, weight, bias


def match_rms_norm(x: ir.Value, width: int) -> LayerNormMatch | None:
    """The RMSNorm over the last axis that reads ``x`` (bias zero), or None.

    ``weight * x / sqrt(mean(x**2) + epsilon)``: SimplifiedLayerNormalization (onnxruntime),
    RMSNormalization (opset 23), or Pow/ReduceMean/Add/Sqrt/Div(or Reciprocal)/Mul, Casts allowed.
    """
    return _rms_fused(x, width) or _rms_decomposed(x, width)


_RMS_OPS = ("SimplifiedLayerNormalization", "RMSNormalization")


def _rms_fused(x: ir.Value, width: int) -> LayerNormMatch | None:
    for node in consumers(x):
        if node.op_type not in _RMS_OPS or node.domain not in ("", "ai.onnx", "com.microsoft"):
            continue
        weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if node.inputs[0] is not x or weight is None or int_attr(node, "axis", -1) != -1:
            continue
        return LayerNormMatch(x, node.outputs[0], _vector(weight, width), np.zeros(width), _epsilon(node))
    return None


def _rms_decomposed(x: ir.Value, width: int) -> LayerNormMatch | None:
    for square in consumers(x, "Pow", "Mul"):
        if not _is_square_of(square, x):
            continue
        for mean in consumers(forward(square.outputs[0]), "ReduceMean"):
            if not _is_last_axis_mean(mean):
                continue
            for add in consumers(forward(mean.outputs[0]), "Add"):
                eps, _ = split_constant(add)
                if eps is None:
                    continue
                for sqrt in consumers(forward(add.outputs[0]), "Sqrt"):
                    normed = _divided_by(x, forward(sqrt.outputs[0]))
                    if normed is None:
                        continue
                    output, weight, _ = _affine(forward(normed), width, with_bias=False)
                    return LayerNormMatch(x, output, weight, np.zeros(width), float(np.ravel(eps)[0]))
    return None


def _is_square_of(node: ir.Node, x: ir.Value) -> bool:
    if is_standard(node, "Pow"):
        exponent = constant(node.inputs[1])
        return node.inputs[0] is x and exponent is not None and float(np.ravel(exponent)[0]) == 2.0
    return is_standard(node, "Mul") and node.inputs[0] is x and node.inputs[1] is x


def _divided_by(x: ir.Value, std: ir.Value) -> ir.Value | None:
    """``x / std``, written as Div(x, std) or as x * (1 / std) with Div(1, .) or Reciprocal."""
    for div in consumers(std, "Div"):
        if div.inputs[1] is std and same(div.inputs[0], x):
            return div.outputs[0]
    inverses = [n.outputs[0] for n in consumers(std, "Reciprocal")]
    for div in consumers(std, "Div"):
        one = constant(div.inputs[0])
        if div.inputs[1] is std and one is not None and np.all(np.ravel(one) == 1.0):
            inverses.append(div.outputs[0])
    for inverse in inverses:
        inverse = forward(inverse)
        for mul in consumers(inverse, "Mul"):
            other = mul.inputs[0] if mul.inputs[1] is inverse else mul.inputs[1]
            if same(other, x):
                return mul.outputs[0]
    return None


def _epsilon(node: ir.Node) -> float:
    """A norm op's epsilon attribute, or the ONNX default (1e-5) when it has none."""
    epsilon = node.attributes.get("epsilon")
    return float(epsilon.as_float()) if epsilon is not None else 1e-5


def _vector(array: np.ndarray, width: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(array, dtype=np.float64).reshape(-1), (width,)).copy()
