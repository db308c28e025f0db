"""Models over 2 GB: protobuf cannot hold them in one message, so their weights never go through one.

The model is tiny-bert with its token embedding grown past 2 GiB (17 million rows; the rows past
the tokenizer's are zero and the data file keeps them as a hole, so it costs no disk). Explaining
it must give tiny-bert's numbers exactly, from the API and the CLI; ``instrument`` must write it
(weights beside the output), and the explaining process must hold the weights once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from cli_helpers import cli_env, run_cli
from fixture_cases import FIXTURES
from onnx import numpy_helper

from alti_onnx import Explainer

TEXT = "the quick brown fox jumps over the lazy dog"
#: Rows of the grown embedding: 17e6 x 32 float32 = 2.18 GB, past protobuf's 2 GiB.
ROWS = 17_000_000


def _embedding_table(model: onnx.ModelProto) -> str:
    ids = model.graph.input[0].name
    return next(n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[1] == ids)


@pytest.fixture(scope="module")
def large_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("large") / "tiny-bert-2gb"
    folder.mkdir()
    for name in ("tokenizer.json", "config.json", "texts.json"):
        (folder / name).write_bytes((FIXTURES / "tiny-bert" / name).read_bytes())
    model = onnx.load(str(FIXTURES / "tiny-bert" / "model.onnx"))
    table = _embedding_table(model)
    with open(folder / "model.onnx.data", "wb") as data:
        for tensor in model.graph.initializer:
            array = numpy_helper.to_array(tensor)
            offset = -(-data.tell() // 4096) * 4096
            data.seek(offset)
            data.write(array.tobytes())
            length = array.nbytes
            if tensor.name == table:
                length = ROWS * array.shape[1] * array.itemsize
                data.truncate(offset + length)  # the grown rows: a hole, read back as zeros
                data.seek(offset + length)
                tensor.dims[0] = ROWS
            for field in ("raw_data", "float_data", "int64_data", "int32_data"):
                tensor.ClearField(field)
            for key, value in (("location", "model.onnx.data"), ("offset", str(offset)), ("length", str(length))):
                tensor.external_data.add(key=key, value=value)
            tensor.data_location = onnx.TensorProto.EXTERNAL
    with open(folder / "model.onnx", "wb") as handle:
        handle.write(model.SerializeToString())
    assert (folder / "model.onnx.data").stat().st_size > 2**31
    return folder


def test_a_model_over_2gb_explains_with_the_small_models_numbers(large_model, tmp_path, monkeypatch):
    monkeypatch.setenv("ALTI_ONNX_CACHE", str(tmp_path / "cache"))
    explainer = Explainer(large_model)
    assert explainer.prepared.embedding_rows["input_ids"] == ROWS
    big, small = explainer.explain([TEXT, "a cat"]), Explainer(FIXTURES / "tiny-bert").explain([TEXT, "a cat"])
    for got, want in zip(big, small):
        np.testing.assert_array_equal(got.contributions, want.contributions)
        np.testing.assert_array_equal(got.outputs["last_hidden_state"], want.outputs["last_hidden_state"])
    # the segments refer to the weights where they are: the cache holds no copy of them
    assert sum(p.stat().st_size for p in explainer.prepared.directory.iterdir()) < 10_000_000


def test_the_cli_explains_and_instruments_it(large_model, tmp_path):
    env = cli_env(ALTI_ONNX_CACHE=str(tmp_path / "cache"))
    path = tmp_path / "explanation.json"
    done = run_cli("explain", large_model, "--text", TEXT, "--json", path, env=env)
    assert done.returncode == 0, done.stderr
    want = Explainer(FIXTURES / "tiny-bert").explain(TEXT).attribution()
    np.testing.assert_array_equal(json.loads(path.read_text())["attribution"], want)
    out = tmp_path / "instrumented" / "model.onnx"
    done = run_cli("instrument", large_model, out, env=env)
    assert done.returncode == 0, done.stderr
    written = onnx.load(str(out), load_external_data=False)
    assert len(written.graph.output) == 1 + 4 * 2
    assert (out.parent / "model.onnx.data").stat().st_size >= ROWS * 32 * 4
    assert {t.external_data[0].value for t in written.graph.initializer if t.external_data} == {"model.onnx.data"}


_PEAK = """
import json, resource, sys
from alti_onnx import Explainer
explainer = Explainer(sys.argv[1])
explainer.explain("the quick brown fox jumps over the lazy dog")
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
"""


def test_the_weights_are_held_once(large_model, tmp_path):
    """Peak memory under W + 1.5 GB (W the weights' bytes; the activations here are tiny): a first
    run, which prepares the model, and a second, from the prepared cache."""
    weights = (large_model / "model.onnx.data").stat().st_size
    env = {**os.environ, "ALTI_ONNX_CACHE": str(tmp_path / "cache")}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _PEAK, str(large_model)], capture_output=True, text=True,
                              env=env, check=False)
        assert done.returncode == 0, done.stderr
        peak = json.loads(done.stdout.strip().splitlines()[-1])
        assert peak < weights + 1.5e9, f"peak {peak / 1e9:.2f} GB for {weights / 1e9:.2f} GB of weights"
