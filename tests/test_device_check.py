"""The GPU machine's check (scripts/device-check.sh) and what travels there (models/device_pack.py),
run here on a tiny fixture and on the CPU: a check that only ever runs on a lent GPU must not first
fail there for a typo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from alti_onnx import Explainer
from models.device_pack import pack, unpack
from tests.fixture_cases import FIXTURES

ROOT = Path(__file__).parent.parent


def test_a_packed_model_travels_in_float16_and_arrives_in_float32(tmp_path):
    source = FIXTURES / "tiny-bert"
    size = pack(source, tmp_path / "packed")
    original = onnx.load(str(source / "model.onnx"))
    float_bytes = sum(numpy_helper.to_array(t).nbytes for t in original.graph.initializer
                      if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 1)
    weights = (tmp_path / "packed" / "weights.npz").stat().st_size
    assert weights < 0.6 * float_bytes  # half their bytes, and the npz's headers
    assert size == sum(p.stat().st_size for p in (tmp_path / "packed").iterdir())
    arrived = onnx.load(str(unpack(tmp_path / "packed", tmp_path / "model") / "model.onnx"))
    assert [n.op_type for n in arrived.graph.node] == [n.op_type for n in original.graph.node]
    changed = 0
    for before, after in zip(original.graph.initializer, arrived.graph.initializer):
        want, got = numpy_helper.to_array(before), numpy_helper.to_array(after)
        assert got.dtype == want.dtype and got.shape == want.shape
        expected = want.astype(np.float16).astype(np.float32) if want.dtype == np.float32 and want.size > 1 else want
        np.testing.assert_array_equal(got, expected)
        changed += not np.array_equal(got, want)
    assert changed > 0  # the float16 rounding is there: another model, not the original
    feeds = {"input_ids": np.array([[2, 5, 7, 3]], dtype=np.int64), "attention_mask": np.ones((1, 4), dtype=np.int64)}
    names = [i.name for i in original.graph.input]
    feeds = {k: v for k, v in feeds.items() if k in names} | ({"token_type_ids": np.zeros((1, 4), np.int64)}
                                                             if "token_type_ids" in names else {})
    want = ort.InferenceSession(str(source / "model.onnx")).run(None, feeds)[0]
    got = ort.InferenceSession(str(tmp_path / "model" / "model.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, atol=1e-2)
    with Explainer(tmp_path / "model") as explainer:  # explained as exactly as any model (its own self-check)
        assert np.all(explainer.explain("hello world").reconstruction_error < 1e-5)


def test_the_device_check_runs_end_to_end_on_the_cpu(tmp_path):
    packed = tmp_path / "packed"
    pack(FIXTURES / "tiny-bert", packed / "minilm")
    env = {**os.environ, "ALTI_DEVICE_CHECK_DIR": str(packed), "ALTI_DEVICE_CHECK_DEVICE": "cpu",  # run from /
           "ALTI_DEVICE_CHECK_INSTALL": "0", "ALTI_DEVICE_CHECK_LENGTHS": "8", "ALTI_DEVICE_CHECK_BATCHES": "1,4",
           "ALTI_DEVICE_CHECK_LONG": "0", "PYTHON": sys.executable, "OUT": str(tmp_path / "record"),
           "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device-check.sh"), "run"], env=env, capture_output=True,
                          text=True, timeout=900, cwd="/")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    record = json.loads((tmp_path / "record" / "device-record.json").read_text())
    steps = record["steps"]
    assert steps["tests"]["status"] == "passed", steps["tests"]["tail"]
    assert steps["tests"]["counts"]["passed"] > 20 and steps["tests"]["counts"]["skipped"] >= 1  # test_gpu.py: no GPU
    assert steps["minilm"]["status"] == "passed" and "shaped" not in steps
    assert record["minilm"]["device"] == "cpu"
    results = record["minilm"]["results"]
    assert [(r["seq_len"], r["batch_size"]) for r in results] == [(8, 1), (8, 4)]
    assert all(r["explain_s"] > 0 and r["forward_s"] > 0 for r in results)
    assert record["targets"] == {}  # issue 27's targets are read at 128 and 512 tokens
    assert record["versions"]["onnxruntime"] == ort.__version__


def test_the_device_check_refuses_a_missing_package(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device-check.sh"), "run"], capture_output=True, text=True,
                          env={**os.environ, "ALTI_DEVICE_CHECK_DIR": str(tmp_path / "none")}, timeout=60)
    assert done.returncode == 2 and "run 'prepare' first" in done.stderr


@pytest.mark.torch
def test_a_model_of_a_configs_shape_is_exported_and_explained(tmp_path):
    """What the device check times at 2,048 tokens when SmolLM2's weights cannot travel: a model of the
    config's shape with random weights, exported with the machine's PyTorch (here Llama's tiny fixture)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from models.device_pack import shaped

    folder = shaped(FIXTURES / "tiny-llama", tmp_path / "shaped")
    assert (folder / "tokenizer.json").exists()
    with Explainer(folder) as explainer:
        assert len(explainer.blocks) == 2 and explainer.causal
        explained = explainer.explain("the cat sat on the mat")
    assert np.all(explained.reconstruction_error < 1e-5)
    np.testing.assert_allclose(explained.rollout[-1].sum(-1), 1.0, atol=1e-9)
