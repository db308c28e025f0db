"""A model small enough to travel to the GPU machine (scripts/device-check.sh): at most 64 MiB of files
go there, and MiniLM's float32 export (87 MB) does not fit. ``pack`` writes the graph without its
weights and the weights as float16 (44 MB for MiniLM); ``unpack`` upcasts them to float32 on arrival
and writes a float32 model of the same graph. The unpacked model is the original with its weights
rounded to float16: another model, as fast as the original, explained as exactly (its self-check
is its own); the device check times it and checks it, and compares nothing with the original.

    python -m models.device_pack pack MODEL_DIR OUT_DIR
    python -m models.device_pack unpack OUT_DIR MODEL_DIR
    python -m models.device_pack shaped CONFIG_DIR MODEL_DIR

``shaped`` builds a model of a config's shape with random weights (SmolLM2's 135M float16 weights do
not travel either) and exports it with the machine's own PyTorch and transformers: for timings only.

Besides the graph and ``weights.npz``, every small file of the export (tokenizer, configs) is copied.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

GRAPH = "graph.onnx"
WEIGHTS = "weights.npz"
#: Files beside model.onnx that travel as they are (the tokenizer and configs), up to this size each.
SMALL_FILE = 4 << 20


def pack(model_dir: Path, out_dir: Path) -> int:
    """The export in ``model_dir`` as a weightless graph, float16 weights and its small files; returns
    the bytes written."""
    model = onnx.load(str(model_dir / "model.onnx"))
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {}
    for index, tensor in enumerate(model.graph.initializer):
        array = numpy_helper.to_array(tensor)
        # scalars (epsilons, scales) stay exact, and so does a tensor float16 cannot hold (|x| > 65504)
        if array.dtype == np.float32 and array.size > 1 and np.all(np.abs(array) <= np.finfo(np.float16).max):
            weights[str(index)] = array.astype(np.float16)
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
    np.savez(out_dir / WEIGHTS, **weights)
    onnx.save(model, str(out_dir / GRAPH))
    for path in model_dir.iterdir():
        if path.is_file() and path.suffix != ".onnx" and path.stat().st_size <= SMALL_FILE and path.name != ".lock":
            shutil.copy2(path, out_dir / path.name)
    return sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())


def unpack(packed: Path, model_dir: Path) -> Path:
    """The packed model as a float32 export in ``model_dir`` (weights upcast from float16)."""
    model = onnx.load(str(packed / GRAPH))
    with np.load(packed / WEIGHTS) as weights:
        for key in weights.files:
            tensor = model.graph.initializer[int(key)]
            tensor.CopyFrom(numpy_helper.from_array(weights[key].astype(np.float32), tensor.name))
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(model_dir / "model.onnx"))
    for path in packed.iterdir():
        if path.is_file() and path.name not in (GRAPH, WEIGHTS):
            shutil.copy2(path, model_dir / path.name)
    return model_dir


def shaped(config_dir: Path, model_dir: Path, seed: int = 0) -> Path:
    """A causal language model of ``config_dir``'s config.json with random weights, exported to
    ``model_dir`` (one full sequence, no KV cache) beside the config's tokenizer files."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.AutoConfig.from_pretrained(config_dir)
    config.use_cache = False
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    ids = torch.ones((1, 8), dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch", 1: "sequence"}}

    class Logits(torch.nn.Module):  # the logits alone, as a tensor (not the model's output object)
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    with torch.no_grad():
        # the dynamo exporter (onnxscript): transformers' masks defeat the TorchScript tracer of recent PyTorch
        torch.onnx.export(Logits(model), (ids, torch.ones_like(ids)), str(model_dir / "model.onnx"),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"], dynamic_axes=axes,
                          opset_version=18, dynamo=True, external_data=False)
    for path in config_dir.iterdir():
        if path.is_file() and path.suffix != ".onnx" and path.stat().st_size <= SMALL_FILE:
            shutil.copy2(path, model_dir / path.name)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.device_pack", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["pack", "unpack", "shaped"])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    if args.step == "pack":
        size = pack(args.source, args.destination)
        print(f"packed {args.source} into {args.destination}: {size / 2**20:.1f} MiB")
    elif args.step == "unpack":
        print(f"unpacked {unpack(args.source, args.destination)}")
    else:
        print(f"exported a model of {args.source}'s shape with random weights to {shaped(args.source, args.destination)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
