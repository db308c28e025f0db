"""``python -m alti_onnx``: the ``alti-onnx`` command, where its console script is not installed (a tree on
PYTHONPATH, as scripts/device-check.sh may run it)."""

from alti_onnx.cli.console import main

if __name__ == "__main__":
    main()
