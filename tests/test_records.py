"""One record for every command (docs/records.md): ``explain --json`` and ``batch`` write the same keys
and values for the same text, on every layout; every explanation saves, loads and renders alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alti_onnx import Explainer
from alti_onnx.results.base import ExplanationBase
from alti_onnx.results.record import RECORD_VERSION, parse_target
from alti_onnx.results.seq2seq import Seq2SeqExplanation
from tests.cli_helpers import run_cli
from tests.fixture_cases import FIXTURES

CLASSIFIER = FIXTURES / "tiny-bert-classifier"
DECODER = FIXTURES / "tiny-gpt2"
SEQ2SEQ = FIXTURES / "tiny-t5-seq2seq"


def _explain_json(folder, tmp_path, text: str, *options: str) -> dict:
    written = tmp_path / "explain.json"
    result = run_cli("explain", folder, "--text", text, "--json", written, *options)
    assert result.returncode == 0, result.stderr
    return json.loads(written.read_text())


def _batch_record(folder, tmp_path, line: dict, *options: str) -> dict:
    corpus, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    corpus.write_text(json.dumps(line) + "\n")
    result = run_cli("batch", folder, "--input", corpus, "--output", output, *options)
    assert result.returncode == 0, result.stderr
    (record,) = [json.loads(text) for text in output.read_text().splitlines()]
    return record


@pytest.mark.parametrize("folder, line, explain_options, batch_options", [
    (CLASSIFIER, {"text": "a warm and clever film", "id": 7}, ("--attribution-only",), ()),
    (CLASSIFIER, {"text": "a warm and clever film", "id": 7}, ("--words",), ("--full", "--words")),
    (DECODER, {"text": "the cat sat on the", "id": "d"}, ("--attribution-only", "--target", "2"), ("--target", "2")),
    (SEQ2SEQ, {"text": "the house is small", "target": "das Haus", "id": 1},
     ("--target-text", "das Haus", "--attribution-only"), ()),
], ids=["classifier", "classifier-words-full", "decoder-target", "encoder-decoder"])
def test_explain_json_and_the_batch_record_are_the_same_record(folder, line, explain_options, batch_options, tmp_path):
    explained = _explain_json(folder, tmp_path, line["text"], *explain_options)
    record = _batch_record(folder, tmp_path, line, *batch_options)
    assert record.pop("index") == 0 and record.pop("id") == line["id"]
    assert explained.keys() == record.keys()
    for key, value in explained.items():
        _same_value(record[key], value, key)
    assert explained["record_version"] == RECORD_VERSION


def _same_value(actual, expected, key: str) -> None:
    """Numbers equal to float tolerance (batch runs texts padded together), everything else exactly."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), key
        for name in expected:
            _same_value(actual[name], expected[name], f"{key}.{name}")
    elif isinstance(expected, float) or (isinstance(expected, list) and expected
                                         and all(isinstance(v, (float, list)) for v in expected)):
        np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), atol=1e-6,
                                   err_msg=key)
    else:
        assert actual == expected, key


def test_a_classifiers_record_carries_its_prediction_and_a_decoders_its_next_token(tmp_path):
    record = _explain_json(CLASSIFIER, tmp_path, "a warm film", "--attribution-only")
    assert set(record["prediction"]) == {"index", "label", "probability"} and "next_token" not in record
    record = _explain_json(DECODER, tmp_path, "the cat sat", "--attribution-only")
    assert set(record["next_token"]) == {"id", "token", "probability"} and "prediction" not in record


def test_targets_are_typed():
    assert parse_target("3") == 3 and parse_target(-1) == -1 and parse_target("mean") == "mean"
    assert parse_target(None) is None
    for bad in ("first", 1.5, True, [1]):
        with pytest.raises(ValueError, match="token position or 'mean'"):
            parse_target(bad)


@pytest.fixture(scope="module")
def seq2seq_explanation() -> Seq2SeqExplanation:
    with Explainer(SEQ2SEQ, cache=False) as explainer:
        return explainer.explain("the house is small", "das Haus")


def test_an_encoder_decoder_explanation_round_trips_through_save_and_load(seq2seq_explanation, tmp_path):
    path = seq2seq_explanation.save(tmp_path / "pair.npz")
    loaded = ExplanationBase.load(path)
    assert isinstance(loaded, Seq2SeqExplanation)
    assert loaded.to_record(full=True, words=True) == seq2seq_explanation.to_record(full=True, words=True)
    np.testing.assert_array_equal(loaded.combined, seq2seq_explanation.combined)
    with pytest.raises(ValueError, match="not a Explanation"):
        from alti_onnx import Explanation

        Explanation.load(path)


def test_a_damaged_saved_encoder_decoder_explanation_is_refused(seq2seq_explanation, tmp_path):
    path = seq2seq_explanation.save(tmp_path / "pair.npz")
    with np.load(path) as saved:
        arrays = {name: saved[name] for name in saved.files}
    arrays["combined"] = arrays["combined"][:, :1]
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(ValueError, match="do not fit"):
        ExplanationBase.load(path)


def test_an_encoder_decoder_explanation_renders_in_a_notebook(seq2seq_explanation):
    page = seq2seq_explanation._repr_html_()
    assert page.count('class="alti-share"') == len(seq2seq_explanation.target_tokens)
    assert "<script" not in page
    shares = [float(s.split(">")[1]) for s in page.split('class="alti-share"')[1:] for s in [s.split("</td>")[0]]]
    np.testing.assert_allclose(shares, seq2seq_explanation.source_share, atol=5e-4)


def test_an_encoder_decoder_explanation_has_words_and_attributions(seq2seq_explanation):
    words = seq2seq_explanation.words(0)
    row = seq2seq_explanation.attribution(0)
    np.testing.assert_allclose(words.attribution.sum(), row.sum(), atol=1e-9)
    assert [w.text for w in words.words][:4] == ["the", "house", "is", "small"] or "house" in words.texts
    np.testing.assert_array_equal(seq2seq_explanation.attribution(), seq2seq_explanation.combined[-1])
    with pytest.raises(IndexError):
        seq2seq_explanation.attribution(len(seq2seq_explanation.target_tokens))


def test_explain_refuses_before_it_writes_anything(tmp_path):
    """--png on an encoder-decoder is refused in one line, and the --json asked for with it is not written."""
    from tests.cli_helpers import assert_one_line_error

    written = tmp_path / "pair.json"
    assert_one_line_error(run_cli("explain", SEQ2SEQ, "--text", "the house", "--json", written, "--png",
                                  tmp_path / "x.png"), "--png")
    assert not written.exists() and not (tmp_path / "x.png").exists()


def test_a_target_on_a_single_graph_batch_line_is_that_lines_error(tmp_path):
    corpus, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    corpus.write_text(json.dumps({"text": "a warm film"}) + "\n" + json.dumps({"text": "a film", "target": "x"}) + "\n")
    result = run_cli("batch", CLASSIFIER, "--input", corpus, "--output", output)
    assert result.returncode == 0, result.stderr
    first, second = [json.loads(line) for line in output.read_text().splitlines()]
    assert "attribution" in first and "error" not in first
    assert second["line"] == 2 and "encoder-decoder" in second["error"]


def test_words_of_an_encoder_decoder_record_keep_its_target(seq2seq_explanation):
    record = seq2seq_explanation.to_record(words=True)
    assert record["target"] is None and len(record["attribution"]) == len(seq2seq_explanation.target_tokens)
    words = seq2seq_explanation.words()
    np.testing.assert_allclose(record["word_attribution"], words.attribution)
