"""The structural rewrite on export variants other than the committed optimum fixtures.

* plain ``torch.onnx.export(..., dynamo=False)`` (TorchScript exporter) files at opsets 14-18:
  LayerNorm is one ``LayerNormalization`` op from opset 17 and a ReduceMean/Sub/Pow/... chain below;
* models whose weights sit in an external data file: ``onnx.save(..., save_as_external_data=True)``
  copies of the optimum fixture and of a TorchScript export, and torch's own external-data output
  (the dynamo exporter writes ``model.onnx.data``);
* a missing external data file is a ``ModelLoadError`` naming the file.

Every variant is checked on values: blocks and their parameters against the Hugging Face modules,
contributions and rollout against the float64 PyTorch reference (single texts and one padded
batch), the self-check error, and the instrumented graph's original outputs against the original
graph's, bit for bit. The tiny models are rebuilt with the fixtures' seeds, so their tokenizers and
weights are the fixtures' ones.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import graph_rewrites  # noqa: E402
from alti_onnx import Explainer  # noqa: E402
from alti_onnx.errors import AltiOnnxError  # noqa: E402
from models.reference import reference_alti  # noqa: E402
from models.tiny import build_tiny_hf_model, load_tiny_model  # noqa: E402

pytestmark = pytest.mark.torch

FIXTURES = Path(__file__).parent / "fixtures"
ARCHS = ("bert", "roberta", "distilbert")
OPSETS = (14, 15, 16, 17, 18)
FUSED_NORM_OPSET = 17  # LayerNormalization exists from opset 17
TEXTS = tuple(json.loads((FIXTURES / "tiny-bert" / "texts.json").read_text())[:2])  # 5 and 12 tokens
N_LAYERS = 2
TOL = 1e-4


# --------------------------------------------------------------------------- model building
@dataclass
class TinyModel:
    """One tiny HF model: its directory, a float32 copy for exporting, and its reference ALTI."""

    arch: str
    hf_dir: Path
    torch_model: torch.nn.Module
    input_names: tuple[str, ...]
    reference: dict[str, tuple[np.ndarray, np.ndarray, list[int]]]  # text -> (C, R, ids)


def _input_names(arch: str) -> tuple[str, ...]:
    """The same inputs as the optimum fixture of ``arch`` (only BERT takes token_type_ids there)."""
    return ("input_ids", "attention_mask", "token_type_ids") if arch == "bert" else ("input_ids", "attention_mask")


class Cache:
    """Builds tiny models and exports on first use; shared by the whole module."""

    def __init__(self, root: Path):
        self.root = root
        self.models: dict[str, TinyModel] = {}
        self.exports: dict[tuple, Path] = {}
        self.explainers: dict[Path, Explainer] = {}

    def model(self, arch: str) -> TinyModel:
        if arch not in self.models:
            from tokenizers import Tokenizer

            hf_dir = build_tiny_hf_model(arch, self.root / f"hf-{arch}")
            tok = Tokenizer.from_file(str(FIXTURES / f"tiny-{arch}" / "tokenizer.json"))
            reference_model = load_tiny_model(hf_dir)  # converted to float64 in place by reference_alti
            reference = {}
            for text in TEXTS:
                enc = tok.encode(text)
                res = reference_alti(reference_model, enc.ids, token_type_ids=enc.type_ids)
                reference[text] = (res.contributions, res.rollout, list(enc.ids))
            torch_model = load_tiny_model(hf_dir).eval()
            torch_model.config.return_dict = False  # plain tuples trace cleanly
            self.models[arch] = TinyModel(arch, hf_dir, torch_model, _input_names(arch), reference)
        return self.models[arch]

    def torchscript_export(self, arch: str, opset: int) -> Path:
        """``torch.onnx.export(dynamo=False)`` with dynamic batch and sequence axes, plus the tokenizer."""
        key = ("torchscript", arch, opset)
        if key not in self.exports:
            tiny = self.model(arch)
            out = self._fresh_dir(f"ts-{arch}-{opset}", arch)
            ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 14, 15, 3, 0, 0]])
            feeds = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
            axes = {name: {0: "batch", 1: "sequence"} for name in tiny.input_names}
            outputs = ["last_hidden_state"] + (["pooler_output"] if arch != "distilbert" else [])
            axes.update({"last_hidden_state": {0: "batch", 1: "sequence"}, "pooler_output": {0: "batch"}})
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    tiny.torch_model,
                    tuple(feeds[name] for name in tiny.input_names),  # the forward's first positional args
                    str(out / "model.onnx"),
                    input_names=list(tiny.input_names),
                    output_names=outputs,
                    dynamic_axes={k: v for k, v in axes.items() if k in tiny.input_names or k in outputs},
                    opset_version=opset,
                    dynamo=False,
                )
            self.exports[key] = out
        return self.exports[key]

    def dynamo_external_export(self, arch: str) -> Path:
        """torch's own external-data output: the dynamo exporter with ``external_data=True``."""
        key = ("dynamo", arch)
        if key not in self.exports:
            tiny = self.model(arch)
            out = self._fresh_dir(f"dynamo-{arch}", arch)
            ids = torch.tensor([[2, 10, 11, 12, 13, 3], [2, 14, 15, 3, 0, 0]])
            feeds = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", min=2, max=60)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    tiny.torch_model,
                    (),
                    str(out / "model.onnx"),
                    kwargs={name: feeds[name] for name in tiny.input_names},
                    input_names=list(tiny.input_names),
                    dynamic_shapes={name: {0: batch, 1: sequence} for name in tiny.input_names},
                    opset_version=18,
                    dynamo=True,
                    external_data=True,
                    verbose=False,
                )
            self.exports[key] = out
        return self.exports[key]

    def external_copy(self, source: Path, name: str) -> Path:
        """A copy of ``source`` (a model directory) with every weight in ``model.onnx.data``."""
        key = ("external", name)
        if key not in self.exports:
            out = self.root / f"external-{name}"
            out.mkdir()
            for item in source.iterdir():
                if item.is_file() and item.suffix != ".onnx" and not item.name.endswith(".data"):
                    shutil.copy(item, out / item.name)
            model = onnx.load(str(source / "model.onnx"))
            onnx.save(
                model,
                str(out / "model.onnx"),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location="model.onnx.data",
                size_threshold=0,
            )
            self.exports[key] = out
        return self.exports[key]

    def explainer(self, model_dir: Path) -> Explainer:
        if model_dir not in self.explainers:
            self.explainers[model_dir] = Explainer(model_dir, tokenizer=model_dir / "tokenizer.json")
        return self.explainers[model_dir]

    def _fresh_dir(self, name: str, arch: str) -> Path:
        out = self.root / name
        out.mkdir()
        shutil.copy(FIXTURES / f"tiny-{arch}" / "tokenizer.json", out / "tokenizer.json")
        return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Cache:
    return Cache(tmp_path_factory.mktemp("export-variants"))


# --------------------------------------------------------------------------- the checks
def _torch_layers(tiny: TinyModel):
    """(W_O module, attention LayerNorm module) of every layer of the HF model."""
    m = tiny.torch_model
    if tiny.arch == "distilbert":
        return [(layer.attention.out_lin, layer.sa_layer_norm) for layer in m.transformer.layer]
    return [(layer.attention.output.dense, layer.attention.output.LayerNorm) for layer in m.encoder.layer]


def check_blocks(model_dir: Path, tiny: TinyModel, decomposed_norm: bool) -> None:
    """(a) two post-LN blocks whose W_O, b_O, gamma, beta and eps are the HF modules' values."""
    model = graph_rewrites.load_model(model_dir / "model.onnx")
    blocks = graph_rewrites.find_attention_blocks(model)
    assert len(blocks) == N_LAYERS
    op_types = {node.op_type for node in model.graph.node}
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    if decomposed_norm:
        assert "LayerNormalization" not in op_types
        assert {"ReduceMean", "Sqrt", "Div"} <= op_types
    for block, (dense, norm) in zip(blocks, _torch_layers(tiny)):
        assert block.kind == "post"
        assert block.num_heads == 4 and block.head_size == 8
        if decomposed_norm:  # the block output is the decomposition's last op (the beta Add)
            assert producers[block.output] == "Add"
        np.testing.assert_allclose(block.out_proj_weight, dense.weight.detach().double().numpy().T, rtol=0, atol=1e-7)
        np.testing.assert_allclose(block.out_proj_bias, dense.bias.detach().double().numpy(), rtol=0, atol=1e-7)
        np.testing.assert_allclose(block.norm_weight, norm.weight.detach().double().numpy(), rtol=0, atol=1e-7)
        np.testing.assert_allclose(block.norm_bias, norm.bias.detach().double().numpy(), rtol=0, atol=1e-7)
        assert block.norm_epsilon == pytest.approx(norm.eps, rel=1e-6)


def check_alti(explainer: Explainer, tiny: TinyModel) -> dict[str, float]:
    """(b) and (c): contributions and rollout against the float64 reference, alone and batched."""
    singles = [explainer.explain(text) for text in TEXTS]
    batched = explainer.explain(list(TEXTS))
    worst = {"contributions": 0.0, "rollout": 0.0, "reconstruction": 0.0}
    for text, single, in_batch in zip(TEXTS, singles, batched):
        C, R, ids = tiny.reference[text]
        for explanation in (single, in_batch):
            assert explanation.input_ids == ids
            assert explanation.contributions.shape == C.shape == (N_LAYERS, len(ids), len(ids))
            dc = float(np.abs(explanation.contributions - C).max())
            dr = float(np.abs(explanation.rollout - R).max())
            err = float(np.max(explanation.reconstruction_error))
            assert dc < TOL, f"contributions differ from the reference by {dc:.3g} ({text!r})"
            assert dr < TOL, f"rollout differs from the reference by {dr:.3g} ({text!r})"
            assert err < TOL, f"reconstruction error {err:.3g} ({text!r})"
            worst = {k: max(worst[k], v) for k, v in zip(worst, (dc, dr, err))}
    return worst


def check_outputs_unchanged(model_dir: Path, explainer: Explainer) -> None:
    """(d) the instrumented graph's original outputs equal the original graph's, bit for bit."""
    model = graph_rewrites.load_model(model_dir / "model.onnx")
    blocks = graph_rewrites.find_attention_blocks(model)
    instrumented = graph_rewrites.instrument(model, blocks)
    batch = explainer.text_encoder.encode(list(TEXTS))
    names = {i.name for i in model.graph.input}
    feeds = {
        name: array
        for name, array in (
            ("input_ids", batch.input_ids),
            ("attention_mask", batch.attention_mask),
            ("token_type_ids", batch.token_type_ids),
        )
        if name in names
    }
    assert set(feeds) == names
    originals = [o.name for o in model.graph.output]
    assert [o.name for o in instrumented.graph.output][: len(originals)] == originals
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rewritten = ort.InferenceSession(instrumented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = plain.run(originals, feeds)
    got = rewritten.run(originals, feeds)
    for name, want, have in zip(originals, expected, got):
        np.testing.assert_array_equal(have, want, err_msg=f"output {name} changed by the instrumentation")
    # the Explainer hands the same outputs back, per example
    for row, explanation in enumerate(explainer.explain(list(TEXTS))):
        for name, want in zip(originals, expected):
            np.testing.assert_array_equal(explanation.outputs[name], want[row])


def check_variant(model_dir: Path, tiny: TinyModel, cache: Cache, decomposed_norm: bool) -> dict[str, float]:
    check_blocks(model_dir, tiny, decomposed_norm)
    explainer = cache.explainer(model_dir)
    worst = check_alti(explainer, tiny)
    check_outputs_unchanged(model_dir, explainer)
    print(f"\n{model_dir.name}: max |dC| {worst['contributions']:.2e}, |dR| {worst['rollout']:.2e}, "
          f"reconstruction {worst['reconstruction']:.2e}")
    return worst


# --------------------------------------------------------------------------- TorchScript exports
@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("arch", ARCHS)
def test_torchscript_export(cache, arch, opset):
    tiny = cache.model(arch)
    model_dir = cache.torchscript_export(arch, opset)
    model = onnx.load(str(model_dir / "model.onnx"))
    assert model.opset_import[0].version == opset
    has_fused_norm = any(node.op_type == "LayerNormalization" for node in model.graph.node)
    assert has_fused_norm == (opset >= FUSED_NORM_OPSET)
    check_variant(model_dir, tiny, cache, decomposed_norm=opset < FUSED_NORM_OPSET)


# --------------------------------------------------------------------------- external data
def _assert_weights_outside(model_dir: Path) -> None:
    data = model_dir / "model.onnx.data"
    assert data.is_file() and data.stat().st_size > 0
    inline = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    assert graph_rewrites.model_io.external_data_files(inline) == ["model.onnx.data"]
    largest = max(inline.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    assert largest.data_location == onnx.TensorProto.EXTERNAL and not largest.raw_data


@pytest.mark.parametrize("arch", ARCHS)
def test_external_data_optimum_fixture(cache, arch):
    tiny = cache.model(arch)
    model_dir = cache.external_copy(FIXTURES / f"tiny-{arch}", f"optimum-{arch}")
    _assert_weights_outside(model_dir)
    check_variant(model_dir, tiny, cache, decomposed_norm=False)


@pytest.mark.parametrize("opset", (14, 17))
def test_external_data_torchscript_export(cache, opset):
    tiny = cache.model("bert")
    model_dir = cache.external_copy(cache.torchscript_export("bert", opset), f"torchscript-bert-{opset}")
    _assert_weights_outside(model_dir)
    check_variant(model_dir, tiny, cache, decomposed_norm=opset < FUSED_NORM_OPSET)


def test_external_data_written_by_torch(cache):
    """torch's own external-data file: the TorchScript exporter only writes one above 2 GB, so
    this uses the dynamo exporter, which writes ``model.onnx.data`` whatever the size."""
    tiny = cache.model("bert")
    model_dir = cache.dynamo_external_export("bert")
    if not (model_dir / "model.onnx.data").is_file():
        pytest.skip("this torch version kept the weights inline")
    _assert_weights_outside(model_dir)
    check_variant(model_dir, tiny, cache, decomposed_norm=False)


def test_missing_external_data_is_a_clear_error(cache, tmp_path):
    source = cache.external_copy(FIXTURES / "tiny-bert", "optimum-bert")
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    (broken / "model.onnx.data").unlink()
    with pytest.raises(graph_rewrites.ModelLoadError, match=r"external weights .* missing: expected model\.onnx\.data"):
        graph_rewrites.load_model(broken / "model.onnx")
    with pytest.raises((graph_rewrites.ModelLoadError, AltiOnnxError), match=r"model\.onnx\.data"):
        Explainer(broken)
    # a proto whose external weights were never loaded is refused by name too
    unloaded = onnx.load(str(source / "model.onnx"), load_external_data=False)
    with pytest.raises(graph_rewrites.ModelLoadError, match=r"external data \(model\.onnx\.data\) that was not loaded"):
        graph_rewrites.find_attention_blocks(unloaded)


def test_truncated_external_data_is_a_clear_error(cache, tmp_path):
    source = cache.external_copy(FIXTURES / "tiny-bert", "optimum-bert")
    broken = tmp_path / "truncated"
    shutil.copytree(source, broken)
    data = broken / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(graph_rewrites.ModelLoadError, match=r"external weights .* could not be read \(model\.onnx\.data\)"):
        graph_rewrites.load_model(broken / "model.onnx")
