"""Structural analysis and rewriting of exported transformer ONNX graphs.

``find_attention_blocks`` describes every attention block by what the graph computes;
``instrument`` exposes the tensors of those blocks as extra outputs; ``unfuse`` first turns fused
attention and norm operators (onnxruntime optimizer, opset-23 Attention) back into standard ops. Nothing here knows ALTI.
"""

from .analyze import AttentionAnalysis, UnmatchedSoftmax, analyze_attention, find_attention_blocks, static_shapes
from .block import AttentionBlock
from .errors import (
    GraphRewriteError,
    KVCacheExportError,
    ModelLoadError,
    PatternNotFoundError,
    QuantizedWeightsError,
    UnmatchedAttentionError,
)
from .instrument import expose_tensors, instrument
from .model_io import load_model, save_model
from .quantized import is_dynamically_quantized
from .unfuse import UnsupportedFusedOpError, fused_ops, unfuse

__all__ = [
    "AttentionAnalysis",
    "AttentionBlock",
    "GraphRewriteError",
    "KVCacheExportError",
    "ModelLoadError",
    "PatternNotFoundError",
    "QuantizedWeightsError",
    "UnmatchedAttentionError",
    "UnmatchedSoftmax",
    "UnsupportedFusedOpError",
    "analyze_attention",
    "expose_tensors",
    "find_attention_blocks",
    "instrument",
    "is_dynamically_quantized",
    "load_model",
    "save_model",
    "static_shapes",
    "fused_ops",
    "unfuse",
]
