"""API behaviour beyond the numbers: no torch at inference, the self-check, providers."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alti_onnx import Explainer, SelfCheckError
from alti_onnx.runtime.devices import default_providers

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-bert"


def test_explaining_never_imports_torch():
    code = (
        "import sys; from alti_onnx import Explainer; from alti_onnx import cli; "
        f"e = Explainer({str(FIXTURE)!r}).explain('the cat sat'); "
        "assert e.contributions.shape[0] == 2; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_self_check_catches_a_wrong_description():
    explainer = Explainer(FIXTURE)
    honest = explainer.explain("the cat sat")
    assert honest.reconstruction_error.max() < 1e-5
    first = explainer.blocks[0]
    explainer.blocks[0] = dataclasses.replace(first, out_proj_weight=first.out_proj_weight * 1.05)
    with pytest.raises(SelfCheckError, match="layer 0"):
        explainer.explain("the cat sat")
    unchecked = explainer.explain("the cat sat", check=False)
    assert unchecked.reconstruction_error[0] > 1e-3
    assert unchecked.reconstruction_error[1] == pytest.approx(honest.reconstruction_error[1])


def test_default_providers_prefer_cuda_only_with_a_driver():
    providers = default_providers()
    assert providers[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in providers) == (
        Path("/proc/driver/nvidia/version").exists() and "CUDAExecutionProvider" in __import__("onnxruntime").get_available_providers()
    )


@pytest.mark.skipif("CUDAExecutionProvider" not in default_providers(), reason="no CUDA GPU on this machine")
def test_cuda_provider_matches_cpu():
    cpu = Explainer(FIXTURE, providers=["CPUExecutionProvider"]).explain("the cat sat on the mat")
    gpu = Explainer(FIXTURE, providers=["CUDAExecutionProvider"]).explain("the cat sat on the mat")
    np.testing.assert_allclose(gpu.contributions, cpu.contributions, atol=1e-5)
