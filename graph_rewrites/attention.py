"""Find attention blocks by what the graph computes, never by names.

The pattern, one step at a time (each step is a function below)::

    Softmax -> probs x values (MatMul) -> head merge -> output projection (constant W_O, optional b_O)
            -> residual add (+ x) -> norm

Each step accepts every spelling by what it computes:

- probs: the Softmax output carried through elementwise ops (masking, Flax's renormalization over
  the kept keys, the NaN guard of SDPA exports) to the MatMul with the values; the tensor that
  multiplies the values is what the block exposes as its probabilities;
- head merge: any chain of Transpose / Reshape / Squeeze / Unsqueeze / Flatten that lays the
  ``[B, H, S, dh]`` context out as ``[..., H*dh]`` (``layout.Axes`` follows the factors through it);
- output projection: MatMul or Gemm with a constant W_O (folded beforehand from whatever constant
  subgraph produced it: transposed, cast, dequantized), or a dynamic-int8 MatMulInteger;
- probs and values with the heads folded into the batch axis ([B*H, S, S] x [B*H, S, dh], DeBERTa,
  BLOOM) are followed the same way; the context's merge then starts from ``[B*H, S, dh]``;
- residual add: past a reshape back to [B, S, D], the bias Add and a norm of a alone, the Add with
  the residual x; what surrounds it (the norm after it, whether the values come from a norm of x,
  from x, or from a memory) is read by the declared residual forms of ``residual_forms``
  (sandwich, parallel, pre-LN, cross-attention, pre-LN without a norm, post-LN), which give the
  block's kind (docs/alti.md, "Block kinds"), never from one layer's norm alone.

Every Softmax ends as a block or as a ``SoftmaxMiss`` with the furthest step reached, and whether it
looks like attention (its scores are a product of two activations, or its output multiplies one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .block import STEPS, BlockKind
from .errors import KVCacheExportError, QuantizedWeightsError
from .layer_norm import LayerNormMatch, norm_reading, read_norm
from .layout import COPY, Axes
from .quantized import dequantized_input, dynamic_int8_matmul
from .residual_forms import FormMatch, Surroundings, carried_on, read_form
from .traced_shapes import Shapes, dims, partial_ints, traced_dim
from .walk import (
    backward,
    constant,
    consumers,
    describe,
    int_attr,
    ints_attr,
    is_constant,
    is_standard,
    other_input,
    produced_by,
    rank,
    reduce_axes,
    same,
    split_constant,
)

QUANTIZED_OPS = frozenset(
    {"DynamicQuantizeLinear", "QuantizeLinear", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "DequantizeLinear"}
)
#: Elementwise ops the probabilities pass through on their way to the values (masks, renormalizing, NaN guards).
PROBS_OPS = frozenset({"Identity", "Dropout", "Cast", "Add", "Sub", "Mul", "Div", "Where", "Max", "Min", "Clip"})
#: Ops that lay a tensor out anew without changing its elements.
LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast", "Dropout"})
#: Ops between the product Q K^T and the Softmax: scale, mask, bias, soft-capping, layout.
SCORE_OPS = PROBS_OPS | LAYOUT_OPS | {"Tanh", "Neg", "Expand"}
#: Products of two tensors that make attention scores or contexts.
PRODUCT_OPS = ("MatMul", "Einsum", "Gemm")
#: Ops after the output projection that only reshape it back to [B, S, D].
_UNFLATTEN_OPS = ("Reshape", "Squeeze", "Unsqueeze", "Identity", "Cast", "Dropout")
#: How far the walks look (nodes), so a graph without the pattern fails fast.
_REACH = 16


class StepFailed(Exception):
    """One pattern step did not match; carries the step name and the node where it stopped."""

    def __init__(self, step: str, node: ir.Node | None, detail: str):
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
    num_heads: int
    head_size: int
    kind: BlockKind = "post"
    cross: bool = False


@dataclass(frozen=True)
class SoftmaxMiss:
    """A Softmax that is not (the start of) a matched block: the step that failed, and why."""

    softmax: ir.Node
    step: str
    detail: str
    attention_like: bool


@dataclass(frozen=True)
class _Projection:
    """The output projection: its output, W_O [D_in, D_out] (rows as the graph orders them) and b_O
    when the op itself adds it (Gemm's C)."""

    output: ir.Value
    weight: np.ndarray
    bias: np.ndarray | None


def match_block(softmax: ir.Node, shapes: Shapes) -> BlockMatch:
    """Run every step of the pattern from one Softmax node; raise StepFailed at the first miss."""
    _softmax(softmax)
    probs, values, context = _probs_times_values(softmax)
    chain, projection = _head_merge_chain(context)
    heads, head_size = _head_sizes(softmax, probs, values, projection.weight, shapes, context)
    weight = _merge_order(chain, probs, heads, head_size, projection, shapes)
    width = weight.shape[1]
    source = _value_projection_input(values)
    pre = _norm_of(source, width)
    expected = pre.input if pre is not None else source  # the residual input x, as the value path sees it
    added = _residual_add(projection, width, expected)
    found = read_form(Surroundings(
        values=values, grouped=_grouped_values(values), source=source, pre=pre, residual=added.residual,
        summed=added.summed, attention=added.attention, attention_norm=added.attention_norm, parallel=added.parallel,
        width=width,
    ))
    if not isinstance(found, FormMatch):
        raise StepFailed("norm", added.summed.producer(),
                         "no residual form fits: " + "; ".join(f"{name}: {reason}" for name, reason in found))
    return BlockMatch(softmax=softmax, probs=probs, residual=added.residual, out_proj_weight=weight,
                      out_proj_bias=added.bias, num_heads=heads, head_size=head_size, values=found.values,
                      output=found.output, norm_input=found.norm_input, norm=found.norm, kind=found.kind,
                      cross=found.cross)


def _softmax(node: ir.Node) -> None:
    axis = int_attr(node, "axis", -1)
    if axis != -1 and axis != (rank(node.inputs[0]) or 0) - 1:
        raise StepFailed("softmax", node, f"Softmax over axis {axis}, expected the last axis of [B, H, S, S]")


def _probs_times_values(softmax: ir.Node) -> tuple[ir.Value, ir.Value, ir.Value]:
    """(probs as they multiply the values, values, the context): the one MatMul that the Softmax output
    reaches through elementwise ops, with an activation (not a constant) as its other operand."""
    products = {node: probs for node, probs in _elementwise_reach(softmax.outputs[0], PROBS_OPS, fold_heads=True)}
    if len(products) == 1:
        (matmul, probs), = products.items()
        if rank(probs) in (None, 3, 4):  # [B, H, S, S], or [B*H, S, S] (DeBERTa, BLOOM fold heads into the batch)
            return probs, matmul.inputs[1], matmul.outputs[0]
        raise StepFailed("probs x values", softmax, f"the probabilities reach MatMul with rank {rank(probs)}, expected [B, H, S, S]")
    found = ", ".join(n.op_type for n in consumers(softmax.outputs[0])) or "nothing"
    detail = f"{len(products)} MatMul nodes" if products else f"{found} (and no MatMul(probs, values) through elementwise ops)"
    raise StepFailed("probs x values", softmax, f"expected MatMul(probs, values) after the Softmax, found {detail}")


def _elementwise_reach(start: ir.Value, ops: Iterable[str], fold_heads: bool = False) -> list[tuple[ir.Node, ir.Value]]:
    """(MatMul, its first operand) for every MatMul that ``start`` reaches through ``ops`` as the first
    operand, against a non-constant second operand (``fold_heads``: also through a Reshape of
    [B, H, S, S] to [B*H, S, S])."""
    found, seen, frontier = [], {start}, [start]
    for _ in range(_REACH):
        following = []
        for value in frontier:
            for node in consumers(value):
                if is_standard(node, "MatMul"):
                    if node.inputs[0] is value and not is_constant(node.inputs[1]):
                        found.append((node, value))
                elif fold_heads and (_folds_heads(node) or _unit_axis(node)) and node.outputs[0] not in seen:
                    seen.add(node.outputs[0])
                    following.append(node.outputs[0])
                elif is_standard(node, *ops) and node.outputs[0] not in seen:
                    seen.add(node.outputs[0])
                    following.append(node.outputs[0])
        frontier = following
    return found


def _folds_heads(node: ir.Node) -> bool:
    """A Reshape of a 4-D tensor to 3-D whose last two axes it keeps: [B, H, S, S] -> [B*H, S, S]
    (or of the same with a unit axis added before the keys, [B, H, S, 1, S]: tf2onnx's einsum)."""
    if not is_standard(node, "Reshape") or rank(node.inputs[0]) not in (None, 4, 5):
        return False
    target = partial_ints(node.inputs[1], {})
    return target is not None and len(target) == 3 and target[0] in (-1, None)


def _unit_axis(node: ir.Node) -> bool:
    """An Unsqueeze of the 4-D probabilities adding one axis before the last (tf2onnx lowers the einsum
    'BNTS,BSNH->BTNH' of a dynamically shaped Keras model so: [B, N, T, S] -> [B, N, T, 1, S], then
    folds it to [B*N, T, S] for a batched MatMul)."""
    return is_standard(node, "Unsqueeze") and rank(node.inputs[0]) in (None, 4) and reduce_axes(node) in ([3], [-2])


# --------------------------------------------------------------------------- head merge, output projection
def _head_merge_chain(context: ir.Value) -> tuple[list[ir.Node], _Projection]:
    """The layout ops from the context to the output projection, and the projection."""
    value, chain = context, []
    for _ in range(_REACH):
        projection = _projection_reading(value)
        if projection is not None:
            return chain, projection
        users = consumers(value)
        if len(users) != 1 or not is_standard(users[0], *LAYOUT_OPS) or users[0].inputs[0] is not value:
            found = ", ".join(n.op_type for n in users) or "nothing"
            step = "output projection" if chain and is_standard(chain[-1], "Reshape", "Flatten") else "head merge"
            raise StepFailed(
                step, value.producer(),
                f"expected layout ops (Transpose, Reshape, ...) from probs x values to a MatMul/Gemm with a constant "
                f"W_O, found {found}",
            )
        chain.append(users[0])
        value = users[0].outputs[0]
    raise StepFailed("head merge", context.producer(), "no output projection within reach of probs x values")


def _projection_reading(value: ir.Value) -> _Projection | None:
    """The output projection that multiplies ``value`` by a constant W_O, if one does."""
    int8 = dynamic_int8_matmul(value)
    if int8 is not None:  # W_O dequantized from its int8 values, scale and zero point
        return _Projection(int8.output, int8.weight, None)
    for node in consumers(value, "MatMul", "Gemm"):
        if node.inputs[0] is value and _weight(node) is not None:
            weight, bias = _oriented(node)
            return _Projection(node.outputs[0], weight, bias)
    quantized = [n for n in consumers(value) if n.op_type in QUANTIZED_OPS]
    if quantized:
        raise QuantizedWeightsError(
            f"quantized weights: the attention output projection after {describe(value.producer())} runs through "
            f"{quantized[0].op_type} (quantized activations); ALTI needs float weights, explain the unquantized export"
        )
    return None


def _weight(node: ir.Node) -> np.ndarray | None:
    weight = constant(node.inputs[1])
    if weight is None:
        producer = backward(node.inputs[1]).producer()
        if producer is not None and producer.op_type in QUANTIZED_OPS:
            raise QuantizedWeightsError(
                f"quantized weights: W_O of the attention output projection ({describe(node)}) comes from "
                f"{producer.op_type} of a run-time value; ALTI needs float weights, explain the unquantized export"
            )
        return None
    if weight.dtype.kind in "iu":
        raise QuantizedWeightsError(
            f"quantized weights: W_O of the attention output projection ({describe(node)}) is stored as "
            f"{weight.dtype}; ALTI needs float weights"
        )
    return weight


def _oriented(node: ir.Node) -> tuple[np.ndarray, np.ndarray | None]:
    """W_O as [D_in, D_out] so that ``merged @ W_O`` is the projection, and Gemm's bias C."""
    weight = np.asarray(_weight(node), dtype=np.float64)
    bias = None
    if is_standard(node, "Gemm"):
        if int_attr(node, "transA", 0):
            raise StepFailed("output projection", node, "Gemm with transA=1 is not a projection of the merged heads")
        if int_attr(node, "transB", 0):
            weight = weight.T
        alpha = node.attributes.get("alpha")
        weight = weight * (alpha.as_float() if alpha is not None else 1.0)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            beta = node.attributes.get("beta")
            bias = np.asarray(constant(node.inputs[2]), dtype=np.float64).reshape(-1)
            bias = bias * (beta.as_float() if beta is not None else 1.0)
    if weight.ndim != 2:
        raise StepFailed("output projection", node, f"W_O has shape {weight.shape}, expected 2-D")
    if bias is not None:
        bias = np.broadcast_to(bias, (weight.shape[1],)).copy()
    return weight, bias


def _head_sizes(softmax: ir.Node, probs: ir.Value, values: ir.Value, weight: np.ndarray, shapes: Shapes,
                at: ir.Value) -> tuple[int, int]:
    """Heads and head size from the static shapes of probs [B, H, S, S] (or the Softmax's, where the
    heads are folded into the batch axis) and values [B, H_kv, S, dh], the missing one from W_O's
    rows (H * dh)."""
    probs_dims = dims(probs, shapes)
    heads = probs_dims[1] if len(probs_dims) == 4 else None
    if heads is None and len(dims(softmax.outputs[0], shapes) or [None] * (rank(softmax.outputs[0]) or 0)) == 4:
        heads = traced_dim(softmax.outputs[0], 1, shapes)
    head_size = traced_dim(_grouped_values(values), -1, shapes)
    rows = weight.shape[0]
    if heads is None and head_size:
        heads = rows // head_size
    if head_size is None and heads:
        head_size = rows // heads
    if not heads or not head_size or heads * head_size != rows:
        raise StepFailed(
            "head merge", at.producer(),
            f"cannot tell heads x head size from the shapes (heads {heads}, head size {head_size}, W_O rows {rows})",
        )
    return heads, head_size


def _merge_order(chain: list[ir.Node], probs: ir.Value, heads: int, head_size: int, projection: _Projection,
                 shapes: Shapes) -> np.ndarray:
    """W_O with its rows in head-major order, after checking that ``chain`` lays the [B, H, S, dh]
    context out as [B, S, H*dh] (or [B*S, H*dh]; a dh-major merge reorders W_O's rows)."""
    probs_dims = dims(probs, shapes)
    folded = rank(probs) == 3 or len(probs_dims) == 3  # [B*H, S, S] x [B*H, S, dh]
    sizes = {"B": None if folded or not probs_dims else probs_dims[0], "H": heads,
             "S": probs_dims[-2] if len(probs_dims) in (3, 4) else None, "dh": head_size}
    axes: Axes | None = Axes.of(("B", "H", "S", "dh"), sizes)
    if folded:
        axes = Axes((("B", "H"), ("S",) if sizes["S"] != 1 else (), ("dh",)), sizes)
    for node in chain:
        # A Reshape whose target is computed at run time (Shape/Gather/Concat) and whose output dims
        # shape inference cannot tell is taken to end in H*dh: the trailing run of that size can only
        # be the factors H and dh themselves (B and S have no static size), else it fails to fit.
        axes = _through(node, axes, shapes, heads * head_size)
        if axes is None:
            raise StepFailed("head merge", node, f"cannot follow the heads through {node.op_type} (output shape {dims(node.outputs[0], shapes)})")
    tokens = tuple(f for f in axes.flat if f in ("B", "S"))
    kept = [f for f in ("B", "S") if sizes[f] != 1]
    if axes.groups[-1] in (("H", "dh"), ("dh", "H")) and list(tokens) == kept and len(axes.flat) == len(kept) + 2:
        weight = projection.weight
        if axes.groups[-1] == ("dh", "H"):  # row d*H + h holds head h's feature d
            weight = weight.reshape(head_size, heads, -1).transpose(1, 0, 2).reshape(heads * head_size, -1)
        return weight
    raise StepFailed("head merge", chain[-1] if chain else probs.producer(),
                     f"the output projection reads the context laid out as {axes.describe()}, expected [B, S, H*dh]")


def _through(node: ir.Node, axes: Axes, shapes: Shapes, last_dim: int | None = None) -> Axes | None:
    """``axes`` after one layout op (``last_dim``: its output's last dim, when known otherwise)."""
    if is_standard(node, "Identity", "Cast", "Dropout"):
        return axes
    if is_standard(node, "Transpose"):
        return axes.transpose(ints_attr(node, "perm"))
    if is_standard(node, "Unsqueeze"):
        found = reduce_axes(node)
        return None if found is None else axes.unsqueeze(found)
    if is_standard(node, "Squeeze"):
        return axes.squeeze(reduce_axes(node))
    if is_standard(node, "Flatten"):
        return axes.flatten(int_attr(node, "axis", 1))
    if is_standard(node, "Reshape"):
        spec = _reshape_spec(node, shapes)
        if spec is None:
            return None
        found = axes.reshape(spec)
        if found is None and spec and spec[-1] is None and last_dim is not None:
            # A target computed at run time (Shape/Gather/Concat) whose last entry is unknown is taken to
            # end in H*dh: the trailing run of that size can only be the factors H and dh themselves, else
            # it fails to fit.
            found = axes.reshape([*spec[:-1], last_dim])
        return found
    return None


def _reshape_spec(node: ir.Node, shapes: Shapes) -> list | None:
    """A Reshape's target for ``Axes.reshape``: known sizes, COPY for a 0 (unless ``allowzero``), None
    for -1 and for entries computed at run time (shape inference's output dims fill in what they can)."""
    target = partial_ints(node.inputs[1], shapes)
    out = dims(node.outputs[0], shapes)
    if target is None:
        return out or None
    copy = not int_attr(node, "allowzero", 0)
    spec = []
    for k, d in enumerate(target):
        if d is None or d == -1:
            spec.append(out[k] if len(out) == len(target) else None)
        else:
            spec.append(COPY if d == 0 and copy else d)
    return spec


@dataclass(frozen=True)
class _ResidualAdd:
    """Where the attention output a joins the residual stream.

    ``attention`` is a (b_O included, laid out [B, S, D]); ``summed`` the Add that brings in the
    residual x; ``attention_norm`` the norm applied to a before that Add (a sandwich block);
    ``parallel``: a is added with another branch computed beside it (an MLP of the same x), so
    ``summed`` holds more than x + a.
    """

    residual: ir.Value
    summed: ir.Value
    bias: np.ndarray | None
    attention: ir.Value
    attention_norm: LayerNormMatch | None = None
    parallel: bool = False


def _residual_add(projection: _Projection, width: int, expected: ir.Value | None) -> _ResidualAdd:
    """Past a reshape back to [B, S, D], the bias Add and a norm of the attention output alone, the Add
    with the residual input (``expected``: x as the value path sees it, when known)."""
    value, bias, attention_norm = projection.output, projection.bias, None
    for _ in range(_REACH):
        adds = consumers(value, "Add")
        if bias is None and attention_norm is None and (added := _bias_add(adds, value, width)) is not None:
            bias, value = added
            continue
        for add in adds:
            other = other_input(add, value)
            if other is None or is_constant(other):
                continue
            attention = projection.output if attention_norm is not None else value
            if expected is not None and not same(other, expected) and attention_norm is None:
                joined = _parallel_sum(add, value, expected)
                if joined is not None:
                    return _ResidualAdd(backward(expected), joined, bias, value, parallel=True)
            return _ResidualAdd(backward(other), add.outputs[0], bias, attention, attention_norm)
        norm = norm_reading(value, width) if attention_norm is None else None
        if norm is not None and not carried_on(value, norm):  # a norm of a alone, before the residual add
            attention_norm, value = norm, norm.output
            continue
        users = consumers(value)
        if len(users) == 1 and is_standard(users[0], *_UNFLATTEN_OPS) and users[0].inputs[0] is value:
            value = users[0].outputs[0]
            continue
        break
    found = ", ".join(n.op_type for n in consumers(value)) or "nothing"
    raise StepFailed("residual add", value.producer(),
                     f"expected Add(projection, residual) after the output projection, found {found}")


def _parallel_sum(add: ir.Node, attention: ir.Value, residual: ir.Value) -> ir.Value | None:
    """The sum x + a + m when ``add`` adds a branch m computed beside attention: Add(Add(a, m), x),
    Add(a, Add(m, x)) or Add(a, Add(x, m)); None when x is not in that sum."""
    other = other_input(add, attention)
    inner = produced_by(other, "Add")
    if inner is not None and any(same(v, residual) for v in inner.inputs):
        return add.outputs[0]
    for outer in consumers(add.outputs[0], "Add"):
        if same(other_input(outer, add.outputs[0]), residual):
            return outer.outputs[0]
    return None


def _bias_add(adds: list[ir.Node], value: ir.Value, width: int) -> tuple[np.ndarray, ir.Value] | None:
    """(b_O, the sum) when one of ``adds`` adds a constant of the projection's width to ``value``."""
    for add in adds:
        const, other = split_constant(add)
        if const is not None and other is value and const.size == width:
            return np.asarray(const, dtype=np.float64).reshape(-1), add.outputs[0]
    return None


# --------------------------------------------------------------------------- values and norms
#: Ops that move or re-type value vectors without changing them (heads split, transposed, repeated; one part of
#: a fused QKV projection picked out by Split, Slice or Gather).
_VALUE_LAYOUT_OPS = ("Transpose", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Split", "Slice", "Gather", "Cast", "Identity")
#: Ops between a projection's [B*S, D] input and the [B, S, D] activation it came from.
_FLATTEN_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Cast")


def _value_projection_input(values: ir.Value) -> ir.Value | None:
    """What the value projection (MatMul/Gemm with a constant weight) reads, walking back from the
    values through layout ops, a bias Add and a KV-cache Concat; None when the walk gets lost."""
    value = values
    for _ in range(24):
        node = value.producer()
        if node is None:
            return None
        if is_standard(node, "MatMul", "Gemm") and is_constant(node.inputs[1]):
            return _unflattened(node.inputs[0])
        quantized_source = dequantized_input(node)
        if quantized_source is not None:  # a dynamic-int8 V projection
            return _unflattened(quantized_source)
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


def _unflattened(source: ir.Value) -> ir.Value:
    """The activation a projection reads, before it was flattened to [B*S, D] (Gemm) or unsqueezed."""
    while (producer := produced_by(source, *_FLATTEN_OPS)) is not None:
        source = producer.inputs[0]
    return source


def _norm_of(source: ir.Value | None, width: int) -> LayerNormMatch | None:
    """The norm n with ``source = n(x)`` for some x (values projected from a norm), or None."""
    if source is None:
        return None
    return read_norm(backward(source).producer(), width)


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


# --------------------------------------------------------------------------- every Softmax
def find_block_matches(graph: ir.Graph, shapes: Shapes) -> tuple[list[BlockMatch], list[SoftmaxMiss]]:
    """Every Softmax in graph order, as a block or as a miss (with whether it looks like attention)."""
    matches: list[BlockMatch] = []
    misses: list[SoftmaxMiss] = []
    softmaxes = [n for n in graph if is_standard(n, "Softmax")]
    if not softmaxes:
        _refuse_merged_cache(graph)
    for node in softmaxes:
        try:
            matches.append(match_block(node, shapes))
        except StepFailed as failed:
            reached = STEPS.index(failed.step) > STEPS.index("probs x values")
            misses.append(SoftmaxMiss(node, failed.step, failed.detail, reached or looks_like_attention(node)))
    return matches, misses


def looks_like_attention(softmax: ir.Node) -> bool:
    """Its scores are a product of two activations (Q K^T), or its output multiplies one (the values)."""
    return _from_activation_product(softmax.inputs[0]) or bool(_elementwise_reach(softmax.outputs[0], SCORE_OPS))


def _from_activation_product(scores: ir.Value) -> bool:
    seen, frontier = {scores}, [scores]
    for _ in range(_REACH):
        following = []
        for value in frontier:
            node = value.producer()
            if node is None:
                continue
            operands = [v for v in node.inputs[:2] if v is not None]
            if is_standard(node, *PRODUCT_OPS) and len(operands) == 2 and not any(is_constant(v) for v in operands):
                return True
            if is_standard(node, *SCORE_OPS):
                fresh = [v for v in node.inputs if v is not None and not is_constant(v) and v not in seen]
                seen.update(fresh)
                following.extend(fresh)
        frontier = following
    return False


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
