"""`batch`: corpus runs keep input order, match single explanations, and resume without loss or duplicates."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from alti_onnx import Explainer
from alti_onnx.corpus.run import explain_corpus, run_groups

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


def test_runs_hold_at_most_the_batch_size_and_the_token_pair_budget():
    assert run_groups([3, 5, 5, 8, 9], batch_size=2, pairs_per_run=1000) == [range(0, 2), range(2, 4), range(4, 5)]
    # 3 * 5^2 = 75 fits 100; 4 * 8^2 does not, nor 2 * 9^2; a lone text over the budget still runs
    assert run_groups([3, 5, 5, 8, 9], batch_size=10, pairs_per_run=100) == [range(0, 3), range(3, 4), range(4, 5)]
    assert run_groups([30], batch_size=10, pairs_per_run=100) == [range(0, 1)]
    assert run_groups([], batch_size=4, pairs_per_run=100) == []
    # the default budget: 32 texts of 128 tokens, or 2 of 512
    assert [len(r) for r in run_groups([128] * 40 + [512] * 5, 32, 32 * 128 * 128)] == [32, 8, 2, 2, 1]


@pytest.mark.parametrize("pairs_per_run", [32 * 128 * 128, 150])
def test_records_follow_input_order_and_match_single_explanations(explainer, corpus, tmp_path, pairs_per_run):
    output = tmp_path / "out.jsonl"
    summary = explain_corpus(explainer, corpus, output, batch_size=4, chunk_size=10, pairs_per_run=pairs_per_run)
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
    assert summary.skipped == 20 and summary.written == 17  # records reach the file a chunk (10) at a time
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


def test_cli_batch_writes_every_record_and_refuses_a_missing_input(corpus, tmp_path):
    from typer.testing import CliRunner

    from alti_onnx.cli.app import app

    output = tmp_path / "cli.jsonl"
    args = ["batch", str(FIXTURE), "--input", str(corpus), "--output", str(output), "--batch-size", "4"]
    result = CliRunner().invoke(app, [*args, "--pairs-per-run", "150"])
    assert result.exit_code == 0, result.output
    assert "37 records written" in result.output and "1 with errors" in result.output
    assert [r["index"] for r in read(output)] == list(range(37))

    missing = CliRunner().invoke(app, ["batch", str(FIXTURE), "--input", str(tmp_path / "nope.jsonl"), "--output", str(output)])
    assert missing.exit_code == 2 and "input not found" in missing.output and "Traceback" not in missing.output


def test_a_resumed_job_whose_external_weights_were_swapped_is_refused(tmp_path):
    """The job's identity covers the weights beside model.onnx: a fine-tuned sibling's weights of the
    same size swapped in make it another job, not one output of two models' records."""
    import onnx

    from alti_onnx.errors import OutputPathError

    folder = tmp_path / "external"
    shutil.copytree(FIXTURE, folder)
    model = onnx.load(str(folder / "model.onnx"))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    corpus, output = tmp_path / "in.txt", tmp_path / "out.jsonl"
    corpus.write_text("a first text\na second text\n")
    explain_corpus(Explainer(folder, cache=False), corpus, output, chunk_size=1)
    lines = output.read_text().splitlines()
    output.write_text(lines[0] + "\n")  # as if the run had stopped after one record
    data = folder / "model.onnx.data"
    (np.fromfile(data, dtype=np.float32) * np.float32(1.01)).tofile(data)
    with pytest.raises(OutputPathError, match="another batch job: it ran with external_weights"):
        explain_corpus(Explainer(folder, cache=False), corpus, output, chunk_size=1)


def test_a_resumed_job_whose_inline_weights_changed_is_refused(tmp_path, monkeypatch):
    """The same size, the same first MiB, other weights (a fine-tune): another job. (The tiny model
    is smaller than a MiB: the hashed head is cut to 64 bytes so that only the full digest sees it.)"""
    monkeypatch.setattr("alti_onnx.corpus.outputs.PREFIX_BYTES", 64)
    import onnx
    from onnx import numpy_helper

    from alti_onnx.errors import OutputPathError

    folder = tmp_path / "inline"
    shutil.copytree(FIXTURE, folder)
    corpus, output = tmp_path / "in.txt", tmp_path / "out.jsonl"
    corpus.write_text("a first text\na second text\n")
    explain_corpus(Explainer(folder, cache=False), corpus, output, chunk_size=1)
    output.write_text(output.read_text().splitlines()[0] + "\n")
    model = onnx.load(str(folder / "model.onnx"))
    last = max(model.graph.initializer, key=lambda t: list(model.graph.initializer).index(t))
    last.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(last) * np.float32(1.01), last.name))
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(OutputPathError, match="another batch job: it ran with graph_sha256"):
        explain_corpus(Explainer(folder, cache=False), corpus, output, chunk_size=1)
