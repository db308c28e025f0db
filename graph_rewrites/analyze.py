"""Describe every attention block of an ONNX model (the entry point of graph_rewrites)."""

from __future__ import annotations

from collections.abc import Callable

import onnx
import onnx_ir as ir
import onnxscript.optimizer

from .attention import BlockMatch, find_block_matches
from .block import AttentionBlock
from .errors import GraphRewriteError, ModelLoadError
from .model_io import external_data_files

#: Ops that only re-lay out or re-type a weight: always folded, whatever the weight's size.
_WEIGHT_LAYOUT_OPS = frozenset({"Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze"})


def _fold_weight_layout(node: ir.Node) -> bool | None:
    if node.op_type in ("DequantizeLinear", "DynamicQuantizeLinear"):
        return False  # keep quantized weights visible so they can be reported
    return True if node.op_type in _WEIGHT_LAYOUT_OPS else None


def find_attention_blocks(model: onnx.ModelProto) -> list[AttentionBlock]:
    """Every attention block of ``model`` in graph order, with its tensors and parameters.

    Analysis runs on a constant-folded copy (onnxscript's folder) so weights behind Transpose,
    Cast or Identity resolve to arrays; the original model is not modified.
    """
    _require_weights(model)
    analysis = ir.from_proto(model)
    fold: Callable[[ir.Node], bool | None] = _fold_weight_layout
    onnxscript.optimizer.fold_constants(analysis, should_fold=fold)
    matches = find_block_matches(analysis.graph)
    shapes = static_shapes(model)
    known = _tensor_names(model)
    blocks = [_describe(layer, match, shapes) for layer, match in enumerate(matches)]
    for block in blocks:
        missing = [name for name in block.tensor_names() if name not in known]
        if missing:
            raise GraphRewriteError(f"layer {block.layer}: tensors {missing} were found by analysis but are not in the model")
    return blocks


def _require_weights(model: onnx.ModelProto) -> None:
    """The analysis reads W_O and the norm parameters, so external weights must already be loaded.

    Without this check a proto loaded with ``load_external_data=False`` fails deep inside constant
    folding with a bare FileNotFoundError relative to the working directory.
    """
    locations = external_data_files(model)
    if locations:
        raise ModelLoadError(
            f"the model's weights are in external data ({', '.join(locations)}) that was not loaded; "
            "load the model with graph_rewrites.load_model(path) (or onnx.load(path)) before analysing it"
        )


def _describe(layer: int, match: BlockMatch, shapes: dict[str, list[int | None]]) -> AttentionBlock:
    num_heads, head_size = _head_layout(match, shapes)
    norm = match.norm
    return AttentionBlock(
        layer=layer,
        num_heads=num_heads,
        head_size=head_size,
        norm_placement=match.placement,
        probs=match.probs.name,
        values=match.values.name,
        residual=match.residual.name,
        output=match.output.name,
        norm_input=match.norm_input.name if match.norm_input is not None else None,
        out_proj_weight=match.out_proj_weight,
        out_proj_bias=match.out_proj_bias,
        norm_weight=norm.weight if norm is not None else None,
        norm_bias=norm.bias if norm is not None else None,
        norm_epsilon=norm.epsilon if norm is not None else None,
    )


def _head_layout(match: BlockMatch, shapes: dict[str, list[int | None]]) -> tuple[int | None, int | None]:
    """Heads and head size from static shapes of probs [B,H,S,S] and values [B,H,S,dh]."""
    width = match.out_proj_weight.shape[0]
    probs_shape = shapes.get(match.probs.name) or []
    values_shape = shapes.get(match.values.name) or []
    heads = probs_shape[1] if len(probs_shape) == 4 else None
    head_size = values_shape[3] if len(values_shape) == 4 else None
    if heads is None and head_size:
        heads = width // head_size
    if head_size is None and heads:
        head_size = width // heads
    return heads, head_size


def static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Shapes ONNX shape inference can tell (symbolic dims become None); empty when it cannot run."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is a best-effort nicety here
        return {}
    shapes: dict[str, list[int | None]] = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return shapes


def _tensor_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.input}
    for node in model.graph.node:
        names.update(node.output)
    return names
