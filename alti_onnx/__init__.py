"""ALTI token-to-token contributions for transformer models exported to ONNX.

Runs the exported model on onnxruntime with its attention-block intermediates exposed and
computes the contributions in NumPy; PyTorch is never imported.
"""

from .contributions import layer_contributions, rollout
from .errors import (
    AltiOnnxError,
    InputError,
    LayerCountError,
    MissingTokenizerError,
    ModelPathError,
    OutputPathError,
    RuntimeFailure,
    SelfCheckError,
)
from .explainer import Explainer
from .explanation import Explanation

__all__ = [
    "AltiOnnxError",
    "Explainer",
    "Explanation",
    "InputError",
    "LayerCountError",
    "MissingTokenizerError",
    "ModelPathError",
    "OutputPathError",
    "RuntimeFailure",
    "SelfCheckError",
    "layer_contributions",
    "rollout",
]
__version__ = "0.1.0"
