"""tiny-bert-int8-weights: the tiny BERT with weight-only int8 linear layers, exported by
``torch.onnx.export`` (needs the ``export`` extra).

    python -m models.int8_weights [--out tests/fixtures]

Every linear layer of the encoder keeps its weight as int8 with one float scale per output row and
computes ``x @ (Cast(W_int8) * scale)^T + b`` in float: the export stores the int8 tensor and the
``Cast -> Mul(scale) -> Transpose`` that dequantizes it in the graph, so W_O is a constant
subgraph, not an initializer. Activations stay float, so the decomposition is exact: the reference
is the float64 PyTorch reference (``models.reference``) on the same model with the dequantized
weights written back as float.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from models.cache import building
from models.tiny import TEXTS, build_tiny_hf_model, load_tiny_model, record_expected

NAME = "tiny-bert-int8-weights"
SEED = 31


def _weight_only_int8(linear):
    """A module computing ``linear`` with its weight rounded to int8 per output row."""
    import torch
    from torch import nn

    class WeightOnlyInt8Linear(nn.Module):
        def __init__(self, source: nn.Linear):
            super().__init__()
            weight = source.weight.detach()
            scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
            self.register_buffer("weight_int8", torch.round(weight / scale).clamp(-127, 127).to(torch.int8))
            self.register_buffer("scale", scale)
            self.bias = source.bias

        def dequantized(self):
            return self.weight_int8.to(self.scale.dtype) * self.scale

        def forward(self, x):
            return nn.functional.linear(x, self.weight_int8.to(x.dtype) * self.scale, self.bias)

    return WeightOnlyInt8Linear(linear)


def quantize_encoder(model) -> None:
    """Replace every nn.Linear of the encoder in place by its weight-only int8 version."""
    from torch import nn

    for name, module in list(model.encoder.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, _weight_only_int8(child))


def dequantized_copy(model, hf_source: Path, out: Path) -> Path:
    """The float model whose linear weights are the int8 model's dequantized ones, saved to ``out``."""
    import torch
    from torch import nn

    reference = load_tiny_model(hf_source)
    quantized = dict(model.encoder.named_modules())
    with torch.no_grad():
        for name, module in reference.encoder.named_modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(quantized[name].dequantized())
    reference.save_pretrained(out, safe_serialization=True)
    for tokenizer_file in hf_source.glob("*token*"):
        (out / tokenizer_file.name).write_bytes(tokenizer_file.read_bytes())
    return out


def export(model, path: Path) -> None:
    import torch

    ids = torch.tensor([[2, 10, 11, 3]])
    inputs = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    torch.onnx.export(
        model, inputs, str(path), input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes,
        opset_version=17, dynamo=False, do_constant_folding=False,  # keep Cast(int8) * scale in the graph
    )


def build_fixture(out_root: Path) -> Path:
    import torch

    folder = Path(out_root) / NAME
    with tempfile.TemporaryDirectory() as tmp, building(folder) as partial:
        hf_dir = build_tiny_hf_model("bert", Path(tmp) / "hf", seed=SEED)
        torch.manual_seed(SEED)
        model = load_tiny_model(hf_dir).eval()
        model.config.return_dict = False
        quantize_encoder(model)
        export(model, partial / "model.onnx")
        for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
            (partial / name).write_bytes((hf_dir / name).read_bytes())
        record_expected(partial, dequantized_copy(model, hf_dir, Path(tmp) / "dequantized"), TEXTS)
    return folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures"))
    args = parser.parse_args(argv)
    print(build_fixture(args.out))


if __name__ == "__main__":
    main()
