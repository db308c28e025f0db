"""Describe every attention block of an ONNX model, and account for every Softmax (the entry point).

Analysis runs on a copy of the model: onnx-ir, every constant subgraph folded by onnxscript
whatever its size (so W_O, W_V and norm parameters behind Transpose, Cast, Mul(scale) or
DequantizeLinear resolve to arrays), shapes inferred, and every norm spelling rewritten into one
canonical op (``norm_forms``). The blocks are then matched Softmax by Softmax (``attention``). The
original model is not modified; every tensor a block names exists in it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript.optimizer

from .attention import BlockMatch, SoftmaxMiss, find_block_matches
from .block import AttentionAnalysis, AttentionBlock, UnmatchedSoftmax
from .errors import GraphRewriteError, ModelLoadError
from .model_io import external_data_files
from .norm_forms import canonicalize_norms
from .quantized import dequantize_constant_weights
from .walk import describe


def analyze_attention(model: onnx.ModelProto, base_dir: str | Path | None = None,
                      inferred: onnx.ModelProto | None = None, converted: ir.Model | None = None) -> AttentionAnalysis:
    """Every Softmax of ``model`` as a described block or an unmatched node with its reason.

    Weights kept in external data are read from ``base_dir`` (the model's folder) as the analysis
    needs them, so a model of any size is analysed without loading its weights into the proto.
    ``inferred`` is ``with_inferred_shapes(model)`` when the caller has it already; ``converted`` the
    model already in onnx-ir (the unfused graph ``model`` was serialized from), which then becomes
    the analysis copy instead of a second conversion.
    """
    if base_dir is None:
        _require_weights(model)
    if inferred is None:
        inferred = with_inferred_shapes(model)
    shapes = _shapes_of(inferred) if inferred is not model else {}
    analysis = analysis_copy(model, shape_inference=inferred is model, value_info=inferred.graph.value_info,
                             base_dir=base_dir, converted=converted)
    matches, misses = find_block_matches(analysis.graph, shapes)
    known = _tensor_names(model)
    blocks = [_describe(layer, match) for layer, match in enumerate(matches)]
    for block in blocks:
        missing = [name for name in block.tensor_names() if name not in known]
        if missing:
            raise GraphRewriteError(f"layer {block.layer}: tensors {missing} were found by analysis but are not in the model")
    return AttentionAnalysis(blocks, [_unmatched(miss) for miss in misses])


def find_attention_blocks(model: onnx.ModelProto, base_dir: str | Path | None = None) -> list[AttentionBlock]:
    """Every attention block of ``model`` in graph order, with its tensors and parameters.

    Raises PatternNotFoundError when no Softmax is an attention block, and UnmatchedAttentionError
    when some Softmax looks like attention but does not complete the pattern (rather than return
    fewer layers than the model has).
    """
    return analyze_attention(model, base_dir).require_complete()


def analysis_copy(model: onnx.ModelProto, shape_inference: bool = True,
                  value_info: Iterable[onnx.ValueInfoProto] = (), base_dir: str | Path | None = None,
                  converted: ir.Model | None = None) -> ir.Model:
    """The onnx-ir copy the matcher reads: constants folded (any size), shapes inferred (unless the
    model already carries them, or ``value_info`` brings them), norms canonical. External weights
    are read (memory-mapped) from ``base_dir``. ``converted``, the same model already in onnx-ir
    (and no longer needed as it is), is taken as the copy, its intermediate types forgotten as the
    proto's were."""
    copy = ir.from_proto(model) if converted is None else _without_intermediate_types(converted)
    if base_dir is not None:
        ir.external_data.set_base_dir(copy.graph, str(base_dir))
    _apply_value_info(copy, value_info)
    dequantize_constant_weights(copy)
    with _quiet("onnxscript.optimizer"):
        onnxscript.optimizer.fold_constants(copy, onnx_shape_inference=shape_inference, should_fold=_fold_any_size)
    canonicalize_norms(copy)
    return copy


def _without_intermediate_types(model: ir.Model) -> ir.Model:
    """``model`` with no type or shape on the values its nodes compute (graph outputs keep theirs), as
    a proto without value_info reads."""
    outputs = {id(value) for value in model.graph.outputs}
    for node in model.graph:
        for value in node.outputs:
            if id(value) not in outputs:
                value.type = None
                value.shape = None
    return model


def _apply_value_info(model: ir.Model, value_info: Iterable[onnx.ValueInfoProto]) -> None:
    """Give the copy's values the types and shapes that shape inference found (on a weightless copy)."""
    infos = {info.name: info for info in value_info if info.type.HasField("tensor_type")}
    if not infos:
        return
    for node in model.graph:
        for value in node.outputs:
            info = infos.get(value.name)
            if info is None:
                continue
            value.type = ir.serde.deserialize_type_proto_for_type(info.type)
            value.shape = ir.serde.deserialize_type_proto_for_shape(info.type)


@contextmanager
def _quiet(logger_name: str):
    """The folder's warnings about what it leaves unfolded (a LayerNorm of a constant table, with its
    three outputs: DeBERTa's relative embeddings) are not the user's concern: without a handler,
    Python would print them on stderr of every command."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fold_any_size(node: ir.Node) -> bool:
    """Fold every node whose inputs are constant, however large (weights are what the analysis reads)."""
    return True


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


def _describe(layer: int, match: BlockMatch) -> AttentionBlock:
    norm = match.norm
    return AttentionBlock(
        layer=layer,
        num_heads=match.num_heads,
        head_size=match.head_size,
        kind=match.kind,
        cross=match.cross,
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
        norm_rms=norm.rms if norm is not None else False,
    )


def _unmatched(miss: SoftmaxMiss) -> UnmatchedSoftmax:
    return UnmatchedSoftmax(describe(miss.softmax), miss.step, miss.detail, miss.attention_like)


def inferred_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """The type (element type, and shape where known) of every tensor ONNX shape inference can tell,
    graph inputs and outputs included; computed without the weights' data."""
    return inferred_types_of(with_inferred_shapes(model))


def inferred_types_of(inferred: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """``inferred_types`` from a model shape inference has already run on."""
    infos = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    return {info.name: info.type for info in infos if info.type.HasField("tensor_type")}


def with_inferred_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy carrying what ONNX shape inference (with data propagation, so reshape targets built
    from Shape/Concat count) can tell, weights left out; ``model`` itself when inference cannot run."""
    try:
        return onnx.shape_inference.infer_shapes(_without_weight_data(model), data_prop=True)
    except Exception:  # noqa: BLE001 - shape inference is a best-effort nicety here
        return model


#: Initializers larger than this keep only their type and shape for shape inference.
_SHAPE_ONLY_ABOVE = 64


def _without_weight_data(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every large initializer's data left out (its name, type and dims kept).

    Shape inference needs the weights' shapes, and the values only of small integer tensors
    (reshape targets); serializing gigabytes of weights for it took most of a large model's
    analysis time, and fails outright past protobuf's 2 GB.
    """
    light = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph, source = light.graph, model.graph
    graph.name = source.name
    graph.node.extend(source.node)
    graph.input.extend(source.input)
    graph.output.extend(source.output)
    graph.value_info.extend(source.value_info)
    for tensor in source.initializer:
        if int(np.prod(tensor.dims, dtype=np.int64)) <= _SHAPE_ONLY_ABOVE:
            graph.initializer.append(tensor)
        else:
            graph.initializer.append(onnx.TensorProto(name=tensor.name, dims=tensor.dims, data_type=tensor.data_type))
    return light


def _shapes_of(inferred: onnx.ModelProto) -> dict[str, list[int | None]]:
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
