"""Where things live by default: the cache the recipes build into, and the default model in it.

The package only reads these places; the recipes (``models/`` in the repository) build into them.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The default model's folder name under ``<cache>/onnx`` and ``<cache>/hf``: all-MiniLM-L6-v2
#: fine-tuned as a Rotten Tomatoes sentiment classifier (the repository's models/sentiment.py).
DEFAULT_MODEL = "minilm-rt-sentiment"


def cache_root() -> Path:
    """``$ALTI_ONNX_CACHE``, else ``~/.cache/alti-onnx`` (not created here)."""
    return Path(os.environ.get("ALTI_ONNX_CACHE") or Path.home() / ".cache" / "alti-onnx").expanduser()


def default_model_dir() -> Path:
    """The default model's ONNX export (it may not be built yet)."""
    return cache_root() / "onnx" / DEFAULT_MODEL


def default_hf_model_dir() -> Path:
    """The Hugging Face checkpoint the default model was exported from (for the gradient baselines)."""
    return cache_root() / "hf" / DEFAULT_MODEL
