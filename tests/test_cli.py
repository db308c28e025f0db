"""The ``alti-onnx`` commands print and write what the Python API computes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from alti_onnx import Explainer
from alti_onnx.cli.app import app

FIXTURES = Path(__file__).parent / "fixtures"
BERT = FIXTURES / "tiny-bert"
TEXTS = json.loads((BERT / "texts.json").read_text())
ROW = re.compile(r"^\s*│\s*(\d+)\s*│\s*(.*?)\s*│\s*(-?\d+\.\d{4})\s*│")
JSON_KEYS = {"record_version", "layout", "tokens", "input_ids", "contributions", "rollout", "target", "attribution",
             "reconstruction_error"}

runner = CliRunner()


def invoke(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args], env={"NO_COLOR": "1"})
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result.stdout


def table_rows(output: str) -> list[tuple[int, str, float]]:
    """(position, token, attribution) for every row of the explain table."""
    return [(int(m[1]), m[2], float(m[3])) for m in map(ROW.match, output.splitlines()) if m]


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(BERT)


@pytest.mark.parametrize("text", [TEXTS[0], TEXTS[2], "[/b] brackets [red] are not markup"])
def test_explain_prints_every_token_with_its_attribution(text: str, explainer: Explainer) -> None:
    explanation = explainer.explain(text)
    output = invoke("explain", BERT, "--text", text)
    rows = table_rows(output)
    assert [r[0] for r in rows] == list(range(len(explanation.tokens)))
    assert [r[1] for r in rows] == explanation.tokens
    np.testing.assert_allclose([r[2] for r in rows], explanation.attribution(0), atol=5.1e-5, rtol=0)
    assert "ALTI attribution to position 0 ('[CLS]')" in output
    assert f"over {explanation.num_layers} layers" in output


def test_target_changes_the_row(explainer: Explainer) -> None:
    text = TEXTS[1]
    explanation = explainer.explain(text)
    target = 4
    default = [r[2] for r in table_rows(invoke("explain", BERT, "--text", text))]
    output = invoke("explain", BERT, "--text", text, "--target", target)
    rows = table_rows(output)
    assert f"ALTI attribution to position {target} ({explanation.tokens[target]!r})" in output
    assert [r[1] for r in rows] == explanation.tokens
    np.testing.assert_allclose([r[2] for r in rows], explanation.attribution(target), atol=5.1e-5, rtol=0)
    assert not np.allclose([r[2] for r in rows], default, atol=1e-3)


@pytest.mark.parametrize("target", [None, 2, -1])
def test_json_holds_the_full_explanation(target: int | None, explainer: Explainer, tmp_path: Path) -> None:
    text = TEXTS[0]
    path = tmp_path / "explanation.json"
    extra = [] if target is None else ["--target", target]
    output = invoke("explain", BERT, "--text", text, "--json", path, *extra)
    assert f"wrote {path}" in output
    data = json.loads(path.read_text())
    assert set(data) == JSON_KEYS

    explanation = explainer.explain(text)
    expected_target = 0 if target is None else target
    assert data["tokens"] == explanation.tokens
    assert data["input_ids"] == explanation.input_ids
    assert data["target"] == expected_target
    np.testing.assert_allclose(data["contributions"], explanation.contributions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(data["rollout"], explanation.rollout, rtol=0, atol=1e-12)
    np.testing.assert_allclose(data["attribution"], explanation.attribution(expected_target), rtol=0, atol=1e-12)
    np.testing.assert_allclose(data["reconstruction_error"], explanation.reconstruction_error, rtol=0, atol=1e-12)
    assert data["attribution"] == data["rollout"][-1][expected_target]

    reference = np.load(BERT / "expected.npz")
    assert data["input_ids"] == reference["input_ids_0"].tolist()
    np.testing.assert_allclose(data["contributions"], reference["contributions_0"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(data["rollout"], reference["rollout_0"], rtol=0, atol=1e-4)


def test_inspect_json() -> None:
    found = json.loads(invoke("inspect", BERT, "--json"))
    blocks = found["blocks"]
    assert found["unmatched_softmax"] == []
    assert len(blocks) == 2
    assert [b["layer"] for b in blocks] == [0, 1]
    for block in blocks:
        assert block["num_heads"] == 4
        assert block["head_size"] == 8
        assert block["hidden_size"] == 32
        assert block["kind"] == "post"


def test_inspect_table() -> None:
    output = invoke("inspect", BERT / "model.onnx")
    assert "2 attention blocks in" in output
    assert [line.split("│")[5].strip() for line in output.splitlines() if line.startswith("│ ")] == ["post", "post"]


def _feeds(session: ort.InferenceSession, explainer: Explainer, text: str) -> dict[str, np.ndarray]:
    batch = explainer.text_encoder.encode([text])
    available = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "token_type_ids": batch.token_type_ids}
    return {i.name: available[i.name] for i in session.get_inputs()}


def test_instrument_appends_block_tensors_after_the_original_outputs(explainer: Explainer, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "instrumented.onnx"
    output = invoke("instrument", BERT, path)
    assert f"wrote {path}: 2 blocks" in output

    original = onnx.load(str(BERT / "model.onnx"))
    instrumented = onnx.load(str(path))
    original_names = [o.name for o in original.graph.output]
    names = [o.name for o in instrumented.graph.output]
    assert names[: len(original_names)] == original_names
    extra = names[len(original_names) :]
    expected_extra = list(dict.fromkeys(n for b in explainer.blocks for n in b.tensor_names() if n not in original_names))
    assert extra == expected_extra and len(extra) >= 2 * 4

    plain = ort.InferenceSession(str(BERT / "model.onnx"), providers=["CPUExecutionProvider"])
    exposed = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _feeds(plain, explainer, TEXTS[1])
    before = plain.run(None, feeds)
    after = exposed.run(None, feeds)
    assert len(after) == len(names)
    for name, a, b in zip(original_names, before, after):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=name)


def test_export_missing_directory_is_a_one_line_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", str(tmp_path / "no-such-model"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: model directory not found: {tmp_path / 'no-such-model'}"]
    assert not (tmp_path / "out").exists()


def test_inspect_lists_every_softmax_that_is_not_a_block(tmp_path: Path) -> None:
    """A model whose second layer is broken after its Softmax: inspect shows the block it found, the
    Softmax it could not read (looks like attention: yes) and says that explain refuses the model."""
    from block_graphs import encoder_graph

    path = tmp_path / "broken.onnx"
    onnx.save(encoder_graph(broken_layer=1)[0], str(path))
    output = invoke("inspect", path)
    assert "1 attention blocks in" in output and "1 Softmax nodes that are not attention blocks" in output
    assert "probs x values" in output and "explain refuses this model" in output
    found = json.loads(invoke("inspect", path, "--json"))
    assert len(found["blocks"]) == 1
    (miss,) = found["unmatched_softmax"]
    assert miss["attention_like"] and miss["step"] == "probs x values" and miss["node"].startswith("Softmax node")

    result = runner.invoke(app, ["explain", str(path), "--text", "the cat"])
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {miss['node']} looks like attention") and "step 'probs x values' failed" in line


def test_input_map_reaches_the_explainer() -> None:
    flax = FIXTURES / "tiny-flax-mha"
    output = invoke("explain", flax, "--text", TEXTS[1], "--input-map", "in_0=ids", "--input-map", "in_1=mask")
    want = Explainer(flax, input_map={"in_0": "ids", "in_1": "mask"}).explain(TEXTS[1]).attribution()
    assert [a for _, _, a in table_rows(output)] == pytest.approx(want.tolist(), abs=5e-5)
    result = runner.invoke(app, ["explain", str(flax), "--text", TEXTS[1], "--input-map", "in_0"])
    assert result.exit_code == 2 and result.stderr.splitlines() == [
        "error: --input-map expects NAME=ROLE (roles: ids, mask, segment, positions), got 'in_0'"
    ]


def test_cli_default_tolerance_is_the_explainers() -> None:
    from alti_onnx.cli.app import DEFAULT_TOLERANCE
    from alti_onnx.explainer import DEFAULT_SELF_CHECK_TOLERANCE

    assert DEFAULT_TOLERANCE == DEFAULT_SELF_CHECK_TOLERANCE
