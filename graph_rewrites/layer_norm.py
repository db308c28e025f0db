"""Read a norm applied to a tensor, once ``norm_forms`` has rewritten every spelling into one op.

A LayerNorm is ``LayerNormalization`` over the last axis; an RMSNorm is ``RMSNormalization``
(opset 23) or onnxruntime's ``SimplifiedLayerNormalization``, over the last axis (a positive axis
that is the last one counts too: jax2onnx writes ``axis=2`` for ``[B, S, D]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .domains import DEFAULT_SPELLINGS
from .walk import constant, consumers, int_attr, rank

LAYER_NORM_OPS = frozenset({"LayerNormalization"})
RMS_NORM_OPS = frozenset({"RMSNormalization", "SimplifiedLayerNormalization"})
_DOMAINS = (*DEFAULT_SPELLINGS, "com.microsoft")


@dataclass(frozen=True)
class LayerNormMatch:
    """``output = weight * (input - mean) / sqrt(var + epsilon) + bias`` over the last axis
    (RMSNorm: no mean subtracted, ``var`` the mean square, bias zero)."""

    input: ir.Value
    output: ir.Value
    weight: np.ndarray
    bias: np.ndarray
    epsilon: float
    rms: bool = False


def norm_reading(x: ir.Value, width: int, kinds: frozenset[str] = LAYER_NORM_OPS | RMS_NORM_OPS) -> LayerNormMatch | None:
    """The norm over the last axis (of ``kinds``) whose input is ``x``, or None."""
    for node in consumers(x):
        if node.inputs[0] is x:
            match = read_norm(node, width, kinds)
            if match is not None:
                return match
    return None


def read_norm(node: ir.Node | None, width: int, kinds: frozenset[str] = LAYER_NORM_OPS | RMS_NORM_OPS) -> LayerNormMatch | None:
    """``node`` as a norm over the last axis of width ``width`` (of ``kinds``), or None."""
    if node is None or node.op_type not in kinds or node.domain not in _DOMAINS:
        return None
    axis = int_attr(node, "axis", -1)
    if axis != -1 and axis != (rank(node.inputs[0]) or 0) - 1:
        return None
    weight = constant(node.inputs[1]) if len(node.inputs) > 1 else None
    if weight is None:
        return None
    rms = node.op_type in RMS_NORM_OPS
    bias = None if rms or len(node.inputs) < 3 or node.inputs[2] is None else constant(node.inputs[2])
    return LayerNormMatch(
        input=node.inputs[0],
        output=node.outputs[0],
        weight=_vector(weight, width),
        bias=np.zeros(width) if bias is None else _vector(bias, width),
        epsilon=_epsilon(node),
        rms=rms,
    )


def _epsilon(node: ir.Node) -> float:
    """A norm op's epsilon attribute, or the ONNX default (1e-5) when it has none."""
    epsilon = node.attributes.get("epsilon")
    return float(epsilon.as_float()) if epsilon is not None else 1e-5


def _vector(array: np.ndarray, width: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(array, dtype=np.float64).reshape(-1), (width,)).copy()
