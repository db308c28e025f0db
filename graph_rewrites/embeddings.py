"""The token-embedding table a graph indexes with its token ids: how many ids the model can take.

Found by structure on the proto, without loading weights: from the ids input, through the integer
ops exporters put before the lookup (Cast, Keras's handling of negative ids, reshapes), to a Gather
over axis 0 of a constant [V, D] table, or onnxruntime's EmbedLayerNormalization.
"""

from __future__ import annotations

from collections import defaultdict

import onnx

from .domains import is_default_domain

#: Ops an id passes through on its way to the embedding lookup.
_ID_OPS = frozenset({"Cast", "Identity", "Add", "Sub", "Mul", "Where", "Clip", "Max", "Min", "Mod", "Abs",
                     "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand"})
_DEPTH = 8


def token_embedding_rows(model: onnx.ModelProto, ids_input: str) -> int | None:
    """V, the rows of the table that ``ids_input`` indexes; None when the graph does not show one
    table unambiguously."""
    graph = model.graph
    tables = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].HasField("t"):
            tables[node.output[0]] = list(node.attribute[0].t.dims)
    readers = defaultdict(list)
    for node in graph.node:
        for position, name in enumerate(node.input):
            readers[name].append((node, position))
    found: set[int] = set()
    frontier, seen = [ids_input], {ids_input}
    for _ in range(_DEPTH):
        following = []
        for value in frontier:
            for node, position in readers[value]:
                rows = _lookup_rows(node, position, tables)
                if rows is not None:
                    found.add(rows)
                elif node.op_type in _ID_OPS and is_default_domain(node.domain):
                    following.extend(o for o in node.output if o not in seen)
                    seen.update(node.output)
        frontier = following
    return found.pop() if len(found) == 1 else None


def _lookup_rows(node: onnx.NodeProto, position: int, tables: dict[str, list[int]]) -> int | None:
    """The rows of the table ``node`` looks ids up in, when it reads them at ``position``."""
    if node.op_type == "Gather" and is_default_domain(node.domain) and position == 1:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        dims = tables.get(node.input[0])
        return dims[0] if axis == 0 and dims is not None and len(dims) == 2 else None
    if node.op_type == "EmbedLayerNormalization" and position == 0 and len(node.input) > 2:
        dims = tables.get(node.input[2])  # word_embedding
        return dims[0] if dims is not None and len(dims) == 2 else None
    return None
