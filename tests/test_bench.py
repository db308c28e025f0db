"""`alti-onnx bench`: configurations measured in workers, a table, and a JSON record with the machine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import alti_onnx.bench as bench
from alti_onnx import Explainer
from alti_onnx.bench import _median_seconds, measure, measure_forward, synthetic_batch
from alti_onnx.cli.app import app

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-bert"


def test_synthetic_batch_has_exactly_the_asked_length_and_ends_with_the_separator():
    explainer = Explainer(FIXTURE)
    batch = synthetic_batch(explainer.tokenizer, 20, 3)
    assert batch.input_ids.shape == (3, 20) and batch.attention_mask.all()
    assert batch.tokens[0][0] == "[CLS]" and batch.tokens[0][-1] == "[SEP]"
    assert np.all(batch.input_ids == batch.input_ids[0])


def test_measure_times_both_paths_with_the_same_inputs():
    result = measure(FIXTURE, seq_len=16, batch_size=2, warmup=1, repeats=3)
    assert (result.seq_len, result.batch_size) == (16, 2)
    assert 0 < result.forward_s < result.explain_s  # the explanation includes an instrumented forward
    assert result.ratio == result.explain_s / result.forward_s
    assert result.peak_rss_mb > 50 and result.repeats >= 3 and not result.attribution_only
    only = measure(FIXTURE, seq_len=16, batch_size=2, warmup=1, repeats=3, attribution_only=True)
    assert only.attribution_only and 0 < only.forward_s < only.explain_s


def test_the_forward_alone_is_measured_on_the_plain_model():
    seconds, peak = measure_forward(FIXTURE, seq_len=16, batch_size=2)
    assert 0 < seconds < 1 and peak > 50


def test_long_runs_are_warmed_up_once_and_timed_once(monkeypatch):
    monkeypatch.setattr(bench, "LONG_RUN_S", 0.0)  # every run counts as long
    calls: list[str] = []
    _, turns = _median_seconds([lambda: calls.append("run")], warmup=2, repeats=4, budget_s=0, settle_s=0)
    assert turns == 1 and calls == ["run", "run"]  # one warm-up, one timed turn


def test_runs_are_timed_in_turns_and_short_ones_repeat_until_they_settle():
    order: list[str] = []
    medians, turns = _median_seconds(
        [lambda: order.append("forward"), lambda: order.append("explain")], warmup=1, repeats=4, budget_s=60, settle_s=0
    )
    assert turns == 4 and len(medians) == 2
    assert order == ["forward", "explain"] + ["forward", "explain"] * 4  # warm-up, then alternating turns
    _, turns = _median_seconds([lambda: None], warmup=0, repeats=4, budget_s=60, settle_s=60, most=12)
    assert turns == 12  # microsecond runs: up to ``most`` turns within the settle time


def test_cli_writes_the_record(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, ["bench", str(FIXTURE), "--lengths", "8,16", "--batch-sizes", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert [(r["seq_len"], r["batch_size"]) for r in record["results"]] == [(8, 1), (16, 1)]
    assert record["machine"]["cores"] >= 1 and "onnxruntime" in record["machine"] and "blas" in record["machine"] and record["machine"]["numba_target_cpu"]
    assert "explain/fwd" in result.output and "peak MB fwd/explain" in result.output
    assert all(r["forward_peak_rss_mb"] > 50 and r["peak_rss_mb"] > 50 for r in record["results"])


def test_a_long_explanation_is_timed_alone(monkeypatch):
    """Past LONG_RUN_S the plain model is not loaded beside the explanation (at 8,192 tokens both
    working memories together outgrow the machine): run_benchmark sets it against the forward's own
    process instead."""
    monkeypatch.setattr(bench, "LONG_RUN_S", 0.0)
    result = measure(FIXTURE, seq_len=16, batch_size=1, attribution_only=True)
    assert not result.in_turns and result.explain_s > 0 and result.repeats == 1
    assert np.isnan(result.forward_s) and np.isnan(result.ratio)


def test_logit_mode_times_alti_beside_the_decomposition(tmp_path):
    classifier = FIXTURE.parent / "tiny-bert-classifier"
    result = measure(classifier, seq_len=16, batch_size=2, warmup=1, repeats=3, logit=True)
    assert result.logit and result.alti_s is not None and 0 < result.forward_s < result.explain_s
    assert result.alti_s > result.forward_s
    out = tmp_path / "bench.json"
    cli = CliRunner().invoke(app, ["bench", str(FIXTURE.parent / "tiny-llama"), "--lengths", "8", "--batch-sizes", "1",
                                   "--logit", "--json", str(out)])
    assert cli.exit_code == 0, cli.output
    (record,) = json.loads(out.read_text())["results"]
    assert record["logit"] and record["alti_s"] > 0 and "ALTI" in cli.output
    refused = CliRunner().invoke(app, ["bench", str(FIXTURE), "--lengths", "8", "--logit"])
    assert refused.exit_code == 2 and "'logits' output" in refused.output


def test_routes_mode_times_the_routes_alone(tmp_path):
    """bench --routes: the explanation timed is Explainer.routes (no ALTI); its record says so."""
    decoder = FIXTURE.parent / "tiny-llama"
    result = measure(decoder, seq_len=16, batch_size=2, warmup=1, repeats=3, routes=True)
    assert result.routes and not result.logit and np.isclose(result.ratio, result.explain_s / result.forward_s)
    out = tmp_path / "routes.json"
    cli = CliRunner().invoke(app, ["bench", str(decoder), "--lengths", "8", "--batch-sizes", "1", "--routes",
                                   "--json", str(out)])
    assert cli.exit_code == 0, cli.output
    assert json.loads(out.read_text())["results"][0]["routes"] is True
    both = CliRunner().invoke(app, ["bench", str(decoder), "--lengths", "8", "--routes", "--logit"])
    assert both.exit_code == 2 and "not both" in both.output


def test_corpus_mode_times_batch_next_to_the_forward_on_the_same_texts(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    texts = [("a good film " * (1 + k % 7)).strip() for k in range(30)]
    corpus.write_text("\n".join(texts) + "\n\n")  # a blank line is a failed record of batch, not a text to time
    timed: list[int] = []
    from alti_onnx.corpus import run as corpus_run  # measure_corpus batches with the corpus run's own runs

    real = corpus_run.run_groups
    monkeypatch.setattr(corpus_run, "run_groups", lambda lengths, *a: timed.append(len(lengths)) or real(lengths, *a))
    out = tmp_path / "corpus.json"
    result = CliRunner().invoke(app, ["bench", str(FIXTURE), "--corpus", str(corpus), "--limit", "25",
                                      "--batch-sizes", "4,8", "--json", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["corpus"] == str(corpus) and record["device"] == "cpu"  # what auto resolved to here
    assert [(r["batch_size"], r["texts"]) for r in record["results"]] == [(4, 25), (8, 25)]
    for r in record["results"]:
        assert r["forward_texts_per_s"] > 0 and r["batch_texts_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["forward_texts_per_s"] / r["batch_texts_per_s"], rel=1e-9)
    assert set(timed) == {25}  # both paths batch the same 25 texts, in the same runs
    assert "batch texts/s" in result.output and "batch/fwd" in result.output


def test_corpus_mode_refuses_what_it_does_not_time(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello\n")
    for extra, words in ((["--logit"], "not with --logit"), (["--limit", "3"], None)):
        args = ["bench", str(FIXTURE)] + (["--corpus", str(corpus)] if words else []) + extra
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2
        assert (words or "--limit goes with --corpus") in result.output
    result = CliRunner().invoke(app, ["bench", str(FIXTURE), "--corpus", str(tmp_path / "missing.txt")])
    assert result.exit_code == 2 and "input not found" in result.output
