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
    assert all(b.norm_placement == "pre" for b in explainer.blocks) and len(explainer.blocks) == 2
    assert_matches_reference(explainer, hf_dir)
    # the same weights as the committed no-cache fixture: the same numbers
    npz = np.load(FIXTURES / "tiny-llama" / "expected.npz")
    np.testing.assert_allclose(explainer.explain(TEXTS[1]).contributions, npz["contributions_1"], atol=TOLERANCE)


def test_kv_cache_export_keeps_its_outputs(with_past):
    _, onnx_dir = with_past
    explainer = Explainer(onnx_dir)
    batch = explainer.encoder.encode(TEXTS)
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
    assert [(b.num_heads, b.head_size, b.norm_placement, b.out_proj_bias is None) for b in explainer.blocks] == [
        (4, 8, "pre", True)
    ] * 2
    assert_matches_reference(explainer, hf_dir)
