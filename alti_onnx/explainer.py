"""The Python API: ``Explainer(model).explain(text)``, for every model layout.

``Explainer`` (``layouts.base``) picks the layout from the model's files: one graph
(``layouts.single_graph``) or an encoder-decoder export (``layouts.encoder_decoder``). Importing this
module registers both.
"""

from alti_onnx.layouts.base import DEFAULT_SELF_CHECK_TOLERANCE, Explainer
from alti_onnx.layouts.encoder_decoder import EncoderDecoderExplainer
from alti_onnx.layouts.single_graph import SingleGraphExplainer
from alti_onnx.runtime.model_files import ModelFiles, locate_model

__all__ = ["DEFAULT_SELF_CHECK_TOLERANCE", "EncoderDecoderExplainer", "Explainer", "ModelFiles", "SingleGraphExplainer",
           "locate_model"]
