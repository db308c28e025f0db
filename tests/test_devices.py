"""Choosing where the model runs and the math is computed (alti_onnx/runtime/devices.py), the IO-binding
run a GPU takes (``run_bound``), and the one-line errors of ``--device``."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest

from alti_onnx import Explainer
from alti_onnx.errors import InputError
from alti_onnx.runtime.devices import Device, default_providers, host, resolve_device
from alti_onnx.runtime.sessions import run_bound
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.fixture_cases import FIXTURES

HAS_CUPY = importlib.util.find_spec("cupy") is not None

no_gpu = pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed here: cuda may be usable")


def test_cpu_is_numpy_on_the_cpu_provider():
    device = resolve_device("cpu")
    assert (device.name, device.xp, device.providers, device.bound_outputs) == ("cpu", np, ["CPUExecutionProvider"], None)
    assert device.on_host
    assert resolve_device("cpu", ["CPUExecutionProvider"]).providers == ["CPUExecutionProvider"]


@no_gpu
def test_auto_without_a_gpu_is_the_cpu_with_the_default_providers():
    device = resolve_device("auto")
    assert device.name == "cpu" and device.xp is np and device.providers == default_providers()
    assert resolve_device(None).providers == default_providers()


@no_gpu
def test_cuda_without_a_gpu_is_one_clear_error():
    with pytest.raises(InputError, match=r"needs a CUDA GPU, and none is usable here: CuPy is not installed"):
        resolve_device("cuda")
    with pytest.raises(InputError, match="needs a CUDA GPU"):
        Explainer(FIXTURES / "tiny-bert", device="cuda")


@pytest.mark.parametrize("bad", ["gpu", "CUDA", "", "cuda:0"])
def test_an_unknown_device_is_refused(bad):
    with pytest.raises(InputError, match=r"the device must be one of auto, cpu, cuda, got"):
        resolve_device(bad)


def test_a_device_object_is_taken_as_it_is_and_providers_override_its_own():
    import array_api_strict

    device = Device("cpu", array_api_strict, ["CPUExecutionProvider"], "cpu")
    assert resolve_device(device) is device
    assert not device.on_host
    moved = resolve_device(device, ["CPUExecutionProvider", "CPUExecutionProvider"])
    assert moved.xp is array_api_strict and moved.providers == ["CPUExecutionProvider"] * 2


def test_the_bound_run_equals_the_plain_run_and_hands_over_ortvalues():
    """IO binding on the CPU: what a GPU run does with its outputs (left where onnxruntime wrote them, fed
    to the next segment as they are), checked against ``session.run``."""
    with Explainer(FIXTURES / "tiny-bert", device="cpu") as explainer:
        batch = explainer.text_encoder.encode(["hello world", "a longer text here"])
        feeds = explainer.session.batch_feeds(batch)
        live, plain = dict(feeds), dict(feeds)
        for segment, session in zip(explainer.session.segments, explainer.session.sessions):
            bound = run_bound(session, segment.outputs, {n: live[n] for n in segment.inputs}, "cpu")
            assert all(isinstance(v, ort.OrtValue) for v in bound)
            want = session.run(segment.outputs, {n: plain[n] for n in segment.inputs})
            for got, expected in zip(bound, want):
                np.testing.assert_array_equal(host(got), expected)
            live.update(zip(segment.outputs, bound))  # OrtValues feed the next segment
            plain.update(zip(segment.outputs, want))


def test_host_reads_every_kind_of_tensor():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert host(array) is array
    np.testing.assert_array_equal(host(ort.OrtValue.ortvalue_from_numpy(array)), array)
    import array_api_strict

    np.testing.assert_array_equal(host(array_api_strict.asarray(array)), array)


@no_gpu
@pytest.mark.parametrize("command", [["explain", "--text", "hello"], ["serve"],
                                     ["bench", "--lengths", "8", "--batch-sizes", "1"]])
def test_device_cuda_without_a_gpu_is_one_line_from_every_command(command):
    assert_one_line_error(run_cli(command[0], FIXTURES / "tiny-bert", *command[1:], "--device", "cuda"),
                          "needs a CUDA GPU", "--device cpu or auto")


def test_device_cuda_in_batch_and_a_bad_device_are_one_line(tmp_path):
    corpus = tmp_path / "in.txt"
    corpus.write_text("hello\n")
    if not HAS_CUPY:
        assert_one_line_error(run_cli("batch", FIXTURES / "tiny-bert", "--input", corpus, "--output", tmp_path / "o.jsonl",
                                      "--device", "cuda"), "needs a CUDA GPU")
        assert not (tmp_path / "o.jsonl").exists()
    assert_one_line_error(run_cli("explain", FIXTURES / "tiny-bert", "--text", "hi", "--device", "tpu"),
                          "the device must be one of auto, cpu, cuda", "'tpu'")
    assert_one_line_error(run_cli("batch", FIXTURES / "tiny-bert", "--input", corpus, "--output", tmp_path / "r",
                                  "--ray", "local", "--device", "cpu"), "--device is for a batch on this machine")
