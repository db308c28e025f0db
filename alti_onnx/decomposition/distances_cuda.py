"""The distance kernel of ``distances`` on an NVIDIA GPU (numba-cuda; issue 27): the same S*S*D pass,
one thread per pair (i, j), that never stores T~.

    distance[i, j] = || target_i - T~[i, j] ||_1,   T~[i, j] = sum_h A[h, i, j] v~[j, h] + [i == j] x~_j

Each thread forms T~[i, j] one component at a time in a register and adds its absolute difference
to a float64 sum, so nothing S*S*D-sized exists anywhere; a pair no head attends to (a causal
mask) and off the diagonal is ||target_i||_1, as on the CPU. It runs under numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) on any machine, which is how CI checks it against the CPU kernel;
``arrays.manhattan_distances`` calls it for CuPy arrays (``device="cuda"``, docs/gpu.md).
"""

from __future__ import annotations

import numpy as np
from numba import cuda

#: Threads per block, over (rows, columns).
THREADS = (16, 16)


@cuda.jit
def _distances(probs, vectors, residual, target, out, first_row):
    i, j = cuda.grid(2)
    n_heads, n_rows, n_columns = probs.shape
    if i >= n_rows or j >= n_columns:
        return
    width = vectors.shape[2]
    diagonal = i + first_row == j
    attended = False
    for h in range(n_heads):
        if probs[h, i, j] != 0:
            attended = True
    total = 0.0
    if not attended and not diagonal:
        for d in range(width):
            total += abs(target[i, d])
    else:
        for d in range(width):
            w = target[i, d]
            if diagonal:
                w -= residual[j, d]
            for h in range(n_heads):
                w -= probs[h, i, j] * vectors[j, h, d]
            total += abs(w)
    out[i, j] = total


def manhattan_distances_cuda(probs, vectors, residual, target, out, first_row: int = 0) -> None:
    """``distances.manhattan_distances`` on the GPU, with its arguments and layout: ``probs`` [H, rows, S_j],
    ``vectors`` [S_j, H, D], ``residual`` [S_j, D], ``target`` [rows, D], ``out`` [rows, S_j] (float64 sums
    written in ``out``'s dtype). Each may be a NumPy array (copied to the device, ``out`` copied back) or
    a device array (numba's, or CuPy's through ``__cuda_array_interface__``: nothing is copied)."""
    on_device = [_device(a) for a in (probs, vectors, residual, target)]
    result = _device(out)
    rows, columns = np.shape(out)
    blocks = (-(-rows // THREADS[0]), -(-columns // THREADS[1]))
    if rows and columns:
        _distances[blocks, THREADS](*on_device, result, int(first_row))
    if isinstance(out, np.ndarray):
        result.copy_to_host(out)


def _device(array):
    """A device view of ``array``: a copy of a host array, a view of a CUDA array interface (CuPy), or
    the numba device array itself."""
    if isinstance(array, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(array))
    if hasattr(array, "__cuda_array_interface__") and not hasattr(array, "copy_to_host"):
        return cuda.as_cuda_array(array)
    return array
