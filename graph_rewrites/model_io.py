"""Loading ONNX files (inline or external weights) with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from .errors import ModelLoadError


def load_model(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX model; external data files are resolved relative to the model."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"expected an .onnx file, got a directory: {path}")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except DecodeError as exc:
        raise ModelLoadError(f"{path} is not a valid ONNX model (truncated or not ONNX): {exc}") from None
    except FileNotFoundError as exc:
        raise ModelLoadError(f"external weights of {path} are missing: {exc.filename or exc}") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path} could not be loaded as ONNX: {exc}") from None
    if len(model.graph.node) == 0:
        raise ModelLoadError(f"{path} is not a valid ONNX model: its graph has no nodes")
    return model


#: Protobuf's limit on one serialized message; larger models keep their weights beside the file.
_INLINE_LIMIT = 1_800_000_000


def save_model(model: onnx.ModelProto, path: str | Path) -> None:
    """Save a model; weights go to ``<name>.data`` beside it when they would not fit inline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = model.ByteSize() > _INLINE_LIMIT
    onnx.save(model, str(path), save_as_external_data=external, location=f"{path.name}.data" if external else None)
