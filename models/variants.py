"""Production variants of a plain optimum export, built once into the cache.

    python -m models.variants [--cache DIR] [--variant O2 ...]     # all-MiniLM-L6-v2 and the tiny decoders

Each variant of a plain export directory (``model.onnx`` + tokenizer + config) is written to
``<cache>/onnx/variants/<model>/<variant>/`` with the same tokenizer and config:

- ``O1``..``O4``: optimum's ``ORTOptimizer`` with ``AutoOptimizationConfig.with_optimization_level``
  (onnxruntime's transformer optimizer underneath). O1: basic graph optimizations only (constant
  folding, redundant nodes; no fusion). O2: + transformer fusions (com.microsoft Attention with
  packed QKV and a mask index, SkipLayerNormalization, BiasGelu; SimplifiedLayerNormalization for
  RMSNorm). O3: O2 + GELU approximation (FastGelu; this changes the model's numbers). O4: O3 in
  float16 (optimum marks it for GPU; onnxruntime's CPU provider runs it too).
- ``fp16``: the plain export converted with ``onnxruntime.transformers.float16.convert_float_to_float16``
  (inputs and outputs kept float32/int64), so half precision is measured without the GELU approximation.
- ``int8``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, uint8 dynamic activations).
- ``dynamo``: ``torch.onnx.export(..., dynamo=True)`` of the Hugging Face model (opset 18);
  ``dynamo23``: the same at opset 23, where scaled-dot-product attention becomes the ONNX Attention op.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from models.cache import cache_dir as _cache_dir

__all__ = ["OPTIMIZED", "VARIANTS", "build_variant", "minilm_variant", "decoder_variant", "main"]

OPTIMIZED = ("O1", "O2", "O3", "O4")
VARIANTS = OPTIMIZED + ("fp16", "int8", "dynamo", "dynamo23")
_SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
               "generation_config.json")


def build_variant(source: str | Path, variant: str, out_dir: str | Path, hf_dir: str | Path | None = None) -> Path:
    """``out_dir``/model.onnx: ``variant`` of the plain export in ``source`` (built once; ``hf_dir``
    is the Hugging Face model the dynamo variants export)."""
    source, out_dir = Path(source), Path(out_dir)
    if (out_dir / "model.onnx").is_file():
        return out_dir
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        work = Path(tmp) / "out"
        work.mkdir()
        if variant in OPTIMIZED:
            _optimize(source, variant, work)
        elif variant == "fp16":
            _half(source / "model.onnx", work / "model.onnx")
        elif variant == "int8":
            _quantize(source / "model.onnx", work / "model.onnx")
        else:
            if hf_dir is None:
                raise ValueError(f"variant {variant!r} exports from the Hugging Face model: pass hf_dir")
            _dynamo(Path(hf_dir), work, opset=23 if variant == "dynamo23" else 18)
        for name in _SIDE_FILES:
            if (source / name).is_file() and not (work / name).exists():
                shutil.copy(source / name, work / name)
        shutil.rmtree(out_dir, ignore_errors=True)
        work.rename(out_dir)
    return out_dir


def _optimize(source: Path, level: str, out: Path) -> None:
    from optimum.onnxruntime import AutoOptimizationConfig, ORTOptimizer

    optimizer = ORTOptimizer.from_pretrained(source, file_names=["model.onnx"])
    optimizer.optimize(save_dir=out, optimization_config=AutoOptimizationConfig.with_optimization_level(level))
    (out / "model_optimized.onnx").rename(out / "model.onnx")


def _half(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))


def _quantize(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)


def _dynamo(hf_dir: Path, out: Path, opset: int) -> None:
    """torch.onnx.export(dynamo=True) of the model's plain forward: the optimum export's inputs and
    first output (``last_hidden_state`` or ``logits``), dynamic batch and sequence, weights inline."""
    import json
    import warnings

    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    config = json.loads((hf_dir / "config.json").read_text())
    decoder = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures", []))
    loader = AutoModelForCausalLM if decoder else AutoModel
    model = loader.from_pretrained(str(hf_dir), attn_implementation="sdpa" if opset >= 23 else "eager").eval()
    names = ["input_ids", "attention_mask"] + ([] if decoder or config.get("model_type") not in ("bert",) else ["token_type_ids"])
    output = "logits" if decoder else "last_hidden_state"

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            if decoder:
                kwargs["use_cache"] = False
            return getattr(self.model(**kwargs), output)

    ids = torch.tensor([[2, 3, 4, 5, 6, 7], [2, 3, 4, 5, 1, 1]])
    args = (ids, torch.ones_like(ids)) + ((torch.zeros_like(ids),) if len(names) == 3 else ())
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: seq} for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Plain(), args, str(out / "model.onnx"), input_names=names, output_names=[output], dynamo=True,
            dynamic_shapes=shapes, opset_version=opset, external_data=False, optimize=True,
        )
    for name in _SIDE_FILES:
        if (hf_dir / name).is_file():
            shutil.copy(hf_dir / name, out / name)


def minilm_variant(variant: str, cache_dir: str | Path | None = None) -> Path:
    """``variant`` of all-MiniLM-L6-v2 (the plain export from models.minilm)."""
    from models.minilm import build_minilm, hf_minilm_dir

    root = _cache_dir(cache_dir)
    out = root / "onnx" / "variants" / "all-minilm-l6-v2" / variant
    hf_dir = hf_minilm_dir(root) if variant.startswith("dynamo") else None
    return build_variant(build_minilm(root), variant, out, hf_dir)


def decoder_variant(arch: str, source: str | Path, variant: str, cache_dir: str | Path | None = None) -> Path:
    """``variant`` of the tiny decoder ``arch`` whose plain export is ``source`` (tests/fixtures/tiny-<arch>);
    the dynamo variants rebuild its seeded Hugging Face model with models.tiny."""
    root = _cache_dir(cache_dir)
    out = root / "onnx" / "variants" / f"tiny-{arch}" / variant
    if (out / "model.onnx").is_file() or not variant.startswith("dynamo"):
        return build_variant(source, variant, out)
    from models.tiny import build_tiny_decoder

    with tempfile.TemporaryDirectory() as tmp:
        return build_variant(source, variant, out, build_tiny_decoder(arch, Path(tmp) / "hf"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Build optimized, fp16, int8 and dynamo variants into the cache.")
    ap.add_argument("--cache", default=None, help="cache dir (default: $ALTI_ONNX_CACHE or ~/.cache/alti-onnx)")
    ap.add_argument("--variant", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    args = ap.parse_args(argv)
    fixtures = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
    for variant in args.variant:
        print(minilm_variant(variant, args.cache))
        for arch in ("gpt2", "llama"):
            print(decoder_variant(arch, fixtures / f"tiny-{arch}", variant, args.cache))


if __name__ == "__main__":
    main()
