"""Small, name-free helpers for walking an onnx-ir graph by structure."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from .domains import is_default_domain

#: Ops that hand an activation through unchanged at inference time.
PASSTHROUGH_OPS = frozenset({"Identity", "Dropout", "Cast"})
#: Ops that read only a tensor's shape, never its values (a walk along values passes them by).
SHAPE_READERS = frozenset({"Shape", "Size"})


def is_standard(node: ir.Node, *op_types: str) -> bool:
    """True when ``node`` is one of ``op_types`` from the default ONNX domain."""
    return is_default_domain(node.domain) and node.op_type in op_types


def produced_by(value: ir.Value | None, *op_types: str) -> ir.Node | None:
    """The node that computes ``value`` when it is one of ``op_types`` (default domain), else None."""
    node = None if value is None else value.producer()
    return node if node is not None and is_standard(node, *op_types) else None


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value as a NumPy array when the graph fixes it (initializer or Constant), else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = produced_by(value, "Constant")
    if producer is not None:
        attr = producer.attributes.get("value")
        if attr is not None:
            return attr.as_tensor().numpy()
    return None


def is_constant(value: ir.Value | None) -> bool:
    return value is not None and (value.const_value is not None or constant(value) is not None)


def consumers(value: ir.Value, *op_types: str) -> list[ir.Node]:
    """Nodes that read ``value``'s elements (not only its shape), restricted to ``op_types`` when
    given, in graph order."""
    nodes = [n for n in dict.fromkeys(use.node for use in value.uses()) if not is_standard(n, *SHAPE_READERS)]
    if op_types:
        nodes = [n for n in nodes if is_standard(n, *op_types)]
    return nodes


def rank(value: ir.Value | None) -> int | None:
    """The value's rank when shape inference knows it."""
    return None if value is None or value.shape is None else value.shape.rank()


def forward(value: ir.Value) -> ir.Value:
    """Skip forward through a chain of single-consumer pass-through ops."""
    while True:
        users = consumers(value)
        if len(users) != 1 or not is_standard(users[0], *PASSTHROUGH_OPS):
            return value
        value = users[0].outputs[0]


def backward(value: ir.Value) -> ir.Value:
    """Skip backward through pass-through producers."""
    while (producer := produced_by(value, *PASSTHROUGH_OPS)) is not None:
        value = producer.inputs[0]
    return value


def same(a: ir.Value | None, b: ir.Value | None) -> bool:
    """Whether two values are the same tensor once pass-through ops are skipped."""
    return a is not None and b is not None and backward(a) is backward(b)


def split_constant(node: ir.Node) -> tuple[np.ndarray | None, ir.Value | None]:
    """For a binary op, the constant operand (as an array) and the other operand."""
    a, b = node.inputs[0], node.inputs[1]
    ca, cb = constant(a), constant(b)
    if cb is not None and ca is None:
        return cb, a
    if ca is not None and cb is None:
        return ca, b
    return None, None


def other_input(node: ir.Node, value: ir.Value) -> ir.Value | None:
    """The operand of a binary node that is not ``value``."""
    a, b = node.inputs[0], node.inputs[1]
    if a is value:
        return b
    if b is value:
        return a
    return None


def int_attr(node: ir.Node, name: str, default: int | None = None) -> int | None:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def ints_attr(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else list(attr.as_ints())


def reduce_axes(node: ir.Node) -> list[int] | None:
    """The axes of a Reduce* node, from its attribute (old opsets) or its second input."""
    axes = ints_attr(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        const = constant(node.inputs[1])
        axes = None if const is None else [int(a) for a in np.ravel(const)]
    return axes


def describe(node: ir.Node, graph: ir.Graph | None = None) -> str:
    """A short human description of a node for error messages."""
    label = f"{node.op_type} node"
    if node.name:
        label += f" '{node.name}'"
    return label

