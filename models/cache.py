"""Where the model recipes keep downloads and builds."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
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


def exported(root: Path, name: str, hf_dir: Path, task: str, library: str | None = None) -> Path:
    """``<root>/onnx/<name>``: the project's own export (``alti_onnx.export``) of the Hugging Face
    model in ``hf_dir``, built once, under a lock, through a partial folder."""
    from alti_onnx.export import export_model

    onnx_dir = root / "onnx" / name
    if (onnx_dir / "model.onnx").is_file() and (onnx_dir / "tokenizer.json").is_file():
        return onnx_dir
    with build_lock(root / "locks" / f"{name}-onnx.lock"):
        if not (onnx_dir / "model.onnx").is_file():
            with building(onnx_dir) as tmp:
                export_model(hf_dir, tmp, task=task, library=library)
    return onnx_dir


def dequantized_gguf(gguf: Path, hf_dir: Path, root: Path) -> Path:
    """``hf_dir``: a GGUF file's model dequantized to float32 by transformers (needs ``gguf``), saved
    as safetensors with its tokenizer, built once. The ONNX export and the reference then share
    exactly the same float32 weights."""
    if (hf_dir / "config.json").is_file() and (hf_dir / "tokenizer.json").is_file():
        return hf_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with build_lock(root / "locks" / f"{hf_dir.name}.lock"):
        if not (hf_dir / "config.json").is_file():
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            with building(hf_dir) as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)
    return hf_dir


def load_eager(hf_dir: Path, model_class: str = "AutoModelForCausalLM"):
    """A saved float32 PyTorch model with eager attention (what the reference needs)."""
    import transformers

    return getattr(transformers, model_class).from_pretrained(str(hf_dir), attn_implementation="eager")


def pip_download(requirement: str, destination: Path, *options: str) -> None:
    """``pip download --no-deps`` of one requirement into ``destination``, its output kept to itself
    (index lines are noise on a first run) and shown only when it fails."""
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", *options, requirement,
                           "-d", str(destination)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()
        raise RuntimeError(f"pip download {requirement} failed:\n" + "\n".join(output[-20:]))
