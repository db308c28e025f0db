"""The prepared model's segments read as ``decomposition.linearized`` graphs: their nodes, the
tensors a forward pass must expose for a sweep through them, and their constants.

Parts are named by where their constant enters, found by structure: ``layer l`` from block l's
input up to block l+1's (its attention, its feed-forward block and their norms), and ``head`` after
the model's last residual sum (an Add of two tensors that both depend on the first layer's input:
the last norm, a pooler, a classifier or an unembedding).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from alti_onnx.decomposition.linearized import Node

from .prepared import SegmentFile

HEAD = "head"


@dataclass
class SegmentGraph:
    """One segment's nodes, constants and the names a sweep reads from the forward pass."""

    nodes: list[Node]
    constants: dict[str, np.ndarray]
    initializers: dict[str, onnx.TensorProto]
    #: every node output a sweep may read (Constant nodes' outputs are computed here instead)
    exposed: list[str]


def read_segment(segment: SegmentFile) -> SegmentGraph:
    """The nodes of a saved segment, its Constant nodes evaluated, its weights left on disk."""
    model = onnx.load(str(segment.path), load_external_data=False)
    nodes, constants, exposed = [], {}, []
    for proto in model.graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
        if proto.op_type == "Constant" and proto.domain in ("", "ai.onnx"):
            constants[proto.output[0]] = _constant_value(attributes)
            continue
        nodes.append(Node(proto.op_type, tuple(proto.input), tuple(proto.output), attributes))
        exposed.extend(name for name in proto.output if name and name not in segment.outputs)
    return SegmentGraph(nodes, constants, {t.name: t for t in model.graph.initializer}, exposed)


def _constant_value(attributes: dict[str, object]) -> np.ndarray:
    if "value" in attributes:
        return numpy_helper.to_array(attributes["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attributes:
            return np.asarray(attributes[key], dtype=dtype)
    raise ValueError(f"a Constant node with {sorted(attributes)} is not read here")


class SegmentValues:
    """Tensor values for a sweep: the forward pass's, the segments' constants, and their weights
    (read from disk when first asked for, in the type they are stored in)."""

    def __init__(self, graphs: Sequence[SegmentGraph], weights_dir: Path, run: dict[str, np.ndarray],
                 loaded: dict[str, np.ndarray] | None = None):
        self.run = run
        #: weights read so far: pass the same dict to every sweep of a model, so each is read once
        self.constants: dict[str, np.ndarray] = {} if loaded is None else loaded
        self.initializers: dict[str, onnx.TensorProto] = {}
        for graph in graphs:
            self.constants.update(graph.constants)
            self.initializers.update(graph.initializers)
        self.weights_dir = str(weights_dir)

    def __call__(self, name: str) -> np.ndarray:
        found = self.run.get(name)
        if found is not None:
            return found
        found = self.constants.get(name)
        if found is None:
            if name not in self.initializers:
                raise KeyError(f"no value for tensor {name!r}")
            found = numpy_helper.to_array(self.initializers[name], base_dir=self.weights_dir)
            self.constants[name] = found
        return found


def named_parts(nodes: list[Node], block_inputs: Sequence[str], live: Callable[[str], bool]) -> list[Node]:
    """``nodes`` with their ``part``: the layer whose input they follow, or the head after the last
    residual sum (see the module docstring). ``live``: whether a tensor depends on the first layer's input."""
    layer_of: dict[str, int] = {name: layer for layer, name in enumerate(block_inputs)}
    last = last_residual_sum(nodes, live)
    last_sum = None if last is None else nodes.index(last)
    head: set[str] = set()
    named = []
    for index, node in enumerate(nodes):
        layers = [layer_of[name] for name in node.inputs if name in layer_of]
        layer = max(layers, default=0)
        in_head = last_sum is not None and (index > last_sum and any(name in head for name in node.inputs))
        if last_sum is not None and index == last_sum:
            head.update(node.outputs)
        if in_head:
            head.update(name for name in node.outputs if name)
        for name in node.outputs:
            if name and name not in layer_of:
                layer_of[name] = layer
        named.append(Node(node.op, node.inputs, node.outputs, node.attributes, HEAD if in_head else f"layer {layer}"))
    return named


def last_residual_sum(nodes: list[Node], live: Callable[[str], bool]) -> Node | None:
    """The end of the model's residual stream: the last Add of two tensors that depend on the sources
    (``live``), except a norm's own scale-and-shift written out as ``x * s + (beta - mean * s)``
    (tf2onnx): its two operands are products by the same live tensor s."""
    producer = {name: node for node in nodes for name in node.outputs if name}
    sums = [node for node in nodes if node.op == "Add" and len(node.inputs) == 2 and all(map(live, node.inputs))
            and not (_factors(producer, node.inputs[0], live) & _factors(producer, node.inputs[1], live))]
    return sums[-1] if sums else None


def _factors(producer: dict[str, Node], name: str, live: Callable[[str], bool], depth: int = 3) -> set[str]:
    """The live tensors ``name`` is a product by, looking through a few sums, differences and negations."""
    node = producer.get(name)
    if node is None or depth == 0:
        return set()
    if node.op == "Mul":
        return {factor for factor in node.inputs if live(factor)}
    if node.op in ("Add", "Sub", "Neg"):
        return set().union(*(_factors(producer, operand, live, depth - 1) for operand in node.inputs))
    return set()


@dataclass(frozen=True)
class PostNormSite:
    """Where a post-LN layer's feed-forward block meets the stream (BERT's ``LN(y + f)``): the sum
    ``total`` = y + f of the stream ``stream`` (y) and the block's output, and the LayerNormalization
    after it (its ``output``, ``scale``, ``bias``, ``epsilon``)."""

    stream: str
    total: str
    output: str
    scale: str
    bias: str | None
    epsilon: float


def post_norm_site(graph: SegmentGraph, stream: str) -> PostNormSite | None:
    """The sum of ``stream`` and a tensor computed from it, normalized by a LayerNormalization over
    the last axis (found by structure); None where the segment has no such sum."""
    norms = {node.inputs[0]: node for node in graph.nodes
             if node.op == "LayerNormalization" and node.attributes.get("axis", -1) == -1 and len(node.inputs) >= 2}
    for total in stream_sums(graph, stream):
        norm = norms.get(total)
        if norm is not None:
            bias = norm.inputs[2] if len(norm.inputs) > 2 and norm.inputs[2] else None
            return PostNormSite(stream, total, norm.outputs[0], norm.inputs[1], bias,
                                float(norm.attributes.get("epsilon", 1e-5)))
    return None


def stream_sums(graph: SegmentGraph, stream: str) -> list[str]:
    """The outputs of the Adds of ``stream`` (or a float32 copy of it) and a tensor computed from it
    within the segment (a residual sum: a pre-LN layer's ``y + f``, the input of a post-LN layer's
    second norm), in order."""
    producer = {name: node for node in graph.nodes for name in node.outputs if name}
    same = {stream}  # the stream, and its copies (Identity, a Cast to float32: T5's norm reads one)
    for node in graph.nodes:
        if node.inputs and node.inputs[0] in same and (node.op == "Identity" or (
                node.op == "Cast" and node.attributes.get("to") == onnx.TensorProto.FLOAT)):
            same.add(node.outputs[0])
    found = []
    for node in graph.nodes:
        if node.op != "Add" or len(node.inputs) != 2 or not same & set(node.inputs):
            continue
        other = node.inputs[1] if node.inputs[0] in same else node.inputs[0]
        if other not in same and other in producer and _reads(producer, other, stream):
            found.append(node.outputs[0])
    return found


def _reads(producer: dict[str, Node], name: str, source: str) -> bool:
    """Whether tensor ``name`` is computed from ``source`` (within the segment)."""
    seen, stack = set(), [name]
    while stack:
        current = stack.pop()
        if current == source:
            return True
        node = producer.get(current)
        if node is None or current in seen:
            continue
        seen.add(current)
        stack.extend(n for n in node.inputs if n)
    return False
