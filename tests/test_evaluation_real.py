"""Faithfulness with PyTorch: gradient methods on the tiny classifier, and ALTI beats random on the real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.slow]

torch = pytest.importorskip("torch")

from alti_onnx import Explainer  # noqa: E402
from alti_onnx.evaluation import evaluate  # noqa: E402
from alti_onnx.evaluation.gradients import GradientModel  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-bert-classifier"
SENTENCES = [
    "the movie was great fun",
    "a terrible boring film",
    "the dog likes the big red car",
    "a quick brown fox jumps over the lazy dog .",
    "the cat sat",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from models.tiny_classifier import build_tiny_classifier_hf

    hf_dir = build_tiny_classifier_hf(tmp_path_factory.mktemp("tiny-classifier") / "hf")
    explainer = Explainer(FIXTURE)
    ids = [e.input_ids for e in explainer.explain(SENTENCES)]
    special = [[j in (0, len(s) - 1) for j in range(len(s))] for s in ids]
    targets = [e.prediction.index for e in explainer.explain(SENTENCES)]
    return hf_dir, explainer, ids, special, targets


def direct_gradient(model, ids: list[int], target: int, dtype=torch.float32) -> tuple[np.ndarray, np.ndarray]:
    """d logit_y / d word embeddings for one unpadded sentence, through input_ids and a hook."""
    model = model.to(dtype)
    captured = {}

    def keep(module, inputs, output):
        output.retain_grad()
        captured["e"] = output

    handle = model.get_input_embeddings().register_forward_hook(keep)
    try:
        logits = model(input_ids=torch.tensor([ids])).logits
        logits[0, target].backward()
    finally:
        handle.remove()
    return captured["e"].grad[0].double().numpy(), captured["e"][0].detach().double().numpy()


def test_gradient_methods_match_autograd_and_finite_differences(tiny):
    hf_dir, explainer, ids, special, targets = tiny
    gm = GradientModel(hf_dir, batch_size=3, ig_steps=32, ig_batch=64)
    probs = np.exp(gm.logits(ids))
    np.testing.assert_allclose(probs / probs.sum(1, keepdims=True), [e.prediction.probabilities for e in explainer.explain(SENTENCES)], atol=1e-4)
    norm = gm.gradient_norm(ids, special, targets)
    gxi = gm.gradient_x_input(ids, special, targets)
    ig = gm.integrated_gradients(ids, special, targets)
    for n, s in enumerate(ids):
        assert norm[n].shape == gxi[n].shape == ig[n].shape == (len(s),)
        assert np.isfinite(norm[n]).all() and np.isfinite(gxi[n]).all() and np.isfinite(ig[n]).all()
        grad, emb = direct_gradient(gm.model, s, targets[n])  # unpadded, not via inputs_embeds
        np.testing.assert_allclose(norm[n], np.linalg.norm(grad, axis=-1), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(gxi[n], (grad * emb).sum(-1), rtol=1e-4, atol=1e-6)
        assert ig[n][0] == 0 and ig[n][-1] == 0  # the baseline keeps [CLS] and [SEP]

    # gradient norm against central finite differences along the gradient, in float64
    model64 = gm.model.to(torch.float64)
    s, y = ids[3], targets[3]
    e = model64.get_input_embeddings()(torch.tensor([s])).detach()
    mask = torch.ones(1, len(s), dtype=torch.long)

    def f(embeds):
        with torch.no_grad():
            return float(model64(inputs_embeds=embeds, attention_mask=mask).logits[0, y])

    grad64, _ = direct_gradient(model64, s, y, torch.float64)
    h = 1e-4
    for j in (1, 4, len(s) - 2):
        direction = torch.zeros_like(e)
        direction[0, j] = torch.from_numpy(grad64[j] / np.linalg.norm(grad64[j]))
        fd = (f(e + h * direction) - f(e - h * direction)) / (2 * h)
        assert fd == pytest.approx(norm[3][j], rel=1e-3)

    # integrated gradients: completeness, sum_j a_j ~ f(x) - f(baseline)
    keep = torch.tensor([[1.0 if sp else 0.0 for sp in special[3]]], dtype=torch.float64)[..., None]
    gap = f(e) - f(e * keep)
    assert ig[3].sum() == pytest.approx(gap, rel=0.05, abs=0.05)
    gm.model.float()


def test_evaluate_with_gradients_on_tiny(tiny):
    hf_dir, explainer, *_ = tiny
    result = evaluate(explainer, SENTENCES, hf_model=hf_dir)
    for name, m in result.methods.items():
        assert m.computed, (name, m.reason)
        assert np.isfinite(m.scores.comprehensiveness).all()


def test_wrong_weights_are_reported(tiny, tmp_path):
    from models.tiny_classifier import build_tiny_classifier_hf

    _, explainer, *_ = tiny
    other = build_tiny_classifier_hf(tmp_path / "other", seed=99)
    result = evaluate(explainer, SENTENCES, methods=["gradient norm"], hf_model=other)
    assert "not the ONNX model's weights" in result.methods["gradient norm"].reason


def test_alti_beats_random_on_the_real_classifier():
    sentiment = pytest.importorskip("models.sentiment")
    rotten = pytest.importorskip("models.rotten_tomatoes")
    model_dir = sentiment.build_sentiment_classifier()
    texts = [ex.text for ex in rotten.load_split("test")[:60]]
    result = evaluate(Explainer(model_dir), texts, methods=["ALTI", "random"], seed=0)
    alti = result.methods["ALTI"].scores.mean()
    rand = result.methods["random"].scores.mean()
    assert alti["comprehensiveness_aopc"] > rand["comprehensiveness_aopc"]
