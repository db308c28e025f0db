"""The ``alti-onnx`` command line: a thin layer over the Python API (``app``), and the console
script that starts it (``console``)."""
