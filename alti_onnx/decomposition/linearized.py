"""A model output as a sum of parts, from one forward pass: the linearized adjoint of its graph.

At the actual point of a forward pass every operator of a transformer is read as a map that is
linear in one operand, its *carrier*, with every other operand held at its actual value (docs/logit.md):

- sums, reshapes, transposes, gathers, slices, concatenations: linear in every operand;
- a product of two activations (attention probabilities x values, x * Phi(x) in GELU, a gated
  unit's gate x its up projection) is linear in the operand with fewer nonlinear steps behind it
  (``depth``): the values, x, the up projection; the other operand, a gate, is held;
- a quotient is linear in its numerator at the actual denominator: every norm at its actual statistics;
- an elementwise nonlinearity f is the slope f(z)/z at the actual z (so that slope x z = f(z): the
  parts still sum to the real value);
- LayerNormalization / RMSNormalization operators: linear at their actual statistics.

Composed, these maps send the layer input (the source) to the output; constants met on the way
(biases, a norm's beta, f(0) where z is 0) are parts of their own. Because every map reproduces its
operator at the actual point, the token parts plus the constant parts sum to the model's own output:
that sum is the self-check. Instead of carrying every source token's share forwards through every
position (an [S, S, D] tensor per layer), the output's adjoint is carried backwards once: a token's
part is the adjoint at the source times the source's vector there, the same number for the cost of
one backward pass.

This module sees the graph as plain ``Node`` records and the forward pass's tensors by name; the
runtime reads them from the prepared model and onnxruntime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from alti_onnx.errors import LinearizationError


@dataclass(frozen=True)
class Node:
    """One graph operator: its type, input and output tensor names, and attributes."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: Mapping[str, object] = field(default_factory=dict)
    #: the part a constant met in this node counts towards (see ``Sweep.parts``)
    part: str = ""


#: Elementwise operators applied as the slope f(z)/z at the actual z.
ELEMENTWISE = frozenset({
    "Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "Softplus", "Elu", "Selu", "LeakyRelu", "HardSigmoid", "HardSwish",
    "Mish", "Exp", "Log", "Sqrt", "Reciprocal", "Abs", "Sin", "Cos", "Pow", "Clip", "FastGelu", "BiasGelu",
    "QuickGelu", "Celu", "ThresholdedRelu", "Softsign",
})
#: Operators that pass their first input through unchanged in value (inference: Dropout is the identity).
_PASS = frozenset({"Identity", "Dropout", "Cast", "CastLike"})
_SHAPE_ONLY = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
#: Operators whose output counts one nonlinear step more than their operands (for ``depth``).
_STEP = ELEMENTWISE | {"Softmax", "LogSoftmax"}


@dataclass
class Sweep:
    """What one backward sweep found.

    ``adjoints``: the output's adjoint at each stop tensor (in the forward's precision, the tensor's shape).
    ``parts``: per part name, the constants' share of the output, one number per batch row.
    """

    adjoints: dict[str, np.ndarray]
    parts: dict[str, np.ndarray]


class LinearizedGraph:
    """The graph's nodes (in topological order) read at one forward pass's tensors.

    ``sources``: the tensors the decomposition starts from (the first layer's input); a tensor is
    *live* when a float path leads to it from a source, and only live tensors carry the adjoint.
    ``values`` maps every tensor the sweep reads (initializers included) to its value; the structure
    (liveness, depth, parts) is read once, and ``value`` may be replaced by another run's tensors.
    """

    def __init__(self, nodes: Sequence[Node], sources: Iterable[str], values: Callable[[str], np.ndarray]):
        self.nodes = list(nodes)
        self.value = values
        self.depth: dict[str, int] = dict.fromkeys(sources, 0)
        for node in self.nodes:
            live = [self.depth[name] for name in node.inputs if name in self.depth]
            if not live:
                continue
            step = node.op in _STEP or (node.op in ("Mul", "MatMul", "Div", "Gemm", "Einsum") and len(live) > 1)
            for name in node.outputs:
                if name and np.issubdtype(np.asarray(self.value(name)).dtype, np.floating):
                    self.depth[name] = max(live) + int(step)

    def live(self, name: str) -> bool:
        return name in self.depth

    def sweep(self, seeds: Mapping[str, np.ndarray], stops: Iterable[str] = (), rows: int | None = None,
              stop_at: Callable[[Node], bool] | None = None) -> Sweep:
        """Carry the adjoints ``seeds`` (by output tensor) back through the graph to ``stops``.

        ``rows``: the batch size, when each row's parts are wanted apart (the adjoint's first axis is
        then the batch); None sums them (a sweep seeded in one row). ``stop_at``: nodes where the
        sweep stops too, keeping the adjoint of their first output.
        """
        stops = set(stops)
        # The adjoint runs in the forward's own precision (float32: each entry off by ~1e-7 relative,
        # what the forward itself carries); the parts are summed in float64.
        adjoints: dict[str, np.ndarray] = {name: np.asarray(a, dtype=np.float32) for name, a in seeds.items()}
        parts: dict[str, np.ndarray] = {}
        kept: dict[str, np.ndarray] = {}
        for node in reversed(self.nodes):
            if not any(name in adjoints for name in node.outputs if name):
                continue
            if stop_at is not None and stop_at(node):
                kept[node.outputs[0]] = adjoints.pop(node.outputs[0])
                continue
            if node.outputs[0] in stops:
                continue
            outgoing = [adjoints.pop(name, None) for name in node.outputs]
            for name, adjoint in _rule(self, node, outgoing):
                if name == _REST:
                    share = _per_row(adjoint, rows)
                    parts[node.part] = parts[node.part] + share if node.part in parts else share
                elif self.live(name):
                    shape = np.shape(self.value(name))
                    adjoint = _unbroadcast(adjoint, shape)
                    adjoints[name] = adjoints[name] + adjoint if name in adjoints else adjoint
                else:
                    constant = np.asarray(self.value(name))
                    share = _per_row(np.where(adjoint != 0, adjoint * constant, 0.0), rows)
                    parts[node.part] = parts[node.part] + share if node.part in parts else share
        found = {name: adjoints.pop(name) for name in stops if name in adjoints}
        found.update(kept)
        stray = [name for name, a in adjoints.items() if np.any(a)]
        if stray:
            raise LinearizationError(f"the output's adjoint reached {stray[0]!r}, which no source leads to")
        return Sweep(found, parts)


# --------------------------------------------------------------------------- rules
def _rule(graph: LinearizedGraph, node: Node, out: list[np.ndarray | None]) -> list[tuple[str, np.ndarray]]:
    """The adjoint each operand receives: ``(name, adjoint)`` pairs, the adjoint in the output's
    shape (broadcast operands are reduced by the caller) or already in the operand's."""
    op, ins, value = node.op, node.inputs, graph.value
    adjoint = out[0]
    if op in _PASS or op in _SHAPE_ONLY:
        return [(ins[0], adjoint.reshape(np.shape(value(ins[0]))))]
    if op == "Transpose":
        perm = node.attributes.get("perm") or list(range(adjoint.ndim))[::-1]
        return [(ins[0], adjoint.transpose(np.argsort(perm)))]
    if op == "Add":
        return [(ins[0], adjoint), (ins[1], adjoint)]
    if op == "Sub":
        return [(ins[0], adjoint), (ins[1], -adjoint)]
    if op == "Neg":
        return [(ins[0], -adjoint)]
    if op == "Mul":
        carrier, held = _carrier(graph, node, ins[0], ins[1])
        return [(carrier, adjoint * _array(value(held)))]
    if op == "Div":
        if not graph.live(ins[0]):
            raise _unsupported(node, "its denominator carries the output but its numerator does not")
        return [(ins[0], adjoint / _array(value(ins[1])))]
    if op == "MatMul":
        return _matmul(graph, node, adjoint)
    if op == "Gemm":
        return _gemm(graph, node, adjoint)
    if op in ("ReduceMean", "ReduceSum"):
        return [(ins[0], _reduce_adjoint(node, adjoint, np.shape(value(ins[0])), value))]
    if op == "GlobalAveragePool":  # the mean over every axis after the first two (tf2onnx's LayerNorm mean)
        shape = np.shape(value(ins[0]))
        return [(ins[0], np.broadcast_to(adjoint, shape) / int(np.prod(shape[2:])))]
    if op == "Gather":
        return [(ins[0], _gather_adjoint(node, adjoint, np.shape(value(ins[0])), value))]
    if op == "Slice":
        return [(ins[0], _slice_adjoint(node, adjoint, np.shape(value(ins[0])), value))]
    if op == "Concat":
        axis = int(node.attributes["axis"])
        sizes = [np.shape(value(name))[axis] for name in ins]
        return list(zip(ins, np.split(adjoint, np.cumsum(sizes)[:-1], axis=axis)))
    if op == "Split":
        given = next(a for a in out if a is not None)
        pieces = [np.zeros(np.shape(value(name)), dtype=given.dtype) if a is None else a for name, a in zip(node.outputs, out)]
        return [(ins[0], np.concatenate(pieces, axis=int(node.attributes.get("axis", 0))))]
    if op == "Expand":
        return [(ins[0], adjoint)]
    if op == "Where":
        condition = np.asarray(value(ins[0]), dtype=bool)
        return [(ins[1], np.where(condition, adjoint, 0.0)), (ins[2], np.where(condition, 0.0, adjoint))]
    if op == "LayerNormalization":
        return _layer_norm(node, adjoint, value, centred=True)
    if op in ("RMSNormalization", "SimplifiedLayerNormalization"):
        return _layer_norm(node, adjoint, value, centred=False)
    if op in ELEMENTWISE:
        return _slope(graph, node, adjoint)
    raise _unsupported(node, "no linear reading of this operator is known")


def _carrier(graph: LinearizedGraph, node: Node, first: str, second: str) -> tuple[str, str]:
    """(carrier, held) of a product: the live operand, or of two live ones the one with fewer
    nonlinear steps behind it (x in x * Phi(x), the values in probabilities x values)."""
    live = [name for name in (first, second) if graph.live(name)]
    if len(live) == 1:
        return live[0], second if live[0] == first else first
    depth_first, depth_second = graph.depth[first], graph.depth[second]
    if depth_first == depth_second:
        raise _unsupported(node, "both factors depend on the input through as many nonlinear steps")
    return (first, second) if depth_first < depth_second else (second, first)


def _matmul(graph: LinearizedGraph, node: Node, adjoint: np.ndarray) -> list[tuple[str, np.ndarray]]:
    a_name, b_name = node.inputs
    carrier, held = _carrier(graph, node, a_name, b_name)
    a, b = (_array(graph.value(name)) for name in (a_name, b_name))
    if a.ndim < 2 or b.ndim < 2:
        raise _unsupported(node, "a one-dimensional operand")
    adjoint = adjoint.astype(np.result_type(adjoint, b if carrier == a_name else a), copy=False)
    if carrier == a_name:
        if b.ndim == 2:  # a weight: one BLAS call (a stacked product of a transposed view would loop)
            return [(a_name, _rows_times(adjoint, b.T))]
        return [(a_name, adjoint @ np.swapaxes(b, -1, -2))]
    return [(b_name, np.swapaxes(a, -1, -2) @ adjoint)]


def _rows_times(adjoint: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """adjoint [..., k] @ weight [k, n] over the rows that are not all zero (a classifier's last
    layers carry the adjoint of one position only)."""
    rows = adjoint.reshape(-1, adjoint.shape[-1])
    live = np.flatnonzero(rows.any(axis=1))
    if len(live) * 2 > len(rows):
        found = rows @ weight
    else:
        found = np.zeros((len(rows), weight.shape[1]), dtype=np.result_type(rows, weight))
        found[live] = rows[live] @ weight
    return found.reshape(*adjoint.shape[:-1], weight.shape[1])


def _gemm(graph: LinearizedGraph, node: Node, adjoint: np.ndarray) -> list[tuple[str, np.ndarray]]:
    attrs = node.attributes
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    a_name, b_name = node.inputs[:2]
    carrier, _ = _carrier(graph, node, a_name, b_name)
    a, b = (_array(graph.value(name)) for name in (a_name, b_name))
    a_op = a.T if attrs.get("transA", 0) else a
    b_op = b.T if attrs.get("transB", 0) else b
    found = []
    if carrier == a_name:
        grad = alpha * adjoint @ b_op.T
        found.append((a_name, grad.T if attrs.get("transA", 0) else grad))
    else:
        grad = alpha * a_op.T @ adjoint
        found.append((b_name, grad.T if attrs.get("transB", 0) else grad))
    if len(node.inputs) > 2 and node.inputs[2]:
        found.append((node.inputs[2], beta * adjoint))
    return found


def _reduce_adjoint(node: Node, adjoint: np.ndarray, shape: tuple[int, ...], value) -> np.ndarray:
    axes = node.attributes.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = [int(a) for a in np.asarray(value(node.inputs[1])).ravel()]
    if axes is None or len(axes) == 0:
        if node.attributes.get("noop_with_empty_axes", 0):
            return adjoint
        axes = list(range(len(shape)))
    axes = sorted(a % len(shape) for a in axes)
    if not node.attributes.get("keepdims", 1):
        adjoint = np.expand_dims(adjoint, axes)
    spread = np.broadcast_to(adjoint, shape)
    if node.op == "ReduceMean":
        spread = spread / int(np.prod([shape[a] for a in axes]))  # a Python int keeps the adjoint's precision
    return spread


def _gather_adjoint(node: Node, adjoint: np.ndarray, shape: tuple[int, ...], value) -> np.ndarray:
    axis = int(node.attributes.get("axis", 0)) % len(shape)
    indices = np.asarray(value(node.inputs[1])).astype(np.int64)
    indices = np.where(indices < 0, indices + shape[axis], indices)
    result = np.zeros(shape, dtype=adjoint.dtype)
    moved = np.moveaxis(result, axis, 0)
    pieces = np.moveaxis(adjoint, list(range(axis, axis + indices.ndim)), list(range(indices.ndim)))
    np.add.at(moved, indices.ravel(), pieces.reshape(indices.size, *moved.shape[1:]))
    return result


def _slice_adjoint(node: Node, adjoint: np.ndarray, shape: tuple[int, ...], value) -> np.ndarray:
    starts, ends = (np.asarray(value(name)).ravel() for name in node.inputs[1:3])
    axes = np.asarray(value(node.inputs[3])).ravel() if len(node.inputs) > 3 and node.inputs[3] else range(len(starts))
    steps = np.asarray(value(node.inputs[4])).ravel() if len(node.inputs) > 4 and node.inputs[4] else [1] * len(starts)
    index = [slice(None)] * len(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = int(axis) % len(shape)
        size = shape[axis]
        start, end, step = int(start), int(end), int(step)
        clamp = (lambda v, lo, hi: max(lo, min(hi, v)))
        if step > 0:
            start = clamp(start + size if start < 0 else start, 0, size)
            end = clamp(end + size if end < 0 else end, 0, size)
        else:
            start = clamp(start + size if start < 0 else start, -1, size - 1)
            end = clamp(end + size if end < 0 else end, -1, size - 1)
            end = None if end < 0 else end
        index[axis] = slice(start, end, step)
    result = np.zeros(shape, dtype=adjoint.dtype)
    result[tuple(index)] += adjoint
    return result


def _layer_norm(node: Node, adjoint: np.ndarray, value, centred: bool) -> list[tuple[str, np.ndarray]]:
    x = _array(value(node.inputs[0]))
    axis = int(node.attributes.get("axis", -1)) % x.ndim
    axes = tuple(range(axis, x.ndim))
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    shifted = x - x.mean(axes, keepdims=True) if centred else x
    sigma = np.sqrt(np.square(shifted).mean(axes, keepdims=True) + epsilon)
    scaled = adjoint * _array(value(node.inputs[1])) / sigma
    if centred:
        scaled = scaled - scaled.mean(axes, keepdims=True)
    found = [(node.inputs[0], scaled)]
    if len(node.inputs) > 2 and node.inputs[2]:
        found.append((node.inputs[2], adjoint))
    return found


def _slope(graph: LinearizedGraph, node: Node, adjoint: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """f(z) = slope x z + rest, slope = f(z)/z where z is not 0 (rest = f(0) there, a part of its own).
    BiasGelu and a two-input FastGelu add their bias first: z = x + b."""
    x_name = node.inputs[0]
    z = _array(graph.value(x_name))
    bias = node.inputs[1] if node.op in ("BiasGelu", "FastGelu") and len(node.inputs) > 1 and node.inputs[1] else None
    if bias is not None:
        z = z + _array(graph.value(bias))
    y = _array(graph.value(node.outputs[0]))
    zero = np.abs(z) < 1e-30
    slope = np.where(zero, 0.0, y / np.where(zero, 1.0, z))
    carried = adjoint * slope
    found = [(x_name, carried)]
    if bias is not None:
        found.append((bias, carried))
    rest = np.where(zero, y, 0.0)
    if np.any(rest):
        found.append((_REST, adjoint * rest))
    return found


#: The pseudo-tensor of f(0) where an elementwise nonlinearity meets z = 0 (a constant part).
_REST = "\0rest"


def _unbroadcast(adjoint: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum an output-shaped adjoint down to an operand broadcast into it."""
    if adjoint.shape == tuple(shape):
        return adjoint
    extra = adjoint.ndim - len(shape)
    if extra > 0:
        adjoint = adjoint.sum(tuple(range(extra)))
    axes = tuple(k for k, size in enumerate(shape) if size == 1 and adjoint.shape[k] != 1)
    if axes:
        adjoint = adjoint.sum(axes, keepdims=True)
    return adjoint.reshape(shape)


def _per_row(share: np.ndarray, rows: int | None) -> np.ndarray:
    """A constant's share of the output, per batch row (the share's first axis), or in total (float64)."""
    if rows is None or share.ndim == 0 or share.shape[0] != rows:
        if rows is None or rows == 1:
            return np.array([share.sum(dtype=np.float64)])
        raise LinearizationError("a constant enters where the batch is not the first axis")
    return share.reshape(rows, -1).sum(1, dtype=np.float64)


def _array(value: np.ndarray) -> np.ndarray:
    """A value as the sweep computes with it: float as it ran (float16 widened to float32)."""
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype == np.float16 else value


def _unsupported(node: Node, why: str) -> LinearizationError:
    return LinearizationError(f"cannot decompose the output through a {node.op} node: {why}")
