"""Decoder exports built at test time: a KV-cache export (optimum ``text-generation-with-past``),
explained on the full sequence with an empty past, and a tiny Qwen2 (biases on Q, K and V), both
against the float64 PyTorch reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from alti_onnx import Explainer  # noqa: E402
from alti_onnx.export import export_model  # noqa: E402
from models.reference import reference_alti  # noqa: E402
from models.tiny import build_tiny_decoder, load_tiny_decoder  # noqa: E402

pytestmark = pytest.mark.torch

FIXTURES = Path(__file__).parent / "fixtures"
TEXTS = json.loads((FIXTURES / "tiny-llama" / "texts.json").read_text())
TOLERANCE = 1e-4


def assert_matches_reference(explainer: Explainer, hf_dir: Path) -> None:
    model = load_tiny_decoder(hf_dir)
    wanted = [reference_alti(model, explainer.tokenizer.encode(text).ids) for text in TEXTS]
    singles = [explainer.explain(text) for text in TEXTS]
    for got, want in zip(singles + explainer.explain(TEXTS), wanted + wanted):
        np.testing.assert_allclose(got.contributions, want.contributions, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(got.rollout, want.rollout, atol=TOLERANCE, rtol=0)
        assert got.reconstruction_error.max() < TOLERANCE
        assert got.default_target == len(got.tokens) - 1


@pytest.fixture(scope="module")
def with_past(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("with-past")
    hf_dir = build_tiny_decoder("llama", root / "hf")  # the fixture's seed: the fixture's weights
    return hf_dir, export_model(hf_dir, root / "onnx", task="text-generation-with-past")


def test_kv_cache_export_is_explained_on_the_full_sequence(with_past):
    hf_dir, onnx_dir = with_past
    explainer = Explainer(onnx_dir)
    assert explainer.session.cache_inputs, "the export should take past keys and values"
    assert all(b.kind == "pre" for b in explainer.blocks) and len(explainer.blocks) == 2
    assert_matches_reference(explainer, hf_dir)
    # the same weights as the committed no-cache fixture: the same numbers
    npz = np.load(FIXTURES / "tiny-llama" / "expected.npz")
    np.testing.assert_allclose(explainer.explain(TEXTS[1]).contributions, npz["contributions_1"], atol=TOLERANCE)


def test_kv_cache_export_keeps_its_outputs(with_past):
    _, onnx_dir = with_past
    explainer = Explainer(onnx_dir)
    batch = explainer.text_encoder.encode(TEXTS)
    feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
    feeds.update(explainer.session.empty_cache(len(TEXTS)))
    plain = ort.InferenceSession(str(explainer.files.onnx), providers=["CPUExecutionProvider"])
    names = [o.name for o in plain.get_outputs()]
    want = dict(zip(names, plain.run(names, feeds)))
    outputs, _ = explainer.session.run(batch)
    for name in names:
        np.testing.assert_array_equal(outputs[name], want[name])


def test_qwen2_with_qkv_biases_matches_reference(tmp_path):
    hf_dir = build_tiny_decoder("qwen2", tmp_path / "hf")
    model = load_tiny_decoder(hf_dir)
    assert model.model.layers[0].self_attn.v_proj.bias is not None
    assert model.model.layers[0].self_attn.v_proj.bias.abs().max() > 0.05  # randomized, so the test is sharp
    explainer = Explainer(export_model(hf_dir, tmp_path / "onnx", task="text-generation"))
    assert [(b.num_heads, b.head_size, b.kind, b.out_proj_bias is None) for b in explainer.blocks] == [
        (4, 8, "pre", True)
    ] * 2
    assert_matches_reference(explainer, hf_dir)


def test_soft_capped_attention_is_exported_from_eager(tmp_path):
    """Gemma 2 soft-caps its attention scores (cap * tanh(s / cap)); transformers' SDPA path leaves
    that out, so optimum's default export is another model. ``export_model`` exports from eager
    attention: every Softmax's scores pass a Tanh, and the logits are PyTorch's eager ones, while
    the SDPA export's are not (the tiny model's cap of 2 makes the difference large)."""
    from optimum.exporters.onnx import main_export

    from graph_rewrites.attention import SCORE_OPS

    hf_dir = build_tiny_decoder("gemma2", tmp_path / "hf")
    model = load_tiny_decoder(hf_dir)
    assert model.config.attn_logit_softcapping == 2.0
    ids = np.array([[0, 9, 20, 33, 47, 12, 5]])
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits.numpy()

    def logits(folder: Path) -> np.ndarray:
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        feeds = {i.name: feeds[i.name] for i in session.get_inputs()}
        return session.run(["logits"], feeds)[0]

    eager = export_model(hf_dir, tmp_path / "eager", task="text-generation")
    np.testing.assert_allclose(logits(eager), want, atol=1e-4, rtol=0)
    graph = onnx.load(str(eager / "model.onnx")).graph
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    producers = {o: n for n in graph.node for o in n.output}

    def capped(name: str, depth: int = 0) -> bool:
        node = producers.get(name)
        if node is None or depth > 12:
            return False
        return node.op_type == "Tanh" or (node.op_type in SCORE_OPS and any(capped(i, depth + 1) for i in node.input))

    assert len(softmaxes) == 2 and all(capped(n.input[0]) for n in softmaxes)

    main_export(str(hf_dir), output=tmp_path / "sdpa", task="text-generation", device="cpu")
    assert np.abs(logits(tmp_path / "sdpa") - want).max() > 1e-2  # what the eager export avoids
