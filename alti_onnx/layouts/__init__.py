"""The explainer of each model layout: what every layout shares (``base``), a model in one graph
(``single_graph``), an encoder-decoder export (``encoder_decoder``). ``alti_onnx.explainer`` brings them together."""
