"""The explainer of each model layout: what every layout shares (``base``), a model in one graph
(``single_graph``), an encoder-decoder export (``encoder_decoder``).

Importing this package registers every layout, so ``layouts.base.Explainer(path)`` finds the one
that explains ``path`` however it was imported.
"""

from alti_onnx.layouts import encoder_decoder, single_graph  # noqa: F401 - each registers its layout
