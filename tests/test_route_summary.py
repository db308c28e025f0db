"""Which components a corpus relies on (``batch --routes``, alti_onnx/corpus/route_summary.py): the
summary by hand, and batch's records and summary against the API's routes of the same texts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alti_onnx.corpus.route_summary import read_output_records, summarize_routes
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.fixture_cases import FIXTURES


def _edge(layer, kind, head, weight, source=0, target=1):
    return {"layer": layer, "kind": kind, "head": head, "source": None if kind == "ffn" else source,
            "target": target, "weight": weight}


def test_the_summary_by_hand():
    records = [
        {"routes": {"threshold": 0.04, "edges": [_edge(0, "attention", 1, 0.5), _edge(0, "attention", 1, 0.25, 1),
                                                  _edge(1, "ffn", None, 0.6), _edge(1, "ffn_residual", None, 0.4)]}},
        {"index": 1, "error": "line 2: empty"},  # no routes: not a text of the summary
        {"routes": {"threshold": 0.04, "edges": [_edge(1, "attention", 0, 0.1), _edge(1, "attention_residual", None, 0.9)]}},
    ]
    summary = summarize_routes(records, layers=2, heads=2)
    assert summary.texts == 2 and summary.threshold == 0.04
    np.testing.assert_allclose(summary.head_share, [[0.0, 0.5], [0.5, 0.0]])  # head (0, 1) in one text of two
    np.testing.assert_allclose(summary.head_weight, [[0.0, 0.375], [0.05, 0.0]])  # (0.5 + 0.25) / 2 texts
    np.testing.assert_allclose(summary.ffn_share, [0.0, 0.5])
    np.testing.assert_allclose(summary.ffn_weight, [0.0, 0.3])
    assert summary.top_components(2) == [("layer 0 head 1", 0.5, 0.375), ("layer 1 ffn", 0.5, 0.3)]
    with pytest.raises(ValueError, match="neither routes nor an error"):  # a record of a run without --routes
        summarize_routes([*records, {"index": 3, "tokens": ["a"]}], layers=2, heads=2)
    with pytest.raises(ValueError, match="pruned differently"):
        summarize_routes([*records, {"routes": {"threshold": 0.1, "edges": []}}], layers=2, heads=2)
    with pytest.raises(ValueError, match="head 5"):
        summarize_routes([{"routes": {"edges": [_edge(0, "attention", 5, 0.5)]}}], layers=2, heads=2)


def test_batch_routes_equal_the_apis_and_resume(tmp_path):
    from alti_onnx import Explainer
    from alti_onnx.results.routes import RouteQuery

    texts = ["the quick brown fox", "a dog", "the cat sat on the mat", "over the lazy dog"]
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text("".join(json.dumps(t) + "\n" for t in texts))
    out = tmp_path / "out.jsonl"
    result = run_cli("batch", FIXTURES / "tiny-llama", "--input", corpus, "--output", out, "--routes", "--renormalize",
                     "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    records = list(read_output_records(out))
    with Explainer(FIXTURES / "tiny-llama") as explainer:
        want = [r.to_dict() for r in explainer.routes(texts, RouteQuery(renormalize=True, lens=0))]  # batch: no lens
        with_lens = [r.to_dict() for r in explainer.routes(texts[:2], RouteQuery(lens=2))]
        layers, heads = len(explainer.blocks), explainer.blocks[0].num_heads
    assert [r["routes"] for r in records] == json.loads(json.dumps(want))
    summary = json.loads((tmp_path / "out.jsonl.routes.json").read_text())
    assert summary == json.loads(json.dumps(summarize_routes(records, layers, heads).to_dict()))
    assert (tmp_path / "out.jsonl.routes.png").stat().st_size > 1000
    assert "components on a route to the prediction, over 4" in " ".join(result.stdout.split())
    again = run_cli("batch", FIXTURES / "tiny-llama", "--input", corpus, "--output", out, "--routes", "--renormalize")
    assert again.returncode == 0 and "0 records written" in again.stdout and "4 already there" in again.stdout
    assert json.loads((tmp_path / "out.jsonl.routes.json").read_text()) == summary
    other = run_cli("batch", FIXTURES / "tiny-llama", "--input", corpus, "--output", out, "--routes")
    assert_one_line_error(other)  # another job (not renormalized) does not append to this output
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]))  # an interrupted run: resumed without --routes is another job
    dropped = run_cli("batch", FIXTURES / "tiny-llama", "--input", corpus, "--output", out)
    assert_one_line_error(dropped)
    assert "routes=" in dropped.stderr and out.read_text() == "".join(lines[:2])
    corpus.write_text("".join(json.dumps(t) + "\n" for t in texts[:2]))
    lensed = run_cli("batch", FIXTURES / "tiny-llama", "--input", corpus, "--output", tmp_path / "lens.jsonl", "--lens", "2")
    assert lensed.returncode == 0, lensed.stderr
    assert [r["routes"] for r in read_output_records(tmp_path / "lens.jsonl")] == json.loads(json.dumps(with_lens))
    assert all(len(h["promotes"]) == 2 for h in with_lens[0]["heads"])


@pytest.mark.parametrize("option", [["--threshold", "1.5"], ["--threshold", "nan"], ["--threshold", "x"],
                                    ["--lens", "-1"], ["--lens", "51"]])
def test_a_bad_threshold_is_one_line(tmp_path, option):
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text('"a dog"\n')
    for command in (["batch", FIXTURES / "tiny-llama", "--input", corpus, "--output", tmp_path / "o.jsonl"],
                    ["explain", FIXTURES / "tiny-llama", "--text", "a dog"]):
        result = run_cli(*command, *option)
        assert_one_line_error(result)
        assert not (tmp_path / "o.jsonl").exists()
