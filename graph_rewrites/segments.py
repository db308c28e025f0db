"""Split a model into consecutive segments, each computing one group of chosen tensors.

Running the segments one after another, each fed the graph inputs and the tensors earlier segments
produced, computes exactly what the whole model computes (the same nodes, in the same order), but
each segment's outputs can be used and dropped before the next one runs: chosen intermediates of a
deep model (one group per layer) never need to be alive all at once.

A node belongs to the first group whose tensors depend on it; nodes no group depends on (the model's
head) form a last segment. Dependencies therefore only point backwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import onnx

from .domains import canonical_domain
from .errors import GraphRewriteError


@dataclass(frozen=True)
class Segment:
    """One segment: a model of its own whose inputs are graph inputs or earlier segments' outputs.

    ``outputs`` lists every tensor it hands on: to later segments, to the caller (its group), and
    the original model's outputs it computes.
    """

    model: onnx.ModelProto
    inputs: list[str]
    outputs: list[str]


def split_model(model: onnx.ModelProto, groups: Sequence[Iterable[str]],
                types: dict[str, onnx.TypeProto]) -> Iterator[Segment]:
    """``model`` as ``len(groups) + 1`` segments (the last left out when empty), made one at a time so
    that a caller saving them never holds more than one segment's copy of the weights.

    ``types`` gives the element type of every tensor that crosses from one segment into another
    (from shape inference; graph inputs and outputs bring their own). Weights stay as they are in
    ``model``: inline, or references to external data.
    """
    graph = model.graph
    nodes = list(graph.node)
    types = with_operator_types(model, types)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    reads = [_reads(node) for node in nodes]
    segment_of = [-1] * len(nodes)
    groups = [list(group) for group in groups]
    for number, group in enumerate(groups):
        missing = [name for name in group if name not in producer]
        if missing:
            raise GraphRewriteError(f"cannot split the model at {missing[0]!r}: no node computes it")
        stack = [producer[name] for name in group]
        while stack:
            index = stack.pop()
            if segment_of[index] != -1:
                continue
            segment_of[index] = number
            stack.extend(producer[name] for name in reads[index] if name in producer and segment_of[producer[name]] == -1)
    head = len(groups)
    segment_of = [head if s == -1 else s for s in segment_of]

    initializers = {t.name: t for t in graph.initializer}
    graph_inputs = {v.name: v for v in graph.input if v.name not in initializers}
    graph_outputs = [o.name for o in graph.output]
    declared = {o.name: o for o in graph.output}
    # What the model says of its own tensors travels with them: onnxruntime's fusions read these
    # shapes, so a segment without them could be optimized differently from the whole model.
    described = {v.name: v for v in graph.value_info}
    last_reader: dict[str, int] = {}
    for index, names in enumerate(reads):
        for name in names:
            last_reader[name] = max(last_reader.get(name, -1), segment_of[index])
    for name in graph_outputs:
        if name not in producer:
            raise GraphRewriteError(f"graph output {name!r} is not computed by any node; the model cannot be split")
    for number in range(head + 1):
        members = [node for node, s in zip(nodes, segment_of) if s == number]
        if not members and number == head:
            break
        made = [name for node in members for name in node.output if name]
        made_set = set(made)
        read = list(dict.fromkeys(name for index, s in enumerate(segment_of) if s == number for name in reads[index]))
        crossing_in = [name for name in read if name not in made_set and name in producer]
        inputs = [name for name in read if name in graph_inputs] + crossing_in
        wanted = set(groups[number]) if number < head else set()
        outputs = [name for name in made
                   if name in wanted or name in declared or last_reader.get(name, -1) > number]
        segment = onnx.helper.make_graph(
            members,
            f"{graph.name}_segment{number}",
            [graph_inputs[name] if name in graph_inputs else _input_info(name, described, types) for name in inputs],
            [declared[name] if name in declared else onnx.helper.make_empty_tensor_value_info(name) for name in outputs],
            [initializers[name] for name in read if name in initializers],
            value_info=[described[name] for name in made if name in described and name not in declared],
        )
        yield Segment(_model_like(model, segment), inputs, outputs)


def _reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor ``node`` reads: its inputs and the outer tensors its subgraphs refer to."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            names.extend(_outer_names(sub))
    return list(dict.fromkeys(names))


def _outer_names(graph: onnx.GraphProto) -> list[str]:
    """Tensors a subgraph reads that it does not define itself."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    found = []
    for node in graph.node:
        found.extend(name for name in _reads(node) if name not in defined)
        defined.update(node.output)
    found.extend(o.name for o in graph.output if o.name not in defined)
    return found


#: Operators outside the standard domains whose outputs do not all take their first float input's
#: type, by output position (onnxruntime's contrib schemas).
_CONTRIB_OUTPUT_TYPES: dict[tuple[str, str], dict[int, int]] = {
    ("com.microsoft", "EmbedLayerNormalization"): {1: onnx.TensorProto.INT32},
}


def with_operator_types(model: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> dict[str, onnx.TypeProto]:
    """``types`` completed, in one pass in graph order, with the element types ONNX shape inference
    leaves out: it stops at operators it has no schema for (onnxruntime's contrib ops, BiasGelu,
    FastGelu ...) and at everything computed from their outputs.

    Standard nodes go through ONNX's per-node inference; a contrib node's outputs take the type of
    its first float input (what the activation and norm fusions do), except where
    ``_CONTRIB_OUTPUT_TYPES`` says otherwise.
    """
    if all(name in types for node in model.graph.node for name in node.output if name):
        return types
    types = dict(types)
    for weight in model.graph.initializer:
        types.setdefault(weight.name, onnx.helper.make_tensor_type_proto(weight.data_type, list(weight.dims)))
    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    for node in model.graph.node:
        untyped = [name for name in node.output if name and name not in types]
        if not untyped:
            continue
        domain = canonical_domain(node.domain)
        if domain in ("", "ai.onnx.ml"):
            types.update(_node_types(node, domain, opsets, types))
            continue
        floats = [types[name] for name in node.input if name in types and types[name].tensor_type.elem_type in _FLOATS]
        fixed = _CONTRIB_OUTPUT_TYPES.get((domain, node.op_type), {})
        for position, name in enumerate(node.output):
            if not name or name in types:
                continue
            if position in fixed:
                types[name] = onnx.helper.make_tensor_type_proto(fixed[position], None)
            elif floats:
                types[name] = onnx.helper.make_tensor_type_proto(floats[0].tensor_type.elem_type, None)
    return types


_FLOATS = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE})


def _node_types(node: onnx.NodeProto, domain: str, opsets: dict[str, int],
                types: dict[str, onnx.TypeProto]) -> dict[str, onnx.TypeProto]:
    """The output types ONNX's inference gives ``node`` from the input types known so far ({} when it cannot)."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opsets.get(domain, 1), domain)
        known = {name: types[name] for name in node.input if name in types}
        found = onnx.shape_inference.infer_node_outputs(schema, node, known)
    except Exception:  # noqa: BLE001 - an input it needs is untyped: later nodes may still be typed
        return {}
    return {name: value for name, value in found.items() if value.HasField("tensor_type") and value.tensor_type.elem_type}


def _input_info(name: str, described: dict[str, onnx.ValueInfoProto],
                types: dict[str, onnx.TypeProto]) -> onnx.ValueInfoProto:
    """A segment input for a tensor an earlier segment computes: as the model describes it, else with
    the element type and rank shape inference found. Inferred dimensions are left out on purpose:
    onnxruntime infers them again as it does for the whole model, whereas names that inference
    made up would change which fusions it applies, and the numbers with them."""
    if name in described and described[name].type.tensor_type.elem_type:
        return described[name]
    known = types.get(name)
    if known is None or not known.HasField("tensor_type") or not known.tensor_type.elem_type:
        raise GraphRewriteError(f"cannot split the model: the element type of {name!r} is unknown")
    tensor = known.tensor_type
    rank = len(tensor.shape.dim) if tensor.HasField("shape") else None
    return onnx.helper.make_tensor_value_info(name, tensor.elem_type, None if rank is None else [None] * rank)


def _model_like(model: onnx.ModelProto, graph: onnx.GraphProto) -> onnx.ModelProto:
    """``graph`` as a model with ``model``'s IR version, opsets, functions and metadata."""
    result = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(result, field, getattr(model, field))
    result.opset_import.extend(model.opset_import)
    result.functions.extend(model.functions)
    result.graph.CopyFrom(graph)
    return result
