"""Reading the files beside a model (config.json, tokenizer_config.json, tokenizer.json) with bounds
and one-line errors: a device, a directory, a huge or corrupt file is refused before it is read."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from alti_onnx.errors import ModelPathError

#: The largest JSON side file read (config.json, tokenizer_config.json).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: The largest tokenizer.json read (real ones are a few MB; the largest vocabularies tens of MB).
MAX_TOKENIZER_BYTES = 1024 * 1024 * 1024


def require_regular(path: Path, what: str, max_bytes: int | None = None) -> None:
    """``path`` is a regular file of at most ``max_bytes`` (not a device, a pipe, a directory)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelPathError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ModelPathError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelPathError(f"{what} {path} is not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise ModelPathError(f"{what} {path} is {info.st_size:,} bytes, more than the {max_bytes:,} read")


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from a side file; a file that is not one is a ModelPathError naming it."""
    require_regular(path, what, MAX_CONFIG_BYTES)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelPathError(f"{what} {path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ModelPathError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ModelPathError(f"{what} {path} holds JSON but not an object")
    return value
