"""A tiny node factory for the unfusing rewrites: standard ops, constants in the model's float type."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from ..errors import GraphRewriteError


class UnsupportedFusedOpError(GraphRewriteError):
    """A fused operator uses a feature the unfusing rewrites do not reproduce (past state, rotary, ...)."""


class Builder:
    """Collects the standard nodes that replace one fused node, in the order they must run.

    ``dtype`` is the float type of the fused node's activations, so constants (scales, mask fill
    values) match it; ``opset`` the model's default-domain opset, which decides whether Split and
    ReduceMean take their sizes/axes as attributes (old opsets) or as inputs.
    """

    def __init__(self, dtype: np.dtype, opset: int):
        self.dtype = np.dtype(dtype)
        self.opset = opset
        self.nodes: list[ir.Node] = []

    def op(self, op_type: str, *inputs: ir.Value | None, num_outputs: int = 1, **attributes) -> ir.Value:
        node = ir.node(op_type, list(inputs), attributes={k: v for k, v in attributes.items() if v is not None},
                       num_outputs=num_outputs)
        self.nodes.append(node)
        return node.outputs[0] if num_outputs == 1 else node.outputs  # type: ignore[return-value]

    def const(self, array, dtype=None) -> ir.Value:
        """A Constant node; float scalars take the activations' dtype unless ``dtype`` says otherwise."""
        value = np.asarray(array, dtype=dtype if dtype is not None else None)
        if dtype is None and value.dtype.kind == "f":
            value = value.astype(self.dtype)
        return self.op("Constant", value=ir.tensor(value))

    def ints(self, values: Sequence[int]) -> ir.Value:
        return self.const(np.asarray(values, dtype=np.int64))

    def float_const(self, value: float) -> ir.Value:
        """A scalar in the activations' dtype, clipped to its finite range (fp16 cannot hold -3.4e38)."""
        info = np.finfo(self.dtype)
        if np.isfinite(value):
            value = float(np.clip(value, info.min, info.max))
        return self.const(np.asarray(value, dtype=self.dtype))

    def split(self, x: ir.Value, sizes: Sequence[int], axis: int = -1) -> list[ir.Value]:
        if self.opset >= 13:
            outs = self.op("Split", x, self.ints(sizes), axis=axis, num_outputs=len(sizes))
        else:
            outs = self.op("Split", x, axis=axis, split=list(sizes), num_outputs=len(sizes))
        return list(outs)

    def reduce_mean_last(self, x: ir.Value) -> ir.Value:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.ints([-1]), keepdims=1)
        return self.op("ReduceMean", x, axes=[-1], keepdims=1)

    def unsqueeze(self, x: ir.Value, axes: Sequence[int]) -> ir.Value:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.ints(axes))
        return self.op("Unsqueeze", x, axes=list(axes))

    def dim(self, x: ir.Value, axis: int) -> ir.Value:
        """``shape(x)[axis]`` as a 1-element int64 tensor."""
        return self.op("Gather", self.op("Shape", x), self.ints([axis]), axis=0)


def float_dtype(node: ir.Node, graph: ir.Graph) -> np.dtype:
    """The float type a fused node computes in: a known input type, else a constant input's, else the graph's."""
    for value in node.inputs:
        if value is not None and value.dtype is not None and value.dtype.is_floating_point():
            return np.dtype(value.dtype.numpy())
    for value in node.inputs:
        if value is not None and value.const_value is not None and value.const_value.dtype.is_floating_point():
            return np.dtype(value.const_value.dtype.numpy())
    for value in graph.initializers.values():
        if value.const_value is not None and value.const_value.dtype.is_floating_point():
            return np.dtype(value.const_value.dtype.numpy())
    return np.dtype(np.float32)


def rank(value: ir.Value | None) -> int | None:
    """The rank of ``value`` when shape inference or the model knows it."""
    if value is None:
        return None
    if value.const_value is not None:
        return len(value.const_value.shape)
    return len(value.shape) if value.shape is not None else None


def used(value: ir.Value | None) -> bool:
    """Whether an optional output is read by a node or is a graph output."""
    return value is not None and (bool(value.uses()) or value.is_graph_output())
