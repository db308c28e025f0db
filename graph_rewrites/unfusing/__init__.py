"""Turn fused attention and norm operators back into the standard ops the block matcher reads.

Production exports (onnxruntime's transformer optimizer, optimum ``--optimize O2..O4``, the opset-23
exporters) hide the attention probabilities inside one fused node. ``unfuse`` rewrites each fused
node into standard operators computing the same numbers (the operator specifications are quoted in
each module), so the block description and ALTI work unchanged. The rewritten model is the one
that runs: its original outputs match the fused model's to float tolerance.

Supported: com.microsoft Attention, MultiHeadAttention, SkipLayerNormalization,
SkipSimplifiedLayerNormalization, SimplifiedLayerNormalization and the ONNX Attention (opset 23).
Activation fusions (BiasGelu, FastGelu, QuickGelu) stay: they sit in the feed-forward path, which
ALTI does not decompose. Fused ops that hide the probabilities but cannot be unfused yet
(GroupQueryAttention, PackedAttention, QAttention, ...) are refused with a message naming them.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnx_ir as ir

from ..domains import canonical_domain
from ..errors import QuantizedWeightsError
from .builder import Builder, UnsupportedFusedOpError, float_dtype, used
from .norms import unfuse_simplified_layer_norm, unfuse_skip_layer_norm, unfuse_skip_simplified_layer_norm
from .onnx_attention import unfuse_onnx_attention
from .ort_attention import unfuse_attention, unfuse_multi_head_attention

__all__ = ["UnsupportedFusedOpError", "fused_ops", "unfuse"]

Rule = Callable[[ir.Node, Builder], list]

RULES: dict[tuple[str, str], Rule] = {
    ("com.microsoft", "Attention"): unfuse_attention,
    ("com.microsoft", "MultiHeadAttention"): unfuse_multi_head_attention,
    ("com.microsoft", "SkipLayerNormalization"): unfuse_skip_layer_norm,
    ("com.microsoft", "SkipSimplifiedLayerNormalization"): unfuse_skip_simplified_layer_norm,
    ("", "SimplifiedLayerNormalization"): unfuse_simplified_layer_norm,
    ("com.microsoft", "SimplifiedLayerNormalization"): unfuse_simplified_layer_norm,
    ("", "Attention"): unfuse_onnx_attention,
}

#: Fused attention that hides the probabilities and is not unfused (yet).
REFUSED = frozenset(
    {"GroupQueryAttention", "PackedAttention", "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention",
     "DecoderMaskedSelfAttention", "DecoderAttention", "LongformerAttention", "SparseAttention", "PagedAttention"}
)
QUANTIZED_ATTENTION = frozenset({"QAttention", "QOrderedAttention"})


def fused_ops(model: onnx.ModelProto) -> list[str]:
    """The fused operators of the main graph that ``unfuse`` rewrites, as ``domain.op`` (no duplicates)."""
    found = [(canonical_domain(n.domain), n.op_type) for n in model.graph.node]
    return list(dict.fromkeys(f"{d or 'ai.onnx'}.{op}" for d, op in found if (d, op) in RULES))


def unfuse(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every supported fused node replaced by standard ops; ``model`` itself when none."""
    rewritten = unfused_ir(model)
    return model if rewritten is None else runnable_proto(rewritten)


def runnable_proto(rewritten: ir.Model) -> onnx.ModelProto:
    """The unfused model as the proto that runs (the fused graph's inferred shapes left out:
    onnxruntime infers the rest again)."""
    proto = ir.to_proto(rewritten)
    del proto.graph.value_info[:]
    return proto


def unfused_ir(model: onnx.ModelProto) -> ir.Model | None:
    """``model`` converted to onnx-ir with every supported fused node replaced by standard ops; None
    (and nothing converted) when it has none."""
    _refuse(model)
    if not fused_ops(model):
        return None
    try:
        inferred = onnx.shape_inference.infer_shapes(model)  # ranks of masks, static head sizes
    except Exception:  # noqa: BLE001 - best effort: the rules refuse when they miss a shape they need
        inferred = model
    rewritten = ir.from_proto(inferred)
    opset = rewritten.opset_imports.get("", 1)
    graph = rewritten.graph
    taken = {v.name for n in graph for v in n.outputs} | {v.name for v in graph.inputs} | set(graph.initializers)
    for index, node in enumerate(list(graph)):
        rule = RULES.get((canonical_domain(node.domain), node.op_type))
        if rule is None:
            continue
        builder = Builder(float_dtype(node, graph), opset)
        replacements = rule(node, builder)
        _name(builder.nodes, f"unfused{index}_{node.op_type}", taken)
        pairs = [(old, new) for old, new in zip(node.outputs, replacements) if new is not None and used(old)]
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], builder.nodes, [old for old, _ in pairs], [new for _, new in pairs]
        )
    return rewritten


def _name(nodes: list[ir.Node], prefix: str, taken: set[str]) -> None:
    """Unique names for the new nodes and their outputs (the rewritten graph's names must not clash)."""
    for i, node in enumerate(nodes):
        node.name = f"{prefix}/{node.op_type}_{i}"
        for j, value in enumerate(node.outputs):
            if value.name is None:
                name = f"{prefix}/{node.op_type}_{i}_out{j}"
                while name in taken:
                    name += "_"
                value.name = name
                taken.add(name)


def _refuse(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        if node.op_type in QUANTIZED_ATTENTION:
            raise QuantizedWeightsError(
                f"quantized weights: attention node '{node.name}' is {node.domain}.{node.op_type} (int8 QKV projection "
                "fused with the attention); quantize without fusing attention (quantize_dynamic of the plain export)"
            )
        if node.op_type in REFUSED and canonical_domain(node.domain) == "com.microsoft":
            raise UnsupportedFusedOpError(
                f"fused attention node '{node.name}' is com.microsoft.{node.op_type}, which hides the attention "
                "probabilities and is not unfused yet; explain the export before onnxruntime's optimizer "
                "(or optimum --optimize O1)"
            )
