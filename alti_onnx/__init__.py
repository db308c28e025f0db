"""ALTI token-to-token contributions for transformer models exported to ONNX.

Runs the exported model on onnxruntime with its attention-block intermediates exposed and
computes the contributions in NumPy; PyTorch is never imported.
"""

from importlib import import_module
from typing import Any

#: Public name -> the submodule that defines it, imported on first use: the console script starts
#: (and answers --help, or a bad option) without loading onnxruntime, numba or the analysis.
_EXPORTS = {
    "layer_contributions": ".decomposition.contributions",
    "rollout": ".decomposition.contributions",
    "Explainer": ".explainer",
    "Explanation": ".results.explanation",
    **{name: ".errors" for name in (
        "AltiOnnxError", "InputError", "LayerCountError", "MissingTokenizerError", "ModelPathError", "NonFiniteError",
        "OutputPathError", "RuntimeFailure", "SelfCheckError", "TokenizerMismatchError",
    )},
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
