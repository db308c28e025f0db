"""The real SmolLM2-135M-Instruct (30 pre-LN layers, RMSNorm, rotary, 9 query heads sharing 3
key/value heads), exported by the project's own `export`, against the float64 reference."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

from alti_onnx import Explainer  # noqa: E402
from models.reference import reference_alti  # noqa: E402
from models.smollm import build_smollm2, load_smollm2  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

PROMPT = "The capital of France is Paris, and the capital of Germany is"
SHORT = "Two plus two equals"
TOLERANCE = 5e-4


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    return Explainer(build_smollm2())


@pytest.fixture(scope="module")
def torch_model():
    return load_smollm2()


@pytest.fixture(scope="module")
def references(explainer: Explainer, torch_model) -> list:
    # the reference converts the model to float64 in place: take a copy, the next-token test needs float32
    import copy

    model = copy.deepcopy(torch_model)
    return [reference_alti(model, explainer.tokenizer.encode(text).ids) for text in (PROMPT, SHORT)]


def test_blocks_found(explainer: Explainer) -> None:
    assert [(b.layer, b.num_heads, b.head_size, b.hidden_size, b.kind) for b in explainer.blocks] == [
        (layer, 9, 64, 576, "pre") for layer in range(30)
    ]


def test_prompt_matches_reference(explainer: Explainer, references: list) -> None:
    got = explainer.explain(PROMPT)
    assert 12 <= len(got.tokens) <= 25
    np.testing.assert_allclose(got.contributions, references[0].contributions, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(got.rollout, references[0].rollout, atol=TOLERANCE, rtol=0)
    assert got.default_target == len(got.tokens) - 1
    # The residual stream reaches |y| ~ 2.5e4 (massive activations), so float32 rounding alone gives
    # absolute errors near 1e-3: the self-check is relative to each layer's largest |y|.
    batch = explainer.text_encoder.encode([PROMPT])
    _, tensors = explainer.session.run(batch)
    relative = [error / np.abs(t.output).max() for error, t in zip(got.reconstruction_error, tensors)]
    assert max(relative) < 1e-5


def test_padded_batch_matches_reference(explainer: Explainer, references: list) -> None:
    batch = explainer.explain([PROMPT, SHORT])
    assert len(batch[0].tokens) > len(batch[1].tokens)
    for got, want in zip(batch, references):
        np.testing.assert_allclose(got.contributions, want.contributions, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(got.rollout, want.rollout, atol=TOLERANCE, rtol=0)
        assert got.default_target == len(got.tokens) - 1


def test_next_token_is_the_models_own(explainer: Explainer, torch_model) -> None:
    got = explainer.explain(PROMPT)
    with torch.no_grad():
        logits = torch_model.float()(torch.tensor([got.input_ids])).logits[0, -1]
    assert got.next_token.index == int(logits.argmax())
    assert got.next_token.label.strip() == "Berlin"


def test_rewritten_model_keeps_original_outputs(explainer: Explainer) -> None:
    batch = explainer.text_encoder.encode([PROMPT, SHORT])
    feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "position_ids": batch.position_ids}
    plain = ort.InferenceSession(str(explainer.files.onnx), providers=["CPUExecutionProvider"])
    (want,) = plain.run(["logits"], feeds)
    outputs, _ = explainer.session.run(batch)
    np.testing.assert_array_equal(outputs["logits"], want)
