"""Decoders (causal): every committed tiny decoder fixture's blocks (their kind and grouped key/value
heads), causality, the next-token target and prediction, and the refusal of a merged KV-cache
export (their match with the float64 reference is in test_fixtures.py). No torch needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from alti_onnx import Explainer
from fixture_cases import DECODERS, FIXTURES, TOLERANCE, block_kind, load_expected
from alti_onnx.cli.app import app
from graph_rewrites import KVCacheExportError, find_attention_blocks, load_model
from models.families import key_value_heads


def kv_heads(arch: str) -> int:
    """Key/value heads of the fixture's model, from its config (4 query heads everywhere)."""
    return key_value_heads(json.loads((FIXTURES / f"tiny-{arch}" / "config.json").read_text()))


@pytest.fixture(scope="module", params=DECODERS)
def case(request):
    arch = request.param
    return arch, Explainer(FIXTURES / f"tiny-{arch}"), *load_expected(arch)


def plain_logits(explainer: Explainer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The original model.onnx's logits for the padded batch, and the attention mask."""
    batch = explainer.text_encoder.encode(texts)
    feeds = explainer.session.inputs.feeds(batch)
    session = ort.InferenceSession(str(explainer.files.onnx), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], feeds)
    return logits, batch.attention_mask


def test_blocks_are_of_the_familys_kind_with_grouped_values(case):
    arch, explainer, texts, _ = case
    assert [(b.layer, b.num_heads, b.head_size, b.hidden_size, b.kind) for b in explainer.blocks] == [
        (layer, 4, 8, 32, block_kind(arch)) for layer in range(2)
    ]
    batch = explainer.text_encoder.encode(texts[:2])
    _, tensors = explainer.session.run(batch)
    assert tensors[0].values.shape == (2, kv_heads(arch), batch.input_ids.shape[1], 8)


def test_contributions_are_lower_triangular(case):
    _, explainer, texts, _ = case
    for explanation in explainer.explain(texts):
        assert not np.any(np.triu(explanation.contributions, k=1))
        assert not np.any(np.triu(explanation.rollout, k=1))
        np.testing.assert_allclose(explanation.rollout.sum(-1), 1.0, atol=1e-6)


def test_default_target_is_each_texts_last_token(case):
    _, explainer, texts, expected = case
    for explanation, want in zip(explainer.explain(texts), expected):
        last = len(want["input_ids"]) - 1
        assert explanation.default_target == last
        np.testing.assert_allclose(explanation.attribution(), want["rollout"][-1, last], atol=TOLERANCE)
        assert json.loads(explanation.to_json())["target"] == last


def test_next_token_is_the_argmax_of_the_models_own_logits(case):
    _, explainer, texts, _ = case
    logits, mask = plain_logits(explainer, texts)
    for row, explanation in enumerate(explainer.explain(texts)):
        last = int(mask[row].sum()) - 1
        token = explanation.next_token
        assert token.index == int(logits[row, last].argmax())
        shifted = np.exp(logits[row, last].astype(np.float64) - logits[row, last].max())
        assert token.probability == pytest.approx(shifted.max() / shifted.sum(), abs=1e-6)
        assert token.label == explainer.tokenizer.decode([token.index], skip_special_tokens=False)
        assert explanation.prediction is None  # not a sequence classifier
        payload = json.loads(explanation.to_json())
        assert payload["next_token"] == {"id": token.index, "token": token.label, "probability": token.probability}


def test_rewritten_model_keeps_original_outputs(case):
    _, explainer, texts, _ = case
    want, _ = plain_logits(explainer, texts)
    batch = explainer.text_encoder.encode(texts)
    outputs, _ = explainer.session.run(batch)
    np.testing.assert_array_equal(outputs["logits"], want)


def test_cli_reports_next_token_and_last_position(case):
    _, explainer, texts, _ = case
    result = CliRunner().invoke(app, ["explain", str(FIXTURES / f"tiny-{case[0]}"), "--text", texts[0]],
                                env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    token = explainer.explain(texts[0]).next_token
    assert f"next token: {token.label!r} (id {token.index}, probability {token.probability:.4f})" in result.stdout
    assert f"attribution to position {len(explainer.explain(texts[0]).tokens) - 1}" in result.stdout


def test_encoders_keep_target_zero_and_no_next_token():
    explanation = Explainer(FIXTURES / "tiny-bert").explain("the cat sat")
    assert explanation.default_target == 0 and explanation.next_token is None
    assert "next_token" not in json.loads(explanation.to_json())


def merged_cache_export(tmp_path: Path) -> Path:
    """An optimum-style ``decoder_model_merged.onnx``: an If on ``use_cache_branch`` whose branches
    are the decoder graph (both the same here: what matters is where the attention lives)."""
    model = onnx.load(str(FIXTURES / "tiny-llama" / "model.onnx"))
    graph = model.graph

    def branch(name: str) -> onnx.GraphProto:
        body = onnx.helper.make_graph(list(graph.node), name, [], list(graph.output), list(graph.initializer))
        return body

    flag = onnx.helper.make_tensor_value_info("use_cache_branch", onnx.TensorProto.BOOL, [1])
    node = onnx.helper.make_node("If", ["use_cache_branch"], [o.name for o in graph.output],
                                 then_branch=branch("with_past"), else_branch=branch("without_past"))
    merged = onnx.helper.make_graph([node], "merged", list(graph.input) + [flag], list(graph.output))
    merged_model = onnx.helper.make_model(merged, opset_imports=list(model.opset_import))
    folder = tmp_path / "merged"
    folder.mkdir()
    onnx.save(merged_model, str(folder / "decoder_model_merged.onnx"))
    for name in ("tokenizer.json", "config.json"):
        (folder / name).write_bytes((FIXTURES / "tiny-llama" / name).read_bytes())
    return folder


def test_merged_kv_cache_export_is_refused_with_the_export_to_use(tmp_path):
    folder = merged_cache_export(tmp_path)
    with pytest.raises(KVCacheExportError, match="--task text-generation"):
        find_attention_blocks(load_model(folder / "decoder_model_merged.onnx"))
    with pytest.raises(KVCacheExportError):
        Explainer(folder)
    result = CliRunner().invoke(app, ["explain", str(folder), "--text", "the cat sat"], env={"NO_COLOR": "1"})
    assert result.exit_code == 2
    assert "KV-cache" in result.output and "--task text-generation" in result.output
    assert "Traceback" not in result.output
