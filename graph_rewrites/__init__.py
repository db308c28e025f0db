"""Structural analysis and rewriting of exported transformer ONNX graphs.

``find_attention_blocks`` describes every attention block by what the graph computes;
``instrument`` exposes the tensors of those blocks as extra outputs; ``unfuse`` first turns fused
attention and norm operators (onnxruntime optimizer, opset-23 Attention) back into standard ops. Nothing here knows ALTI.
"""

from importlib import import_module
from typing import Any

#: Public name -> the submodule that defines it. Imported on first use, so that reading an error
#: class (the CLI does at start-up) does not load onnx, onnxscript and the analysis.
_EXPORTS = {
    "AttentionAnalysis": ".block",
    "UnmatchedSoftmax": ".block",
    "analyze_attention": ".analyze",
    "find_attention_blocks": ".analyze",
    "AnalysedModel": ".pipeline",
    "analyse_file": ".pipeline",
    "inferred_types": ".analyze",
    "Segment": ".segments",
    "split_model": ".segments",
    "AttentionBlock": ".block",
    "token_embedding_rows": ".embeddings",
    "GraphRewriteError": ".errors",
    "KVCacheExportError": ".errors",
    "ModelLoadError": ".errors",
    "PatternNotFoundError": ".errors",
    "QuantizedWeightsError": ".errors",
    "UnmatchedAttentionError": ".errors",
    "expose_tensors": ".exposure",
    "instrument": ".exposure",
    "load_model": ".model_io",
    "save_model": ".model_io",
    "is_dynamically_quantized": ".quantized",
    "UnsupportedFusedOpError": ".unfusing",
    "fused_ops": ".unfusing",
    "unfuse": ".unfusing",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
