"""The compiled distance kernel against the formula it computes, written out in NumPy."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alti_onnx.decomposition.distances import manhattan_distances


def direct_distances(probs, vectors, residual, target):
    """||target_i - T~[i, j]||_1 with T~ built whole, in float64."""
    transformed = np.einsum("hij,jhd->jid", probs.astype(np.float64), vectors.astype(np.float64))
    diagonal = np.arange(len(vectors))
    transformed[diagonal, diagonal] += residual
    return np.abs(target[None].astype(np.float64) - transformed).sum(-1).T


cases = st.tuples(
    st.integers(1, 13),  # sequence length: every remainder of the four-row passes
    st.integers(1, 8),  # heads: every remainder of the three-head passes
    st.integers(1, 40),  # width
    st.booleans(),  # causal: whole blocks of zero weights are skipped
    st.sampled_from([np.float32, np.float64]),
    st.integers(0, 2**32 - 1),
)


@settings(max_examples=80, deadline=None)
@given(cases)
def test_kernel_equals_the_formula(case):
    seq, heads, width, causal, dtype, seed = case
    rng = np.random.default_rng(seed)
    probs = rng.random((heads, seq, seq))
    if causal:
        probs = np.tril(probs)
    probs /= probs.sum(-1, keepdims=True)
    probs = probs.astype(dtype)
    vectors = rng.standard_normal((seq, heads, width)).astype(dtype)
    residual = rng.standard_normal((seq, width)).astype(dtype)
    target = rng.standard_normal((seq, width)).astype(dtype)

    got = np.full((seq, seq), np.nan, dtype=dtype)
    manhattan_distances(probs, vectors, residual, target, got)
    # the same by blocks of rows (first_row) and tiles of every size (each remainder of the tile)
    for rows, tile in ((5, 4), (seq, 8), (3, 12)):
        blocked = np.full((seq, seq), np.nan, dtype=dtype)
        for start in range(0, seq, rows):
            stop = min(start + rows, seq)
            manhattan_distances(np.ascontiguousarray(probs[:, start:stop]), vectors, residual, target[start:stop],
                                blocked[start:stop], start, tile)
        np.testing.assert_array_equal(blocked, got)

    want = direct_distances(probs, vectors, residual, target)
    # Rounding scales with the magnitudes summed, not with the (possibly cancelling) distance.
    scale = direct_distances(probs, np.abs(vectors), np.abs(residual), -np.abs(target))
    tolerance = (1e-12 if dtype is np.float64 else 1e-5) * scale
    assert np.all(np.abs(got - want) <= tolerance)
    if causal:  # where no head reaches i, T~[i, j] = 0: the distance is ||target_i||_1
        upper = np.triu_indices(seq, k=1)
        norms = np.abs(target).sum(-1, dtype=np.float64)[upper[0]]
        assert np.all(np.abs(got[upper] - norms) <= tolerance[upper])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("heads", [1, 5, 12])
def test_the_vector_block_with_whole_chunks_and_a_rest(dtype, heads):
    """Widths of whole chunks of ``four_row_sums`` (two of them), and two chunks and a rest, with many
    heads and rows that are not a multiple of four, causal and not: the formula within rounding, the
    causal zeros the target norms, blocks of rows (other rows skipped, other diagonals) exactly the whole."""
    from alti_onnx.decomposition.distances import CHUNK_BYTES

    chunk = CHUNK_BYTES // np.dtype(dtype).itemsize
    rng = np.random.default_rng(heads)
    for width in (2 * chunk, 2 * chunk + 3):
        for causal in (False, True):
            seq = 11
            probs = rng.random((heads, seq, seq))
            probs = np.tril(probs) if causal else probs
            probs = (probs / probs.sum(-1, keepdims=True)).astype(dtype)
            vectors = rng.standard_normal((seq, heads, width)).astype(dtype)
            residual = rng.standard_normal((seq, width)).astype(dtype)
            target = rng.standard_normal((seq, width)).astype(dtype)
            got = np.full((seq, seq), np.nan, dtype=dtype)
            manhattan_distances(probs, vectors, residual, target, got)
            want = direct_distances(probs, vectors, residual, target)
            scale = direct_distances(probs, np.abs(vectors), np.abs(residual), -np.abs(target))
            assert np.all(np.abs(got - want) <= (1e-12 if dtype is np.float64 else 1e-5) * scale), width
            blocked = np.full((seq, seq), np.nan, dtype=dtype)
            for start in range(0, seq, 3):
                manhattan_distances(np.ascontiguousarray(probs[:, start:start + 3]), vectors, residual,
                                    target[start:start + 3], blocked[start:start + 3], start, 4)
            np.testing.assert_array_equal(blocked, got)
            if causal:
                upper = np.triu_indices(seq, k=1)
                norms = np.abs(target.astype(np.float64)).sum(-1)[upper[0]]
                assert np.all(np.abs(got[upper] - norms) <= 1e-5 * norms)


def test_the_vector_block_at_256_bits():
    """Machines without AVX-512 get 256-bit vectors: the same kernel, run with them in a fresh process
    (its own numba cache), equals the formula."""
    code = (
        "import numpy as np, sys; sys.path.insert(0, 'tests')\n"
        "from alti_onnx.decomposition import distances\n"
        "assert distances.VECTOR_BITS == 256, distances.VECTOR_BITS\n"
        "from test_distances import test_the_vector_block_with_whole_chunks_and_a_rest as check\n"
        "for dtype in (np.float32, np.float64):\n"
        "    check(dtype, 12)\n"
        "print('ok')\n"
    )
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "ALTI_ONNX_VECTOR_BITS": "256", "NUMBA_CACHE_DIR": cache}
        done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True,
                              timeout=600)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_a_nan_in_the_inputs_reaches_the_distance():
    """Fast math here allows contraction only; NaNs are not assumed away."""
    probs = np.full((3, 2, 2), 0.5, dtype=np.float32)
    vectors = np.ones((2, 3, 4), dtype=np.float32)
    vectors[1, 2, 3] = np.nan
    target = np.zeros((2, 4), dtype=np.float32)
    got = np.zeros((2, 2), dtype=np.float32)
    manhattan_distances(probs, vectors, np.zeros((2, 4), np.float32), target, got)
    assert np.isnan(got[:, 1]).all() and np.isfinite(got[:, 0]).all()


def test_without_a_writable_cache_folder_the_kernel_still_compiles(monkeypatch):
    """numba raises at decoration when no cache folder can be written; then compile per process."""
    import numba.core.caching as caching

    from alti_onnx.decomposition.distances import _compiled

    if not hasattr(caching.CacheImpl, "_locator_classes"):
        pytest.skip("this numba version places its cache differently")
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])

    def add_one(x):
        return x + 1

    assert _compiled()(add_one)(2) == 3
