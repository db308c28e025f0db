"""What the graph fixes about a tensor's shape, where ONNX shape inference stops short.

Exporters compute reshape targets and slice bounds from ``Shape`` at run time (``view(B, S, -1, dh)``,
``chunk(3, dim=-1)``), and ONNX shape inference gives up on those as soon as one dim is symbolic. The
matcher needs only a few static sizes (a head's size, the head count): ``traced_dim`` follows a tensor
back through layout ops to the op that fixed the size, and ``partial_ints`` evaluates the small integer
programs (Shape -> Gather -> Add/Div/Mul -> Concat) that exporters build their targets with, keeping
None wherever a value is known only at run time.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from .walk import constant, int_attr, ints_attr, is_standard, split_constant

_INT_TYPES = frozenset({ir.DataType.INT64, ir.DataType.INT32, ir.DataType.INT16, ir.DataType.INT8,
                        ir.DataType.UINT64, ir.DataType.UINT32, ir.DataType.UINT16, ir.DataType.UINT8})
#: Shapes from ONNX shape inference, by tensor name (None for a symbolic dim).
Shapes = Mapping[str, list]
#: How far back the walks look (nodes).
_REACH = 16


def dims(value: ir.Value, shapes: Shapes) -> list:
    """The value's static dims (None where unknown): ONNX shape inference by name, else the IR's shape."""
    known = shapes.get(value.name) if value.name else None
    if known:
        return list(known)
    if value.shape is None:
        return []
    return [d if isinstance(d, int) else None for d in value.shape]


def traced_dim(value: ir.Value, axis: int, shapes: Shapes, depth: int = 0) -> int | None:
    """One static dim of ``value`` (negative ``axis`` from the end): from shape inference, or traced back
    through layout ops to a Reshape, Slice or Split that fixed it (shape inference gives up after the
    first operator it does not know, e.g. onnxruntime's fused ops elsewhere in the graph)."""
    known = dims(value, shapes)
    if known and -len(known) <= axis < len(known) and known[axis] is not None:
        return known[axis]
    node = value.producer()
    if node is None or depth > _REACH:
        return None
    if is_standard(node, "Identity", "Cast", "Dropout"):
        return traced_dim(node.inputs[0], axis, shapes, depth + 1)
    if is_standard(node, "Add", "Sub", "Mul", "Div"):
        _, other = split_constant(node)  # a bias or a scale keeps the layout
        return None if other is None else traced_dim(other, axis, shapes, depth + 1)
    if is_standard(node, "Transpose"):
        perm = ints_attr(node, "perm")
        return None if perm is None else traced_dim(node.inputs[0], perm[axis % len(perm)], shapes, depth + 1)
    if is_standard(node, "Reshape"):
        target = partial_ints(node.inputs[1], shapes)
        if target is None:
            return None
        size = target[axis % len(target)]
        if size is not None and size > 0:
            return size
        if size == -1:
            return _inferred_axis(node, shapes)
        return traced_dim(node.inputs[0], axis % len(target), shapes, depth + 1) if size == 0 else None
    if is_standard(node, "Slice"):
        return _sliced_dim(node, axis, shapes, depth)
    if is_standard(node, "Split"):
        return _split_dim(node, value, axis, shapes, depth)
    return None


def _inferred_axis(reshape: ir.Node, shapes: Shapes) -> int | None:
    """The size of a Reshape's -1 entry when every other entry is a product of the input's own axes
    (``Gather(Shape(x), i)``, ``ReduceProd`` of such a Gather): the product of the input axes left
    over, when each of those is static. tf2onnx's einsum lowering folds [B, H, 1, dh, S] into
    [ReduceProd(B, H), -1, S] so; the -1 is 1 * dh, though B and S are only known at run time."""
    source, known = reshape.inputs[0], dims(reshape.inputs[0], shapes)
    pieces = reshape.inputs[1].producer()
    if not known or pieces is None or not is_standard(pieces, "Concat"):
        return None
    used: set[int] = set()
    for piece in pieces.inputs:
        const = constant(piece)
        if const is not None:
            if [int(d) for d in np.ravel(const)] != [-1]:
                return None  # a literal size: which axes it stands for is not told
            continue
        axes = _shape_axes(piece, source)
        if axes is None or len(set(axes)) != len(axes) or any(
                not -len(known) <= a < len(known) or a % len(known) in used for a in axes):
            return None  # an axis named twice, or none of the input's: the pieces are not a partition
        used.update(a % len(known) for a in axes)
    rest = [known[a] for a in range(len(known)) if a not in used]
    return int(np.prod(rest)) if all(d is not None for d in rest) else None


def _shape_axes(piece: ir.Value, source: ir.Value) -> list[int] | None:
    """The axes of ``source`` whose sizes (multiplied) make ``piece``: Gather(Shape(source), axes),
    optionally through ReduceProd; None for anything else."""
    node = piece.producer()
    if node is not None and is_standard(node, "ReduceProd"):
        node = node.inputs[0].producer()
    if node is None or not is_standard(node, "Gather") or int_attr(node, "axis", 0) != 0:
        return None
    shape, indices = node.inputs[0].producer(), constant(node.inputs[1])
    if shape is None or not is_standard(shape, "Shape") or shape.inputs[0] is not source or indices is None:
        return None
    if int_attr(shape, "start", 0) != 0 or int_attr(shape, "end", None) is not None:
        return None
    return [int(i) for i in np.ravel(indices)]


def _sliced_dim(node: ir.Node, axis: int, shapes: Shapes, depth: int) -> int | None:
    """The size of a Slice's output along ``axis`` (only one axis sliced, bounds known)."""
    rank = len(dims(node.outputs[0], shapes)) or len(dims(node.inputs[0], shapes))
    if not rank:
        return None
    axis %= rank
    starts, ends = partial_ints(node.inputs[1], shapes), partial_ints(node.inputs[2], shapes)
    axes = partial_ints(node.inputs[3], shapes) if len(node.inputs) > 3 and node.inputs[3] is not None else None
    steps = partial_ints(node.inputs[4], shapes) if len(node.inputs) > 4 and node.inputs[4] is not None else None
    if starts is None or ends is None:
        return None
    axes = list(range(len(starts))) if axes is None else axes
    if any(a is None for a in axes):
        return None
    sliced = [k for k, a in enumerate(axes) if a % rank == axis]
    if not sliced:
        return traced_dim(node.inputs[0], axis, shapes, depth + 1)
    k = sliced[0]
    start, end, step = starts[k], ends[k], (steps[k] if steps else 1)
    size = traced_dim(node.inputs[0], axis, shapes, depth + 1)
    if start is None or end is None or step is None or size is None:
        return None
    return len(range(*slice(start, end, step).indices(size)))


def _split_dim(node: ir.Node, value: ir.Value, axis: int, shapes: Shapes, depth: int) -> int | None:
    """The size of one Split output along ``axis``: its entry of the split sizes, or an equal share."""
    rank = len(dims(node.inputs[0], shapes))
    split_axis = int_attr(node, "axis", 0)
    if rank and split_axis % rank != axis % rank:
        return traced_dim(node.inputs[0], axis, shapes, depth + 1)
    index = list(node.outputs).index(value)
    sizes = ints_attr(node, "split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        sizes = partial_ints(node.inputs[1], shapes)
    if sizes is not None:
        return sizes[index]
    total = traced_dim(node.inputs[0], axis, shapes, depth + 1)
    parts = len(node.outputs)
    return total // parts if total is not None and total % parts == 0 else None


#: Ops whose output partial_ints computes from its inputs' entries.
_INT_OPS = ("Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Concat", "Gather", "Slice",
            "Add", "Sub", "Mul", "Div", "Max", "Min")
#: Longest integer tensor read as shape values (reshape targets and slice bounds are a few entries).
_MAX_ENTRIES = 16


def partial_ints(value: ir.Value | None, shapes: Shapes, depth: int = 0) -> list[int | None] | None:
    """A small integer tensor's entries (a scalar as one entry) where the graph fixes them, None where
    they are computed from run-time sizes; None when the walk cannot tell even the length."""
    if value is None:
        return None
    stored = value.const_value
    if stored is not None and (stored.size > _MAX_ENTRIES or stored.dtype not in _INT_TYPES):
        return None  # a weight, not a shape: never converted
    const = constant(value)
    if const is not None:
        return [int(d) for d in np.ravel(const)] if const.dtype.kind in "iu" and const.size <= _MAX_ENTRIES else None
    node = value.producer()
    if node is None or depth > _REACH:
        return _unknown_entries(value, shapes)
    if is_standard(node, "Shape"):
        known = dims(node.inputs[0], shapes)
        if not known:
            return None
        start, end = int_attr(node, "start", 0), int_attr(node, "end", None)
        return known[start:end]
    if not is_standard(node, *_INT_OPS):
        return _unknown_entries(value, shapes)
    first = partial_ints(node.inputs[0], shapes, depth + 1)
    if is_standard(node, "Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten"):
        return first
    if is_standard(node, "Concat"):
        rest = [partial_ints(v, shapes, depth + 1) for v in node.inputs[1:]]
        return None if first is None or any(p is None for p in rest) else first + [d for p in rest for d in p]
    if first is None:
        return _unknown_entries(value, shapes)
    if is_standard(node, "Gather"):
        indices = constant(node.inputs[1])
        if indices is None or int_attr(node, "axis", 0) != 0:
            return _unknown_entries(value, shapes)
        return [first[int(i)] if -len(first) <= int(i) < len(first) else None for i in np.ravel(indices)]
    if is_standard(node, "Slice"):
        starts, ends = partial_ints(node.inputs[1], shapes, depth + 1), partial_ints(node.inputs[2], shapes, depth + 1)
        if not starts or not ends or starts[0] is None or ends[0] is None:
            return _unknown_entries(value, shapes)
        return first[slice(starts[0], ends[0])]
    second = partial_ints(node.inputs[1], shapes, depth + 1)
    return _unknown_entries(value, shapes) if second is None else _elementwise(node.op_type, first, second)


def _elementwise(op: str, a: list[int | None], b: list[int | None]) -> list[int | None] | None:
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        return None
    n = max(len(a), len(b))
    a, b = (a * n if len(a) == 1 else a), (b * n if len(b) == 1 else b)
    compute = {
        "Add": lambda x, y: x + y, "Sub": lambda x, y: x - y, "Mul": lambda x, y: x * y,
        "Div": lambda x, y: int(x / y) if y else None, "Max": max, "Min": min,  # ONNX integer Div truncates
    }[op]
    return [None if x is None or y is None else compute(x, y) for x, y in zip(a, b)]


def _unknown_entries(value: ir.Value, shapes: Shapes) -> list[None] | None:
    """A 1-D tensor of known length whose entries are run-time values."""
    known = dims(value, shapes)
    if len(known) == 1 and known[0] is not None:
        return [None] * known[0]
    if known == [] and value.shape is not None and value.shape.rank() == 0:
        return [None]
    return None
