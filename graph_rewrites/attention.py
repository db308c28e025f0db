"""Find attention blocks by what the graph computes, never by names.

The pattern, one step at a time (each step is a function below)::

    Softmax -> probs x values (MatMul) -> head merge (Transpose 0,2,1,3 + Reshape)
            -> output projection (MatMul/Gemm with constant W_O, optional + b_O)
            -> residual add (+ x) -> norm (post-LN: LayerNorm of the sum)

When no Softmax completes the pattern, the error names the furthest step reached and where.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .errors import PatternNotFoundError, QuantizedWeightsError
from .layer_norm import LayerNormMatch, match_layer_norm
from .walk import (
    backward,
    consumers,
    constant,
    describe,
    forward,
    int_attr,
    ints_attr,
    is_constant,
    is_standard,
    other_input,
    same,
    split_constant,
)

STEPS = ("softmax", "probs x values", "head merge", "output projection", "residual add", "norm")

QUANTIZED_OPS = frozenset(
    {"DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "DequantizeLinear"}
)
HEAD_MERGE_PERM = [0, 2, 1, 3]


class StepFailed(Exception):
    """One pattern step did not match; carries the step name and the node where it stopped."""

    def __init__(self, step: str, node: ir.Node, detail: str):
        super().__init__(detail)
        self.step, self.node, self.detail = step, node, detail


@dataclass(frozen=True)
class BlockMatch:
    """The graph values of one matched block (before they are turned into names)."""

    softmax: ir.Node
    probs: ir.Value
    values: ir.Value
    residual: ir.Value
    output: ir.Value
    norm_input: ir.Value | None
    out_proj_weight: np.ndarray
    out_proj_bias: np.ndarray | None
    norm: LayerNormMatch | None


def match_block(softmax: ir.Node) -> BlockMatch:
    """Run every step of the pattern from one Softmax node; raise StepFailed at the first miss."""
    probs = _softmax(softmax)
    values, context = _probs_times_values(softmax, probs)
    merged = _head_merge(context)
    projected, weight, bias = _output_projection(merged)
    residual, summed = _residual_add(projected)
    norm = _post_norm(summed, weight.shape[1])
    return BlockMatch(
        softmax=softmax,
        probs=probs,
        values=values,
        residual=residual,
        output=norm.output,
        norm_input=summed,
        out_proj_weight=weight,
        out_proj_bias=bias,
        norm=norm,
    )


def _softmax(node: ir.Node) -> ir.Value:
    axis = int_attr(node, "axis", -1)
    if axis not in (-1, 3):
        raise StepFailed("softmax", node, f"Softmax over axis {axis}, expected the last axis of [B, H, S, S]")
    return node.outputs[0]


def _probs_times_values(softmax: ir.Node, probs: ir.Value) -> tuple[ir.Value, ir.Value]:
    probs = forward(probs)
    for matmul in consumers(probs, "MatMul"):
        if matmul.inputs[0] is probs and not is_constant(matmul.inputs[1]):
            return matmul.inputs[1], matmul.outputs[0]
    found = ", ".join(n.op_type for n in consumers(probs)) or "nothing"
    raise StepFailed("probs x values", softmax, f"expected MatMul(probs, values) after the Softmax, found {found}")


def _head_merge(context: ir.Value) -> ir.Value:
    context = forward(context)
    producer = context.producer()
    transposes = consumers(context, "Transpose")
    if len(transposes) != 1 or ints_attr(transposes[0], "perm") != HEAD_MERGE_PERM:
        found = ", ".join(n.op_type for n in consumers(context)) or "nothing"
        raise StepFailed("head merge", producer, f"expected Transpose(perm=[0,2,1,3]) of probs x values, found {found}")
    swapped = forward(transposes[0].outputs[0])
    reshapes = consumers(swapped, "Reshape")
    if len(reshapes) != 1:
        found = ", ".join(n.op_type for n in consumers(swapped)) or "nothing"
        raise StepFailed("head merge", transposes[0], f"expected Reshape to [B, S, H*head_size], found {found}")
    return forward(reshapes[0].outputs[0])


def _output_projection(merged: ir.Value) -> tuple[ir.Value, np.ndarray, np.ndarray | None]:
    users = consumers(merged)
    quantized = [n for n in users if n.op_type in QUANTIZED_OPS]
    if quantized:
        raise QuantizedWeightsError(
            f"quantized weights: the attention output projection after {describe(merged.producer())} runs through "
            f"{quantized[0].op_type} (int8); ALTI needs float weights, explain the unquantized export"
        )
    projection, flat = _projection_node(merged)
    if projection is None:
        found = ", ".join(n.op_type for n in users) or "nothing"
        raise StepFailed(
            "output projection", merged.producer(), f"expected MatMul/Gemm with a constant W_O after the head merge, found {found}"
        )
    weight = _projection_weight(projection)
    out = forward(projection.outputs[0])
    bias = None
    if is_standard(projection, "Gemm") and len(projection.inputs) > 2 and projection.inputs[2] is not None:
        bias = np.asarray(constant(projection.inputs[2]), dtype=np.float64).reshape(-1)
    if flat:  # Gemm works on [B*S, D]: the projection is reshaped back to [B, S, D]
        back = consumers(out, "Reshape")
        if len(back) == 1:
            out = forward(back[0].outputs[0])
    if bias is None:
        adds = consumers(out, "Add")
        for add in adds:
            const, other = split_constant(add)
            if const is not None and other is out and const.size == weight.shape[1]:
                bias, out = np.asarray(const, dtype=np.float64).reshape(-1), forward(add.outputs[0])
                break
    return out, weight, bias


def _projection_node(merged: ir.Value) -> tuple[ir.Node | None, bool]:
    """The MatMul/Gemm applying W_O, possibly behind a Reshape to 2-D; and whether it was flattened."""
    for node in consumers(merged, "MatMul", "Gemm"):
        if node.inputs[0] is merged and _weight_value(node) is not None:
            return node, False
    for reshape in consumers(merged, "Reshape"):
        flat = forward(reshape.outputs[0])
        for node in consumers(flat, "Gemm", "MatMul"):
            if node.inputs[0] is flat and _weight_value(node) is not None:
                return node, True
    return None, False


def _weight_value(node: ir.Node) -> ir.Value | None:
    weight = node.inputs[1]
    producer = backward(weight).producer()
    if producer is not None and producer.op_type in QUANTIZED_OPS:
        raise QuantizedWeightsError(
            f"quantized weights: W_O of the attention output projection ({describe(node)}) comes from "
            f"{producer.op_type}; ALTI needs float weights, explain the unquantized export"
        )
    if constant(weight) is None:
        return None
    if constant(weight).dtype.kind in "iu":
        raise QuantizedWeightsError(
            f"quantized weights: W_O of the attention output projection ({describe(node)}) is stored as "
            f"{constant(weight).dtype}; ALTI needs float weights"
        )
    return weight


def _projection_weight(node: ir.Node) -> np.ndarray:
    """W_O oriented as [D_in, D_out] so that ``merged @ W_O`` is the projection."""
    weight = np.asarray(constant(node.inputs[1]), dtype=np.float64)
    if is_standard(node, "Gemm"):
        if int_attr(node, "transA", 0):
            raise StepFailed("output projection", node, "Gemm with transA=1 is not a projection of the merged heads")
        if int_attr(node, "transB", 0):
            weight = weight.T
        alpha = node.attributes.get("alpha")
        if alpha is not None:
            weight = weight * alpha.as_float()
    if weight.ndim != 2:
        raise StepFailed("output projection", node, f"W_O has shape {weight.shape}, expected 2-D")
    return weight


def _residual_add(projected: ir.Value) -> tuple[ir.Value, ir.Value]:
    for add in consumers(projected, "Add"):
        residual = other_input(add, projected)
        if residual is not None and not is_constant(residual):
            return backward(residual), add.outputs[0]
    found = ", ".join(n.op_type for n in consumers(projected)) or "nothing"
    raise StepFailed(
        "residual add", projected.producer(), f"expected Add(projection, residual) after the output projection, found {found}"
    )


def _post_norm(summed: ir.Value, width: int) -> LayerNormMatch:
    norm = match_layer_norm(forward(summed), width)
    if norm is None:
        found = ", ".join(n.op_type for n in consumers(summed)) or "nothing"
        raise StepFailed(
            "norm",
            summed.producer(),
            f"expected a LayerNorm of the residual sum (post-LN block), found {found}; "
            "pre-LN (decoder) blocks are not supported yet",
        )
    return norm


def find_block_matches(graph: ir.Graph) -> list[BlockMatch]:
    """Match every Softmax in graph order; raise PatternNotFoundError when none completes."""
    matches: list[BlockMatch] = []
    failures: list[StepFailed] = []
    softmaxes = [n for n in graph if is_standard(n, "Softmax")]
    if not softmaxes:
        raise PatternNotFoundError("softmax", "the graph", "it has no Softmax node (fused attention operators are not supported)")
    for node in softmaxes:
        try:
            matches.append(match_block(node))
        except StepFailed as failed:
            failures.append(failed)
    if not matches:
        furthest = max(failures, key=lambda f: STEPS.index(f.step))
        where = describe(furthest.node) if furthest.node is not None else "the graph"
        raise PatternNotFoundError(furthest.step, f"{where} ({len(softmaxes)} Softmax node(s) tried)", furthest.detail)
    return matches
