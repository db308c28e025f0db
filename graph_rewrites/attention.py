"""Find attention blocks by what the graph computes, never by names.

The pattern, one step at a time (each step is a function below)::

    Softmax -> probs x values (MatMul) -> head merge (Transpose 0,2,1,3 + Reshape)
            -> output projection (MatMul/Gemm with constant W_O, optional + b_O)
            -> residual add (+ x) -> norm

The norm step decides the placement from the value path: when the values are projected from a
norm of the residual input x (v = n(x) W_V + b_V) the block is pre-LN and its output is the
residual sum; when they are projected from x itself it is post-LN and the output is the LayerNorm
of the sum. A NaN guard after the Softmax (``Where(IsNaN(p), 0, p)``, as SDPA exports have) and
grouped key/value heads expanded by Unsqueeze/Expand/Reshape are walked through.

When no Softmax completes the pattern, the error names the furthest step reached and where.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .block import NormPlacement
from .errors import KVCacheExportError, PatternNotFoundError, QuantizedWeightsError
from .layer_norm import LayerNormMatch, match_layer_norm, match_rms_norm
from .quantized import dequantized_input, dynamic_int8_matmul
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
    produced_by,
    reduce_axes,
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
    placement: NormPlacement = "post"


def match_block(softmax: ir.Node) -> BlockMatch:
    """Run every step of the pattern from one Softmax node; raise StepFailed at the first miss."""
    probs = _softmax(softmax)
    values, context = _probs_times_values(softmax, probs)
    merged = _head_merge(context)
    projected, weight, bias = _output_projection(merged)
    residual, summed = _residual_add(projected)
    source = _value_projection_input(values)
    pre = _pre_norm(source, residual, weight.shape[1])
    if pre is not None:
        return BlockMatch(
            softmax=softmax,
            probs=probs,
            values=_grouped_values(values),
            residual=residual,
            output=summed,
            norm_input=None,
            out_proj_weight=weight,
            out_proj_bias=bias,
            norm=pre,
            placement="pre",
        )
    if source is not None and not same(source, residual):
        raise StepFailed(
            "norm",
            summed.producer(),
            "the values are projected neither from the residual input (post-LN) nor from a LayerNorm or RMSNorm "
            "of it (pre-LN)",
        )
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
    probs = _past_nan_guard(forward(probs))
    for matmul in consumers(probs, "MatMul"):
        if matmul.inputs[0] is probs and not is_constant(matmul.inputs[1]):
            return matmul.inputs[1], matmul.outputs[0]
    found = ", ".join(n.op_type for n in consumers(probs)) or "nothing"
    raise StepFailed("probs x values", softmax, f"expected MatMul(probs, values) after the Softmax, found {found}")


def _past_nan_guard(probs: ir.Value) -> ir.Value:
    """``Where(IsNaN(p), 0, p)``: SDPA exports zero fully masked rows; other rows pass unchanged."""
    for where in consumers(probs, "Where"):
        condition = where.inputs[0].producer()
        if (
            condition is not None
            and is_standard(condition, "IsNaN")
            and condition.inputs[0] is probs
            and where.inputs[2] is probs
            and is_constant(where.inputs[1])
        ):
            return forward(where.outputs[0])
    return probs


#: Ops that hand a tensor on unchanged in value (shapes aside).
PASS_OPS = ("Identity", "Cast")
#: Ops that move or re-type value vectors without changing them (heads split, transposed, repeated).
_VALUE_LAYOUT_OPS = ("Transpose", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Split", "Slice", "Cast", "Identity")


def _value_projection_input(values: ir.Value) -> ir.Value | None:
    """What the value projection (MatMul/Gemm with a constant weight) reads, walking back from the
    values through layout ops, a bias Add and a KV-cache Concat; None when the walk gets lost."""
    value = values
    for _ in range(24):
        node = value.producer()
        if node is None:
            return None
        if is_standard(node, "MatMul", "Gemm") and is_constant(node.inputs[1]):
            source = node.inputs[0]
            while source.producer() is not None and is_standard(source.producer(), "Reshape", *PASS_OPS):
                source = source.producer().inputs[0]  # Gemm works on [B*S, D]
            return backward(source)
        quantized_source = dequantized_input(node)
        if quantized_source is not None:  # a dynamic-int8 V projection (flattened to [B*S, D] for a Gemm)
            while quantized_source.producer() is not None and is_standard(quantized_source.producer(), "Reshape"):
                quantized_source = backward(quantized_source.producer().inputs[0])
            return quantized_source
        if is_standard(node, *_VALUE_LAYOUT_OPS):
            value = node.inputs[0]
        elif is_standard(node, "Add", "Mul"):  # a bias (Qwen2, BERT) or a scale
            const, other = split_constant(node)
            if const is None or other is None:
                return None
            value = other
        elif is_standard(node, "Concat"):  # a KV cache: the past values (a graph input), then the new ones
            fresh = [v for v in node.inputs if v is not None and not v.is_graph_input() and not is_constant(v)]
            if len(fresh) != 1:
                return None
            value = fresh[0]
        else:
            return None
    return None


def _pre_norm(source: ir.Value | None, residual: ir.Value, width: int) -> LayerNormMatch | None:
    """The norm n with ``source = n(residual)`` (a pre-LN block), or None."""
    if source is None or same(source, residual):
        return None
    for alias in _aliases(residual):
        norm = match_layer_norm(alias, width) or match_rms_norm(alias, width)
        if norm is not None and same(norm.output, source):
            return norm
    return None


def _aliases(value: ir.Value) -> list[ir.Value]:
    """``value`` and every tensor that is it through Identity/Cast consumers (Llama casts before its norms)."""
    found, todo = [], [value]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(n.outputs[0] for n in consumers(current, *PASS_OPS))
    return found


def _grouped_values(values: ir.Value) -> ir.Value:
    """The [B, H_kv, S, dh] values before grouped-query heads are repeated to [B, H, S, dh].

    ``repeat_kv`` is Unsqueeze(axis 2) -> Expand -> Reshape: head h reads key/value head
    h // (H / H_kv), the order the contributions assume. Anything else keeps the expanded values.
    """
    reshape = produced_by(values, "Reshape")
    expand = None if reshape is None else produced_by(reshape.inputs[0], "Expand")
    unsqueeze = None if expand is None else produced_by(expand.inputs[0], "Unsqueeze")
    if unsqueeze is None or reduce_axes(unsqueeze) != [2]:
        return values
    return unsqueeze.inputs[0]


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
    int8 = dynamic_int8_matmul(merged)
    for reshape in [] if int8 is not None else consumers(merged, "Reshape"):  # flattened to [B*S, D] first
        int8 = dynamic_int8_matmul(forward(reshape.outputs[0]))
        if int8 is not None:
            out, weight, bias = _projection_bias(int8.output, int8.weight)
            back = consumers(out, "Reshape")
            return (forward(back[0].outputs[0]) if len(back) == 1 else out), weight, bias
    if int8 is not None:  # W_O dequantized from its int8 values, scale and zero point
        return _projection_bias(int8.output, int8.weight)
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
    if flat or not consumers(out, "Add"):  # Gemm works on [B*S, D]: the projection is reshaped back to [B, S, D]
        back = consumers(out, "Reshape")
        if len(back) == 1:
            out = forward(back[0].outputs[0])
    if bias is None:
        return _projection_bias(out, weight)
    return out, weight, bias


def _projection_bias(out: ir.Value, weight: np.ndarray) -> tuple[ir.Value, np.ndarray, np.ndarray | None]:
    """Follow the Add of a constant b_O after the projection, when there is one."""
    for add in consumers(out, "Add"):
        const, other = split_constant(add)
        if const is not None and other is out and const.size == weight.shape[1]:
            return forward(add.outputs[0]), weight, np.asarray(const, dtype=np.float64).reshape(-1)
    return out, weight, None


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
            f"expected a LayerNorm of the residual sum (post-LN block), or values projected from a norm of the "
            f"residual input (pre-LN block); found {found} after the sum",
        )
    return norm


def find_block_matches(graph: ir.Graph) -> list[BlockMatch]:
    """Match every Softmax in graph order; raise PatternNotFoundError when none completes."""
    matches: list[BlockMatch] = []
    failures: list[StepFailed] = []
    softmaxes = [n for n in graph if is_standard(n, "Softmax")]
    if not softmaxes:
        _refuse_merged_cache(graph)
        raise PatternNotFoundError("softmax", "the graph", "it has no Softmax node (fused attention operators must be rewritten first: graph_rewrites.unfuse)")
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


def _refuse_merged_cache(graph: ir.Graph) -> None:
    """A merged decoder (optimum's decoder_model_merged.onnx) keeps its attention inside If branches."""
    for node in graph:
        if not is_standard(node, "If"):
            continue
        for attr in node.attributes.values():
            branches = [attr.value] if attr.type == ir.AttributeType.GRAPH else []
            if any(is_standard(n, "Softmax") for branch in branches for n in branch.all_nodes()):
                raise KVCacheExportError(
                    f"{describe(node)} switches between a KV-cache and a no-cache decoder graph (a merged "
                    "with-past export, e.g. decoder_model_merged.onnx); ALTI explains a full sequence: export "
                    "without past (alti-onnx export HF_DIR OUT --task text-generation) and explain that model.onnx"
                )
