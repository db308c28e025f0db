"""Logit decompositions (docs/logit.md) against the float64 references of models/reference_logit.py on
every tiny decoder family and the tiny classifier, single texts and padded batches, and their invariants."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alti_onnx import Explainer
from alti_onnx.errors import InputError
from alti_onnx.results.explanation import Explanation
from alti_onnx.results.logit import LogitQuery
from tests.fixture_cases import DECODERS, ENCODERS, FIXTURES

#: Per-token values and parts against the reference (fp32 model, float64 reference).
TOLERANCE = 1e-5
#: Reconstruction of the model's own logit, relative.
RECONSTRUCTION = 1e-4
WORDS = ["the", "cat", "dog", "sat", "on", "mat", "a", "big", "small", "happy", "walks", "with"]


def _texts(arch: str) -> list[str]:
    return json.loads((FIXTURES / f"tiny-{arch}" / "texts.json").read_text())


@pytest.fixture(scope="module")
def classifier() -> Explainer:
    return Explainer(FIXTURES / "tiny-bert-classifier")


@pytest.fixture(scope="module")
def llama() -> Explainer:
    return Explainer(FIXTURES / "tiny-llama")


def _assert_matches(found, ref) -> None:
    """Per-token values, per-layer values (decoders), parts and value within TOLERANCE of the reference."""
    np.testing.assert_allclose(found.attribution, ref.attribution, atol=TOLERANCE, rtol=0)
    if ref.per_layer is not None:
        np.testing.assert_allclose(found.per_layer, ref.per_layer, atol=TOLERANCE, rtol=0)
    assert found.parts.keys() == ref.parts.keys()
    for name, value in ref.parts.items():
        assert found.parts[name] == pytest.approx(value, abs=TOLERANCE), name
    assert found.value == pytest.approx(ref.value, abs=TOLERANCE)
    _assert_sums(found)


def _assert_sums(logit) -> None:
    """The parts and the attribution add up to the value (computed here, not read from the self-check)."""
    total = logit.attribution.sum() + sum(logit.parts.values())
    if logit.per_layer is not None:  # decoders: the per-layer terms, not their rollout, sum to the value
        total = logit.per_layer.sum() + sum(logit.parts.values())
    assert abs(total - logit.value) <= RECONSTRUCTION * max(1.0, abs(logit.value))
    assert logit.reconstruction_error < RECONSTRUCTION


# --------------------------------------------------------------------------- against the references
@pytest.mark.torch
@pytest.mark.parametrize("arch", DECODERS)
def test_alti_logit_matches_the_reference(arch: str, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    from models.reference_logit import reference_alti_logit
    from models.tiny import build_tiny_hf_model, load_saved

    model = load_saved(build_tiny_hf_model(arch, tmp_path / "hf"))
    folder = FIXTURES / f"tiny-{arch}"
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    texts = _texts(arch)[:3]
    with Explainer(folder) as explainer:
        for foil in (None, 3):
            batch = explainer.explain(texts, logit=LogitQuery(foil=foil, per_head=True))  # one padded batch
            for text, padded in zip(texts, batch):
                single = explainer.explain(text, logit=LogitQuery(foil=foil)).logit
                ids = tokenizer.encode(text).ids
                ref = reference_alti_logit(model, ids, single.target.index, foil)
                for found in (single, padded.logit):
                    assert found.target == single.target and found.position == len(ids) - 1
                    _assert_matches(found, ref)
                np.testing.assert_allclose(padded.logit.per_head.sum(1), padded.logit.per_layer, atol=1e-12)


@pytest.mark.torch
def test_classifier_logit_matches_the_reference(classifier: Explainer, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    from models.reference_logit import reference_classifier_logit
    from models.tiny import load_saved
    from models.tiny_classifier import build_tiny_classifier_hf

    model = load_saved(build_tiny_classifier_hf(tmp_path / "hf"))
    tokenizer = Tokenizer.from_file(str(FIXTURES / "tiny-bert-classifier" / "tokenizer.json"))
    texts = _texts("bert-classifier")
    for target, foil in ((0, None), (1, None), (0, 1), ("positive", "negative")):
        query = LogitQuery(target=target, foil=foil)
        batch = classifier.explain(texts, logit=query)
        for text, padded in zip(texts, batch):
            single = classifier.explain(text, logit=query).logit
            encoding = tokenizer.encode(text)
            ref = reference_classifier_logit(model, encoding.ids, encoding.type_ids, single.target.index,
                                             None if single.foil is None else single.foil.index)
            for found in (single, padded.logit):
                _assert_matches(found, ref)


# --------------------------------------------------------------------------- invariants
_sentences = st.lists(st.sampled_from(WORDS), min_size=1, max_size=12).map(" ".join)
_settings = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(text=_sentences, other=_sentences, target=st.integers(0, 1))
def test_classifier_invariants(classifier: Explainer, text: str, other: str, target: int) -> None:
    """Parts sum to the logit; a foil equal to the target gives zeros; padding changes nothing."""
    alone = classifier.explain(text, logit=LogitQuery(target=target)).logit
    _assert_sums(alone)
    assert alone.value == pytest.approx(float(classifier.explain(text).outputs["logits"][target]), abs=1e-5)
    padded = classifier.explain([text, other + " " + other], logit=LogitQuery(target=target))[0].logit
    np.testing.assert_allclose(padded.attribution, alone.attribution, atol=1e-5)
    same = classifier.explain(text, logit=LogitQuery(target=target, foil=target)).logit
    assert same.value == 0 and not np.any(same.attribution) and not any(same.parts.values())


@_settings
@given(text=_sentences, other=_sentences, data=st.data())
def test_decoder_invariants(llama: Explainer, text: str, other: str, data) -> None:
    """Tokens after the target position contribute nothing; a foil equal to the target gives zeros;
    padding changes nothing; the parts sum to the logit."""
    size = len(llama.explain(text).tokens)
    position = data.draw(st.integers(0, size - 1))
    token = data.draw(st.integers(0, llama.tokenizer.get_vocab_size() - 1))
    found = llama.explain(text, logit=LogitQuery(target=token, position=position)).logit
    _assert_sums(found)
    assert found.position == position
    assert not np.any(found.attribution[position + 1:]) and not np.any(found.per_layer[:, position + 1:])
    padded = llama.explain([text, other + " " + other + " " + text], logit=LogitQuery(target=token, position=position))
    np.testing.assert_allclose(padded[0].logit.attribution, found.attribution, atol=1e-5)
    same = llama.explain(text, logit=LogitQuery(target=token, foil=token, position=position)).logit
    assert same.value == 0 and not np.any(same.attribution) and not any(same.parts.values())


def test_contrast_is_the_difference(llama: Explainer) -> None:
    """Target minus foil, everywhere: the contrastive decomposition is the difference of the two."""
    text = "the cat sat on the"
    first = llama.explain(text, logit=LogitQuery(target=5)).logit
    second = llama.explain(text, logit=LogitQuery(target=9)).logit
    both = llama.explain(text, logit=LogitQuery(target=5, foil=9)).logit
    np.testing.assert_allclose(both.attribution, first.attribution - second.attribution, atol=1e-6)
    for name in both.parts:
        assert both.parts[name] == pytest.approx(first.parts[name] - second.parts[name], abs=1e-6)


# --------------------------------------------------------------------------- targets, records, errors
def test_default_target_is_the_prediction(classifier: Explainer, llama: Explainer) -> None:
    explanation = classifier.explain("the cat sat", logit=LogitQuery())
    assert explanation.logit.target.index == explanation.prediction.index
    assert explanation.logit.target.label == explanation.prediction.label
    decoded = llama.explain("the cat sat", logit=LogitQuery())
    assert decoded.logit.target.index == decoded.next_token.index


def test_targets_by_label_and_token_text(classifier: Explainer, llama: Explainer) -> None:
    assert classifier.explain("a cat", logit=LogitQuery(target="POSITIVE")).logit.target.index == 1
    assert classifier.explain("a cat", logit=LogitQuery(target="1")).logit.target.label == "positive"
    token = llama.tokenizer.encode("cat", add_special_tokens=False).ids[0]
    assert llama.explain("a big", logit=LogitQuery(target="cat")).logit.target.index == token
    assert llama.explain("a big", logit=LogitQuery(target=str(token))).logit.target.label.strip() == "cat"


@pytest.mark.parametrize("query, message", [
    (LogitQuery(target="neutral"), "is no class of this model"),
    (LogitQuery(target=7), "out of range"),
    (LogitQuery(foil="maybe"), "is no class"),
    (LogitQuery(foil=5), "foil 5 is out of range"),
    (LogitQuery(target=1, kind="token"), "this model is a classifier"),
    (LogitQuery(per_head=True), "per-head terms are for language models"),
    (LogitQuery(target=1.0), "a label, a token's text or an integer"),
])
def test_bad_classes(classifier: Explainer, query: LogitQuery, message: str) -> None:
    """(also: a token asked of a classifier, per-head terms, a float index)"""
    with pytest.raises(InputError, match=message):
        classifier.explain("a cat", logit=query)


@pytest.mark.parametrize("query, message", [
    (LogitQuery(target="cat dog"), "is 2 tokens"),
    (LogitQuery(target=10**7), "token ids of this model run from 0"),
    (LogitQuery(target="²"), "is 0 tokens|not in the vocabulary|tokens \\("),
    (LogitQuery(target="\ud800"), "not text the tokenizer can read"),
    (LogitQuery(target=5, kind="class"), "this model is a language model"),
    (LogitQuery(target=2.0), "a label, a token's text or an integer"),
    (LogitQuery(target="zebra"), "not in the vocabulary"),
    (LogitQuery(position=40), "outside the"),
])
def test_bad_tokens(llama: Explainer, query: LogitQuery, message: str) -> None:
    with pytest.raises(InputError, match=message):
        llama.explain("a cat", logit=query)


def test_numpy_integers_and_unlabelled_classes(tmp_path: Path) -> None:
    import shutil

    with Explainer(FIXTURES / "tiny-llama") as llama:
        assert llama.explain("the cat", logit=LogitQuery(target=np.int64(5))).logit.target.index == 5
    folder = tmp_path / "unlabelled"
    shutil.copytree(FIXTURES / "tiny-bert-classifier", folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("id2label"), config.pop("label2id")
    (folder / "config.json").write_text(json.dumps(config))
    with Explainer(folder) as unlabelled:
        assert unlabelled.explain("the cat", logit=LogitQuery(target="1")).logit.target.label == "1"
        with pytest.raises(InputError, match="class 2 is out of range: this model has 2 classes"):
            unlabelled.explain("the cat", logit=LogitQuery(target=2))


def test_a_model_without_logits_is_refused() -> None:
    with Explainer(FIXTURES / "tiny-bert") as explainer, pytest.raises(InputError, match="'logits' output"):
        explainer.explain("the cat", logit=LogitQuery())


def test_record_and_saved_explanation(llama: Explainer, tmp_path: Path) -> None:
    explanation = llama.explain("the cat sat on", logit=LogitQuery(foil=4, per_head=True))
    record = explanation.to_record()["logit"]
    assert record["method"] == "alti-logit" and record["foil"]["id"] == 4
    assert record["target"] == {"id": explanation.logit.target.index, "token": explanation.logit.target.label}
    assert len(record["attribution"]) == len(explanation.tokens)
    assert np.shape(record["per_layer"]) == (2, len(explanation.tokens))
    assert np.shape(record["per_head"]) == (2, 4, len(explanation.tokens))
    assert record["value"] == pytest.approx(explanation.logit.value)
    path = explanation.save(tmp_path / "saved.npz")
    assert Explanation.load(path).to_record() == explanation.to_record()


# --------------------------------------------------------------------------- the commands
def test_explain_logit_command(tmp_path: Path) -> None:
    from tests.cli_helpers import run_cli

    out = tmp_path / "e.json"
    result = run_cli("explain", FIXTURES / "tiny-bert-classifier", "--text", "the cat sat", "--class", "positive",
                     "--foil", "0", "--json", out)
    assert result.returncode == 0, result.stderr
    assert "logit decomposition of 'positive' (class 1) minus 'negative' (class 0)" in " ".join(result.stdout.split())
    record = json.loads(out.read_text())["logit"]
    with Explainer(FIXTURES / "tiny-bert-classifier") as explainer:
        expected = explainer.explain("the cat sat", logit=LogitQuery(target=1, foil=0)).logit
    np.testing.assert_allclose(record["attribution"], expected.attribution, atol=1e-6)
    assert record["value"] == pytest.approx(expected.value, abs=1e-6)


def test_explain_logit_on_a_decoder_reads_the_target_position(tmp_path: Path) -> None:
    from tests.cli_helpers import run_cli

    out = tmp_path / "e.json"
    result = run_cli("explain", FIXTURES / "tiny-llama", "--text", "the cat sat on the", "--target-token", "cat",
                     "--target", "2", "--per-head", "--json", out, "--attribution-only")
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())["logit"]
    assert record["position"] == 2 and record["target"]["token"] == "cat"
    assert not any(record["attribution"][3:]) and np.shape(record["per_head"])[:2] == (2, 4)


@pytest.mark.parametrize("model, args, words", [
    ("tiny-llama", ["--class", "positive"], ["--class is for classifiers"]),
    ("tiny-bert-classifier", ["--target-token", "cat"], ["--target-token is for language models"]),
    ("tiny-bert-classifier", ["--class", "neutral"], ["no class of this model"]),
    ("tiny-bert-classifier", ["--per-head"], ["--per-head is for language models"]),
    ("tiny-bert", ["--logit"], ["'logits' output"]),
    ("tiny-llama", ["--logit", "--target", "mean"], ["--target N"]),
    ("tiny-llama", ["--class", "a", "--target-token", "b"], ["cannot go together"]),
])
def test_explain_logit_refusals(model: str, args: list[str], words: list[str]) -> None:
    from tests.cli_helpers import assert_one_line_error, run_cli

    assert_one_line_error(run_cli("explain", FIXTURES / model, "--text", "the cat", *args), *words)


def test_batch_logit_with_per_record_targets(tmp_path: Path) -> None:
    from tests.cli_helpers import run_cli

    corpus = tmp_path / "in.jsonl"
    lines = [{"text": "the cat sat"}, {"text": "a dog", "foil": "positive"}, {"text": "a cat", "class": "neutral"},
             {"text": "the mat", "class": 0, "foil": 1, "target_token": None}, {"text": "a big dog", "class": True},
             {"text": "a cat", "target_token": 1}, {"text": "a cat", "class": "\ud800"}]
    corpus.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out.jsonl"
    result = run_cli("batch", FIXTURES / "tiny-bert-classifier", "--input", corpus, "--output", out, "--logit",
                     "--class", "negative")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    with Explainer(FIXTURES / "tiny-bert-classifier") as explainer:
        for record, (target, foil) in zip([records[0], records[1], records[3]], [(0, None), (0, 1), (0, 1)]):
            text = lines[record["index"]]["text"]
            expected = explainer.explain(text, logit=LogitQuery(target=target, foil=foil)).logit
            assert record["logit"]["target"]["index"] == target
            assert (record["logit"]["foil"] or {}).get("index") == foil
            np.testing.assert_allclose(record["logit"]["attribution"], expected.attribution, atol=1e-6)
    assert "no class of this model" in records[2]["error"]
    assert "'class' must be a string or an integer" in records[4]["error"]
    assert "this model is a classifier" in records[5]["error"]
    assert "lone surrogate" in records[6]["error"]
    # the logit query is part of the job: another query does not resume into this output
    again = run_cli("batch", FIXTURES / "tiny-bert-classifier", "--input", corpus, "--output", out, "--logit")
    assert again.returncode == 2 and "another batch job" in again.stderr and "logit=" in again.stderr


def test_batch_record_fields_need_logit(tmp_path: Path) -> None:
    from tests.cli_helpers import run_cli

    corpus = tmp_path / "in.jsonl"
    corpus.write_text(json.dumps({"text": "the cat", "class": 1}) + "\n" + json.dumps("a dog") + "\n")
    result = run_cli("batch", FIXTURES / "tiny-bert-classifier", "--input", corpus, "--output", tmp_path / "o.jsonl")
    assert result.returncode == 0, result.stderr
    first = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    assert "run batch with --logit" in first["error"]


# --------------------------------------------------------------------------- the views
def test_report_and_notebook_show_signed_parts(classifier: Explainer) -> None:
    import re

    from alti_onnx.report import style
    from alti_onnx.report.html import render_html

    explanation = classifier.explain("the cat sat on the mat", logit=LogitQuery(target="positive", foil="negative"))
    for page in (render_html(explanation), explanation._repr_html_()):
        values = [float(v) for v in re.findall(r'class="alti-logit-chip" data-part="([^"]+)"', page)]
        np.testing.assert_allclose(values, explanation.logit.attribution, rtol=1e-5, atol=1e-6)
        colors = re.findall(r'class="alti-logit-chip"[^>]*background:(#[0-9a-f]{6})', page)
        peak = np.abs(explanation.logit.attribution).max()
        assert colors == [style.diverging_color(v / peak) for v in explanation.logit.attribution]
        assert len(re.findall('class="alti-logit-part"', page)) == len(explanation.logit.parts)
    assert style.diverging_color(-1) == "#b2182b" and style.diverging_color(0) == "#f7f7f7"
    assert style.diverging_color(1) == "#2166ac" and style.diverging_color(7) == "#2166ac"
    assert "logit-section" not in render_html(classifier.explain("the cat"))


def test_tf_classifier_logit_matches_tensorflows_reference() -> None:
    """tiny-tf-bert (tf2onnx: LayerNorm as GlobalAveragePool means, GELU through 1 - Erfc) against the
    decomposition carried forward in float64 from TensorFlow's own weights (models/tf_bert.py)."""
    folder = FIXTURES / "tiny-tf-bert"
    texts = _texts("tf-bert")
    with Explainer(folder) as explainer, np.load(folder / "expected_logit.npz") as expected:
        queries = [(int(target), None if foil < 0 else int(foil)) for target, foil in expected["queries"]]
        for k, (target, foil) in enumerate(queries):
            batch = explainer.explain(texts, logit=LogitQuery(target=target, foil=foil))
            for t, (text, padded) in enumerate(zip(texts, batch)):
                single = explainer.explain(text, logit=LogitQuery(target=target, foil=foil)).logit
                for found in (single, padded.logit):
                    np.testing.assert_allclose(found.attribution, expected[f"attribution_{t}_{k}"], atol=TOLERANCE, rtol=0)
                    parts = [found.parts["layer 0"], found.parts["layer 1"], found.parts["head"]]
                    np.testing.assert_allclose(parts, expected[f"parts_{t}_{k}"], atol=TOLERANCE, rtol=0)
                    assert found.value == pytest.approx(float(expected[f"value_{t}_{k}"]), abs=TOLERANCE)
                    _assert_sums(found)



@pytest.mark.parametrize("arch", ENCODERS)
def test_every_encoder_family_is_read_linearly(arch: str, tmp_path: Path) -> None:
    """Every encoder exporter's operators have a linear reading: each fixture with a small head on its
    [CLS] output (Gather, Tanh, Gemm) decomposes with parts summing to its logit, padded or not (the
    values themselves are held to the float64 references above on the classifiers)."""
    import shutil

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = tmp_path / arch
    shutil.copytree(FIXTURES / f"tiny-{arch}", folder)
    model = onnx.load(str(folder / "model.onnx"))
    hidden = model.graph.output[0].name
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([numpy_helper.from_array(rng.normal(size=(32, 3)).astype(np.float32), "head_w"),
                                    numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "head_b"),
                                    numpy_helper.from_array(np.array(0, dtype=np.int64), "head_at")])
    model.graph.node.extend([helper.make_node("Gather", [hidden, "head_at"], ["head_in"], axis=1),
                             helper.make_node("Tanh", ["head_in"], ["head_tanh"]),
                             helper.make_node("Gemm", ["head_tanh", "head_w", "head_b"], ["logits"])])
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 3]))
    onnx.save(model, str(folder / "model.onnx"))
    texts = _texts(arch)[:3]
    with Explainer(folder) as explainer:
        batch = explainer.explain(texts, logit=LogitQuery(target=1, foil=2))
        for text, padded in zip(texts, batch):
            alone = explainer.explain(text, logit=LogitQuery(target=1, foil=2)).logit
            _assert_sums(alone)
            logits = explainer.explain(text).outputs["logits"]
            assert alone.value == pytest.approx(float(logits[1] - logits[2]), abs=1e-5)
            np.testing.assert_allclose(padded.logit.attribution, alone.attribution, atol=1e-5)
            assert "head" in alone.parts
