"""Checks on a model's path that import nothing heavy: a cached start reads no graph at all."""

from __future__ import annotations

from pathlib import Path

from .errors import ModelLoadError


def require_model_file(path: str | Path) -> Path:
    """``path`` if it is a regular file; else a ModelLoadError saying what it is instead (a device
    such as /dev/zero, or a pipe, would be read without end)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"expected an .onnx file, got a directory: {path}")
    if not path.is_file():
        raise ModelLoadError(f"{path} is not a regular file")
    return path
