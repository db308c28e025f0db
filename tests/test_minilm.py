"""The real all-MiniLM-L6-v2, exported by the project's own `export`, against the float64 reference."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from alti_onnx import Explainer  # noqa: E402
from models.minilm import build_minilm, hf_minilm_dir  # noqa: E402
from models.reference import reference_alti  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TEXTS = [
    "The movie was surprisingly good, with a clever plot and warm performances.",
    "Terrible.",
    "A long, meandering story about a family that never quite finds its footing, "
    "though the actors do their best with thin material and an overlong third act.",
]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(build_minilm())


@pytest.fixture(scope="module")
def references(explainer: Explainer) -> list:
    model = transformers.AutoModel.from_pretrained(hf_minilm_dir(), attn_implementation="eager")
    out = []
    for text in TEXTS:
        encoding = explainer.tokenizer.encode(text)
        out.append((encoding.ids, reference_alti(model, encoding.ids, token_type_ids=encoding.type_ids)))
    return out


def test_blocks_found(explainer: Explainer) -> None:
    assert [(b.layer, b.num_heads, b.head_size, b.hidden_size, b.kind) for b in explainer.blocks] == [
        (layer, 12, 32, 384, "post") for layer in range(6)
    ]


def test_single_texts_match_reference(explainer: Explainer, references: list) -> None:
    for text, (ids, want) in zip(TEXTS, references):
        got = explainer.explain(text)
        assert got.input_ids == ids
        np.testing.assert_allclose(got.contributions, want.contributions, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(got.rollout, want.rollout, atol=TOLERANCE, rtol=0)
        assert got.reconstruction_error.max() < TOLERANCE


def test_padded_batch_matches_reference(explainer: Explainer, references: list) -> None:
    for got, (ids, want) in zip(explainer.explain(TEXTS), references):
        assert got.input_ids == ids
        np.testing.assert_allclose(got.contributions, want.contributions, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(got.rollout, want.rollout, atol=TOLERANCE, rtol=0)
        assert got.reconstruction_error.max() < TOLERANCE


def test_rewritten_model_keeps_original_outputs(explainer: Explainer) -> None:
    batch = explainer.text_encoder.encode(TEXTS)
    feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "token_type_ids": batch.token_type_ids}
    plain = ort.InferenceSession(str(explainer.files.onnx), providers=["CPUExecutionProvider"])
    (want,) = plain.run(["last_hidden_state"], feeds)
    outputs, _ = explainer.session.run(batch)
    np.testing.assert_array_equal(outputs["last_hidden_state"], want)
