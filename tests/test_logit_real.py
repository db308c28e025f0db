"""Logit decompositions of the real models against the float64 references (models/reference_logit.py):
the default sentiment classifier (MiniLM, post-LN, fine-tuned) and SmolLM2-135M-Instruct (pre-LN, GQA)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from alti_onnx import Explainer  # noqa: E402
from alti_onnx.results.logit import LogitQuery  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

REVIEWS = ["a gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés from start to finish,"
           " and the script assumes that not only would subtlety be lost on the target audience, but that it's also"
           " too stupid to realize that they've already seen this exact same movie a hundred times"]
PROMPTS = ["The capital of France is", "When Mary and John went to the store, John gave a drink to"]
#: fp32 ONNX against the float64 model, absolute, on parts of magnitude 0.1 to 10 (measured: at most
#: 8e-7 on the classifier, 5e-6 on SmolLM2)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def sentiment():
    from models.sentiment import build_sentiment_classifier, hf_sentiment_dir

    folder = build_sentiment_classifier()
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(hf_sentiment_dir()), attn_implementation="eager")
    with Explainer(folder) as explainer:
        yield explainer, model


@pytest.mark.parametrize("foil", [None, 0])
def test_sentiment_classifier_matches_the_reference(sentiment, foil) -> None:
    from models.reference_logit import reference_classifier_logit

    explainer, model = sentiment
    batch = explainer.explain(REVIEWS, logit=LogitQuery(target=1, foil=foil))
    for text, padded in zip(REVIEWS, batch):
        encoding = explainer.tokenizer.encode(text)
        ref = reference_classifier_logit(copy.deepcopy(model), encoding.ids, encoding.type_ids, 1, foil)
        single = explainer.explain(text, logit=LogitQuery(target=1, foil=foil)).logit
        for found in (single, padded.logit):
            np.testing.assert_allclose(found.attribution, ref.attribution, atol=TOLERANCE, rtol=0)
            for name, value in ref.parts.items():
                assert found.parts[name] == pytest.approx(value, abs=TOLERANCE), name
            assert found.value == pytest.approx(ref.value, abs=TOLERANCE)
            assert found.reconstruction_error < 1e-4


@pytest.fixture(scope="module")
def smollm():
    pytest.importorskip("gguf")
    from models.smollm import build_smollm2, load_smollm2

    with Explainer(build_smollm2()) as explainer:
        yield explainer, load_smollm2()


def test_smollm2_alti_logit_matches_the_reference(smollm) -> None:
    from models.reference_logit import reference_alti_logit

    explainer, model = smollm
    foil = explainer.tokenizer.encode(" London", add_special_tokens=False).ids[0]
    batch = explainer.explain(PROMPTS, logit=LogitQuery(foil=foil))
    for text, padded in zip(PROMPTS, batch):
        single = explainer.explain(text, logit=LogitQuery(foil=foil)).logit
        ref = reference_alti_logit(copy.deepcopy(model), explainer.tokenizer.encode(text).ids, single.target.index, foil)
        for found in (single, padded.logit):
            np.testing.assert_allclose(found.attribution, ref.attribution, atol=TOLERANCE, rtol=0)
            np.testing.assert_allclose(found.per_layer, ref.per_layer, atol=TOLERANCE, rtol=0)
            for name, value in ref.parts.items():
                assert found.parts[name] == pytest.approx(value, abs=TOLERANCE), name
            assert found.value == pytest.approx(ref.value, abs=TOLERANCE)
            assert found.reconstruction_error < 1e-4
