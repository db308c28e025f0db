"""Where the model recipes keep downloads and builds."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$ALTI_ONNX_CACHE``, else ``~/.cache/alti-onnx`` (created)."""
    if cache_dir is None:
        cache_dir = os.environ.get("ALTI_ONNX_CACHE") or Path.home() / ".cache" / "alti-onnx"
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
