"""ALTI on the committed tiny encoders equals the float64 PyTorch reference (no torch needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from alti_onnx import Explainer
from fixture_cases import FIXTURES, TOLERANCE, assert_matches, load_expected

ARCHS = ["bert", "roberta", "distilbert", "electra", "xlm-roberta"]


@pytest.fixture(scope="module", params=ARCHS)
def case(request):
    arch = request.param
    return arch, Explainer(FIXTURES / f"tiny-{arch}"), *load_expected(arch)


def test_single_texts_match_reference(case):
    _, explainer, texts, expected = case
    for text, want in zip(texts, expected):
        assert_matches(explainer.explain(text), want)


def test_padded_batch_matches_reference(case):
    _, explainer, texts, expected = case
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
    payload = json.loads(explainer.explain(texts[0]).to_json(target=1))
    assert set(payload) == {"tokens", "input_ids", "contributions", "rollout", "target", "attribution", "reconstruction_error"}
    assert payload["target"] == 1
    np.testing.assert_allclose(payload["contributions"], expected[0]["contributions"], atol=TOLERANCE)
    np.testing.assert_allclose(payload["attribution"], expected[0]["rollout"][-1, 1], atol=TOLERANCE)
