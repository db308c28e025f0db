"""ALTI on the committed tiny fixtures equals the float64 PyTorch reference (no torch needed): every
encoder and decoder, single texts and padded batches; then the encoders' attribution and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alti_onnx import Explainer
from fixture_cases import DECODERS, ENCODERS, FIXTURES, TOLERANCE, assert_matches, block_kind, load_expected


def open_case(arch: str):
    return arch, Explainer(FIXTURES / f"tiny-{arch}"), *load_expected(arch)


@pytest.fixture(scope="module", params=ENCODERS + DECODERS)
def any_case(request):
    return open_case(request.param)


@pytest.fixture(scope="module", params=ENCODERS)
def case(request):
    return open_case(request.param)


def test_every_block_is_read_as_its_familys_kind(any_case):
    """The kind comes from the structure of each whole block: a misread one (ModernBERT's first layer,
    which has no norm before attention, taken for post-LN) would be measured against the wrong norm."""
    arch, explainer, _, expected = any_case
    assert [b.kind for b in explainer.blocks] == [block_kind(arch)] * len(expected[0]["contributions"])


def test_single_texts_match_reference(any_case):
    _, explainer, texts, expected = any_case
    for text, want in zip(texts, expected):
        assert_matches(explainer.explain(text), want)


def test_padded_batch_matches_reference(any_case):
    _, explainer, texts, expected = any_case
    lengths = [len(e["input_ids"]) for e in expected]
    assert len(set(lengths)) > 1, "the batch must mix lengths so padding is exercised"
    for explanation, want in zip(explainer.explain(texts), expected):
        assert_matches(explanation, want)


def test_attribution_is_last_rollout_row(case):
    _, explainer, texts, expected = case
    explanation = explainer.explain(texts[1])
    np.testing.assert_allclose(explanation.attribution(), expected[1]["rollout"][-1, 0], atol=TOLERANCE)
    np.testing.assert_allclose(explanation.attribution(3), expected[1]["rollout"][-1, 3], atol=TOLERANCE)


def test_json_has_the_documented_keys_and_values(case):
    _, explainer, texts, expected = case
    explanation = explainer.explain(texts[0])
    payload = json.loads(explanation.to_json(1))
    assert set(payload) == {"record_version", "layout", "tokens", "input_ids", "contributions", "rollout", "target",
                            "attribution", "reconstruction_error"} | ({"prediction"} if explanation.prediction else set())
    assert payload["target"] == 1
    np.testing.assert_allclose(payload["contributions"], expected[0]["contributions"], atol=TOLERANCE)
    np.testing.assert_allclose(payload["attribution"], expected[0]["rollout"][-1, 1], atol=TOLERANCE)
