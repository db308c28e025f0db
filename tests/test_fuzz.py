"""Fuzzing the contract with hypothesis: random bytes for the corpus reader, random JSON values for
a corpus run, random Unicode for explain (and its HTML report), random option values for the
command line. Whatever comes in: one record per line, strict JSON out, an explanation or one line
of error, never a traceback. ``FUZZ_EXAMPLES`` is what the README's Reliability section counts."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alti_onnx import AltiOnnxError, Explainer
from alti_onnx.cli.app import run
from alti_onnx.corpus.run import explain_corpus
from alti_onnx.corpus.inputs import read_records
from alti_onnx.report import write_html
from fixture_cases import FIXTURES
from graph_rewrites import GraphRewriteError

BERT = FIXTURES / "tiny-bert"
FUZZ_EXAMPLES = {"reader": 400, "corpus": 120, "texts": 300, "options": 80}
FUZZ = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(BERT)


def strict(line: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in output")

    return json.loads(line, parse_constant=refuse)


@settings(max_examples=FUZZ_EXAMPLES["reader"], **FUZZ)
@given(lines=st.lists(st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")), max_size=12),
       suffix=st.sampled_from([".jsonl", ".JSON", ".txt", ""]), final_newline=st.booleans())
def test_any_bytes_give_one_record_per_line(lines, suffix, final_newline):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"corpus{suffix}"
        path.write_bytes(b"\n".join(lines) + (b"\n" if final_newline and lines else b""))
        found = list(read_records(path, max_line_bytes=40))
    assert [r.index for r in found] == list(range(len(lines) - (1 if lines and lines[-1] == b"" and not final_newline else 0)))
    for record in found:
        assert (record.text is None) != (record.error is None)
        assert record.error is None or record.error.startswith(f"line {record.line}")
        if record.text is not None:
            record.text.encode("utf-8")  # Unicode throughout


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["text", "id", "x"]), children, max_size=3),
    max_leaves=6,
)
TEXTISH = st.text(alphabet=st.sampled_from(list("the cat sat on a mat dog  é\r\t\"\\")), max_size=30)


@settings(max_examples=FUZZ_EXAMPLES["corpus"], **FUZZ)
@given(values=st.lists(JSON_VALUES | TEXTISH.map(lambda t: {"text": t, "id": t[:3]}) | TEXTISH, min_size=1, max_size=8),
       target=st.none() | st.integers(-12, 12))
def test_any_json_values_give_one_strict_record_each(explainer, values, target):
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps(v) + "\n" for v in values), encoding="utf-8")
        output = Path(tmp) / "out.jsonl"
        summary = explain_corpus(explainer, corpus, output, batch_size=3, chunk_size=3, target=target)
        written = [strict(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [r["index"] for r in written] == list(range(len(values))) and summary.written == len(values)
    for record in written:
        assert ("error" in record) != ("attribution" in record)
        if "attribution" in record:
            assert np.isfinite(record["attribution"]).all() and abs(sum(record["attribution"]) - 1) < 1e-6
    assert summary.failed == sum("error" in r for r in written)


@settings(max_examples=FUZZ_EXAMPLES["texts"], **FUZZ)
@given(text=st.text(max_size=80) | st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_any_text_is_explained_or_refused_in_one_line(explainer, text):
    try:
        explanation = explainer.explain(text)
    except (AltiOnnxError, GraphRewriteError) as exc:
        message = str(exc)
        assert message and "\n" not in message
        return
    rows = explanation.rollout[-1].sum(-1)
    assert np.isfinite(explanation.contributions).all() and np.allclose(rows, 1.0)
    with tempfile.TemporaryDirectory() as tmp:  # what explain accepted, the report draws
        write_html(explanation, Path(tmp) / "report.html", text=text)


OPTION_VALUES = {
    "--target": st.integers(-70, 70).map(str) | st.text(max_size=5),
    "--self-check-tolerance": st.sampled_from(["0", "-1", "nan", "inf", "1e-3", "2e-2", "abc", "1e400"]),
    "--input-map": st.text(max_size=12) | st.sampled_from(["input_ids=ids", "attention_mask=ids", "x=mask", "=", "a=b=c"]),
    "--provider": st.sampled_from(["CPUExecutionProvider", "Bogus", ""]),
}


def run_keeping_the_contract(argv: list[str]) -> int:
    """The CLI's exit code for ``argv``, asserting the contract: 0, or 2 with one 'error:' line."""
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = run(argv)
    assert code in (0, 2), (argv, code, stderr.getvalue())
    if code == 2:
        lines = stderr.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, stderr.getvalue())
    return code


@settings(max_examples=FUZZ_EXAMPLES["options"], **FUZZ)
@given(options=st.dictionaries(st.sampled_from(list(OPTION_VALUES)), st.just(None), min_size=1, max_size=3).flatmap(
    lambda chosen: st.fixed_dictionaries({name: OPTION_VALUES[name] for name in chosen})),
       text=st.sampled_from(["the cat sat", "", "a " * 70, "the\x00cat"]))
def test_any_option_values_keep_the_one_line_contract(options, text):
    argv = ["explain", str(BERT), "--text", text]
    for name, value in options.items():
        argv += [name, value]
    run_keeping_the_contract(argv)


BATCH_OPTION_VALUES = {
    "--batch-size": st.integers(-2, 40).map(str) | st.text(max_size=3),
    "--chunk-size": st.integers(-2, 9).map(str),
    "--pairs-per-run": st.integers(-5, 5000).map(str),
    "--target": st.integers(-30, 30).map(str),
    "--input-map": st.sampled_from(["input_ids=ids", "token_type_ids=mask", "nope=ids"]),
    "--self-check-tolerance": st.sampled_from(["1e-3", "0", "nan"]),
}
FUZZ_EXAMPLES["batch options"] = 60


@settings(max_examples=FUZZ_EXAMPLES["batch options"], **FUZZ)
@given(options=st.dictionaries(st.sampled_from(list(BATCH_OPTION_VALUES)), st.just(None), max_size=3).flatmap(
    lambda chosen: st.fixed_dictionaries({name: BATCH_OPTION_VALUES[name] for name in chosen})), full=st.booleans())
def test_any_batch_options_keep_the_contract_and_the_records(options, full):
    with tempfile.TemporaryDirectory() as tmp:
        corpus, output = Path(tmp) / "in.txt", Path(tmp) / "out.jsonl"
        corpus.write_text("the cat sat\na dog ran on the mat\n\nthe fox\n")
        argv = ["batch", str(BERT), "--input", str(corpus), "--output", str(output), *(["--full"] if full else [])]
        for name, value in options.items():
            argv += [name, value]
        run_keeping_the_contract(argv)
        if output.exists() and output.stat().st_size:  # whatever was written is one strict record a line
            assert [strict(line)["index"] for line in output.read_text().splitlines()] == list(range(4))


T5 = Path(__file__).parent / "fixtures" / "tiny-t5-seq2seq"
SEQ2SEQ_OPTION_VALUES = {
    "--target": st.integers(-12, 40).map(str) | st.sampled_from(["mean", "x"]),
    "--target-text": st.text(max_size=20) | st.sampled_from(["the cat", "", "a " * 80]),
    "--max-new-tokens": st.integers(-3, 40).map(str) | st.sampled_from(["x", "", "2000", "100000"]),
    "--decoder-start-token-id": st.integers(-5, 200).map(str) | st.sampled_from(["x"]),
    "--self-check-tolerance": st.sampled_from(["1e-3", "0", "nan", "2e-2"]),
    "--input-map": st.sampled_from(["input_ids=ids", "x=mask"]),
    "--words": st.just(None),
    "--attribution-only": st.just(None),
}
FUZZ_EXAMPLES["encoder-decoder options"] = 60


@settings(max_examples=FUZZ_EXAMPLES["encoder-decoder options"], **FUZZ)
@given(options=st.dictionaries(st.sampled_from(list(SEQ2SEQ_OPTION_VALUES)), st.just(None), min_size=1,
                               max_size=3).flatmap(
    lambda chosen: st.fixed_dictionaries({name: SEQ2SEQ_OPTION_VALUES[name] for name in chosen})),
       text=st.sampled_from(["the house is small", "", "\x00"]), as_json=st.booleans())
def test_any_encoder_decoder_options_keep_the_one_line_contract_and_strict_json(options, text, as_json):
    """Every option an encoder-decoder takes, with any value: an explanation (its --json strict), or one
    error line; never a traceback or an option silently ignored (a refused one says so)."""
    with tempfile.TemporaryDirectory() as tmp:
        written = Path(tmp) / "out.json"
        argv = ["explain", str(T5), "--text", text, *(["--json", str(written)] if as_json else [])]
        for name, value in options.items():
            argv += [name] if value is None else [name, value]
        code = run_keeping_the_contract(argv)
        if code == 0 and as_json:
            record = strict(written.read_text())
            assert record["layout"] == "encoder-decoder" and record["tokens"]
