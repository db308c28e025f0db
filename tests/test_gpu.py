"""Explanations on a GPU (``device="cuda"``) against the same explanations on the CPU, where a GPU is
usable (CuPy and numba-cuda see one); skipped elsewhere. The CPU road of the same code (IO binding,
DLPack, the math in a namespace that is not NumPy) is tested everywhere by tests/test_array_namespace.py."""

from __future__ import annotations

import numpy as np
import pytest

from alti_onnx import Explainer
from alti_onnx.errors import InputError
from alti_onnx.runtime.devices import resolve_device
from tests.fixture_cases import FIXTURES


def _gpu_usable() -> bool:
    try:
        return resolve_device("cuda").name == "cuda"
    except InputError:
        return False


pytestmark = pytest.mark.skipif(not _gpu_usable(), reason="no GPU usable by CuPy and numba-cuda here")
#: float32 on both sides, sums in another order (the kernel accumulates in float64 on the GPU too)
WITHIN = 1e-5


@pytest.mark.parametrize("family", ["bert", "llama", "gemma3", "gpt-neox"])
def test_an_explanation_on_the_gpu_equals_the_cpu(family):
    texts = ["the quick brown fox jumps over the lazy dog", "a short one"]
    with Explainer(FIXTURES / f"tiny-{family}", device="cpu") as cpu, \
            Explainer(FIXTURES / f"tiny-{family}", device="cuda") as gpu:
        assert gpu.device.name == "cuda"
        want, got = cpu.explain(texts, baselines=True), gpu.explain(texts, baselines=True)
    for g, w in zip(got, want):
        for name in ("contributions", "rollout", "attention", "norm_based"):
            np.testing.assert_allclose(getattr(g, name), getattr(w, name), rtol=0, atol=WITHIN)
        assert np.all(g.reconstruction_error < WITHIN)


def test_alti_plus_on_the_gpu_equals_the_cpu():
    with Explainer(FIXTURES / "tiny-marian-seq2seq", device="cpu") as cpu, \
            Explainer(FIXTURES / "tiny-marian-seq2seq", device="cuda") as gpu:
        want, got = cpu.explain("the cat sat", "le chat"), gpu.explain("the cat sat", "le chat")
    np.testing.assert_allclose(got.combined, want.combined, rtol=0, atol=WITHIN)
