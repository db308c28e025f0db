"""The GPU distance kernel (alti_onnx/decomposition/distances_cuda.py) against the CPU kernel on random
inputs: under numba's CUDA simulator in CI (a subprocess: the simulator is chosen when numba.cuda is
first imported), and on the GPU itself where one is present."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent("""
    import numpy as np
    from alti_onnx.decomposition.distances import manhattan_distances
    from alti_onnx.decomposition.distances_cuda import manhattan_distances_cuda

    rng = np.random.default_rng(7)
    cases = 0
    for heads, rows, columns, width, first_row, causal in [(2, 5, 5, 4, 0, False), (3, 4, 7, 3, 2, True),
                                                          (1, 3, 3, 6, 0, True), (4, 6, 6, 5, 0, False)]:
        probs = rng.random((heads, rows, columns))
        if causal:  # rows first_row.. of a causal attention: nothing from a later column
            probs *= np.arange(columns)[None, None, :] <= (np.arange(rows) + first_row)[None, :, None]
        probs /= np.maximum(probs.sum(-1, keepdims=True), 1e-300)
        vectors = rng.normal(size=(columns, heads, width))
        residual = rng.normal(size=(columns, width))
        target = rng.normal(size=(rows, width))
        want = np.empty((rows, columns))
        manhattan_distances(probs, vectors, residual, target, want, first_row)
        got = np.empty((rows, columns))
        manhattan_distances_cuda(probs, vectors, residual, target, got, first_row)
        assert np.allclose(got, want, rtol=0, atol=1e-12), (heads, rows, columns, np.abs(got - want).max())
        if causal:  # a pair no head attends to, off the diagonal, is the target's own norm
            assert np.allclose(got[0, -1], np.abs(target[0]).sum())
        cases += 1
    from numba import cuda  # device arrays in, nothing copied back: the caller reads the result
    on_device = cuda.device_array((rows, columns))
    manhattan_distances_cuda(*(cuda.to_device(a) for a in (probs, vectors, residual, target)), on_device, first_row)
    assert np.allclose(on_device.copy_to_host(), want, rtol=0, atol=1e-12)
    print("ok", cases)
""")


def _run(simulated: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1" if simulated else "0"}
    return subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=600)


def test_the_simulated_gpu_kernel_equals_the_cpu_kernel():
    done = _run(simulated=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok", "4"]


def test_the_gpu_kernel_equals_the_cpu_kernel_on_a_gpu():
    from numba import cuda

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" or not cuda.is_available():
        pytest.skip("no CUDA GPU on this machine")
    done = _run(simulated=False)
    assert done.returncode == 0, done.stderr[-2000:]
