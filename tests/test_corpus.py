"""`batch`: corpus runs keep input order, match single explanations, and resume without loss or duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alti_onnx import Explainer
from alti_onnx.corpus import explain_corpus

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-bert"
WORDS = "the cat sat on mat and a dog ran".split()


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(FIXTURE)


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=rng.integers(1, 25))) for _ in range(37)]
    texts[5] = "   "  # an error record must keep its place
    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": f"t{i}"}) + "\n" for i, t in enumerate(texts)))
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_follow_input_order_and_match_single_explanations(explainer, corpus, tmp_path):
    output = tmp_path / "out.jsonl"
    summary = explain_corpus(explainer, corpus, output, batch_size=4, chunk_size=10)
    records = read(output)
    inputs = [json.loads(line) for line in corpus.read_text().splitlines()]
    assert (summary.total, summary.failed) == (37, 1)
    assert [r["index"] for r in records] == list(range(37))
    assert [r["id"] for r in records] == [i["id"] for i in inputs]
    assert "empty text" in records[5]["error"]
    for record, given in zip(records, inputs):
        if "error" in record:
            continue
        alone = explainer.explain(given["text"])
        assert record["input_ids"] == alone.input_ids
        np.testing.assert_allclose(record["attribution"], alone.attribution(0), atol=1e-6)


def test_resume_after_interruption_loses_and_duplicates_nothing(explainer, corpus, tmp_path):
    whole = tmp_path / "whole.jsonl"
    explain_corpus(explainer, corpus, whole, batch_size=4, chunk_size=10)

    resumed = tmp_path / "resumed.jsonl"

    def stop_after_13(done: int) -> None:
        if done == 13:
            raise Interrupted

    with pytest.raises(Interrupted):
        explain_corpus(explainer, corpus, resumed, batch_size=4, chunk_size=10, on_record=stop_after_13)
    with open(resumed, "a") as handle:  # a record torn in the middle of being written
        handle.write('{"index": 13, "id": "t13", "tok')
    summary = explain_corpus(explainer, corpus, resumed, batch_size=4, chunk_size=10)
    assert summary.skipped == 13 and summary.written == 24
    got, want = read(resumed), read(whole)
    assert [r["index"] for r in got] == list(range(37))
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        if "attribution" in a:
            np.testing.assert_allclose(a["attribution"], b["attribution"], atol=1e-9)


def test_a_finished_output_is_left_alone(explainer, corpus, tmp_path):
    output = tmp_path / "out.jsonl"
    explain_corpus(explainer, corpus, output, batch_size=8)
    before = output.read_bytes()
    summary = explain_corpus(explainer, corpus, output, batch_size=8)
    assert (summary.skipped, summary.written) == (37, 0)
    assert output.read_bytes() == before
