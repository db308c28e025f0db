"""Where the model recipes keep downloads and builds."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from alti_onnx.defaults import cache_root


def cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else the package's cache root (``$ALTI_ONNX_CACHE``, else
    ``~/.cache/alti-onnx``), created."""
    path = Path(cache_dir).expanduser() if cache_dir is not None else cache_root()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def building(folder: Path) -> Iterator[Path]:
    """An empty ``<folder>.partial`` to build in, which replaces ``folder`` only when the block
    finishes: an interrupted build never leaves a half-written folder where a finished one is
    looked for."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    yield partial
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


@contextlib.contextmanager
def build_lock(path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (fcntl; a no-op where that is missing), so that two
    processes asking for the same build at once do not both write into the same folders."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
