"""The one S*S*D step of ALTI, as a compiled kernel: Manhattan distances to the transformed vectors.

    distance[i, j] = || target_i - T~[i, j] ||_1,   T~[i, j] = sum_h A[h, i, j] v~[j, h] + [i == j] x~_j

T~ has S*S*D entries; built by BLAS it is written to memory, read back for the difference and
read again for the sum. Here each T~[i, j] lives only in a D-long scratch row that stays in the
L1 cache: heads are added three at a time (three multiply-adds per load and store of the scratch
row) into four rows i at once (every load of v~[j, h] serves four rows), then the row's absolute
sum is taken from there: about twice as fast as the BLAS version at 128 and 512 tokens. Numba
compiles it for the machine it runs on (AVX-512 where there is one) and caches the result on
disk, so only the first run on a machine pays the compile (a few seconds).
"""

from __future__ import annotations

import numba
import numpy as np

#: Reassociation lets the compiler vectorize the absolute sum; contraction gives fused multiply-adds.
#: No "no NaNs" or "no infinities" assumptions: a NaN in the inputs stays a NaN in the result.
_FAST_MATH = {"contract", "reassoc"}


def _compiled(**options):
    """numba.njit without the GIL, cached on disk; where no cache folder is writable (numba then
    refuses ``cache=True``), compiled afresh in each process instead."""

    def decorate(function):
        try:
            return numba.njit(nogil=True, cache=True, **options)(function)
        except RuntimeError:
            return numba.njit(nogil=True, **options)(function)

    return decorate


#: Bytes of target rows a tile of rows keeps in the L2 cache while every column passes.
TILE_BYTES = 1 << 18


@_compiled(fastmath=_FAST_MATH)
def manhattan_distances(
    probs: np.ndarray, vectors: np.ndarray, residual: np.ndarray, target: np.ndarray, out: np.ndarray,
    first_row: int = 0, tile_rows: int = 0,
) -> None:
    """Write ||target_i - T~[first_row + i, j]||_1 into ``out[i, j]``: a block of rows (all of them
    when ``first_row`` is 0 and ``target`` has S rows).

    ``probs`` is the attention of those rows [H, rows, S_j], ``vectors`` v~ [S_j, H, D], ``residual``
    x~ [S_j, D] and ``target`` [rows, D]; all one dtype. Where no head of j reaches i (causal masks),
    T~[i, j] = 0 and the distance is ||target_i||_1.

    Rows are taken in tiles whose targets stay in the L2 cache (``TILE_BYTES``, or ``tile_rows``)
    while every column j passes; each tile's weights are first laid out [j, i, h], so the H weights
    of four rows are one contiguous read. Each multiply-add is written as its own subtraction, so
    that it compiles to one fused negated multiply-add (a parenthesized sum costs a multiply, two
    adds and a subtraction per three heads).
    """
    n_heads, n_rows, n_columns = probs.shape
    width = vectors.shape[2]
    scratch = np.empty((4, width), target.dtype)
    a = np.empty((4, n_heads), target.dtype)
    zero = np.zeros(1, target.dtype)[0]
    target_norms = np.empty(n_rows, target.dtype)
    for i in range(n_rows):
        total = zero
        for d in range(width):
            total += abs(target[i, d])
        target_norms[i] = total
    singles = n_heads % 3
    tile = tile_rows if tile_rows > 0 else max(4, TILE_BYTES // (width * target.itemsize) // 4 * 4)
    weights = np.empty((n_columns, min(tile, n_rows), n_heads), target.dtype)
    for start in range(0, n_rows, tile):
        stop = min(start + tile, n_rows)
        last = stop - 1
        for block in range(0, n_columns, 64):  # the tile's weights laid out [j, i, h], 64 columns at a time
            end = min(block + 64, n_columns)
            for i in range(start, stop):
                for h in range(n_heads):
                    for j in range(block, end):
                        weights[j, i - start, h] = probs[h, i, j]
        for j in range(n_columns):
            v = vectors[j]
            column = weights[j]
            for first in range(start, stop, 4):
                # four rows per pass; past the tile's last row, the last row is repeated (same value written twice)
                i0, i1, i2, i3 = first, min(first + 1, last), min(first + 2, last), min(first + 3, last)
                nonzero = False
                for h in range(n_heads):
                    a[0, h] = column[i0 - start, h]
                    a[1, h] = column[i1 - start, h]
                    a[2, h] = column[i2 - start, h]
                    a[3, h] = column[i3 - start, h]
                    if a[0, h] != 0 or a[1, h] != 0 or a[2, h] != 0 or a[3, h] != 0:
                        nonzero = True
                diagonal = (i0 + first_row == j or i1 + first_row == j or i2 + first_row == j
                            or i3 + first_row == j)
                if not diagonal and not nonzero:
                    out[i0, j], out[i1, j], out[i2, j], out[i3, j] = (
                        target_norms[i0], target_norms[i1], target_norms[i2], target_norms[i3])
                    continue
                w0, w1, w2, w3 = scratch[0], scratch[1], scratch[2], scratch[3]
                t0, t1, t2, t3 = target[i0], target[i1], target[i2], target[i3]
                for d in range(width):
                    w0[d] = t0[d]
                    w1[d] = t1[d]
                    w2[d] = t2[d]
                    w3[d] = t3[d]
                if diagonal:  # T~[j, j] also holds the residual x~_j
                    for k in range(4):
                        if min(first + k, last) + first_row == j:
                            for d in range(width):
                                scratch[k, d] -= residual[j, d]
                for h in range(singles):
                    x = v[h]
                    b0, b1, b2, b3 = a[0, h], a[1, h], a[2, h], a[3, h]
                    for d in range(width):
                        xd = x[d]
                        w0[d] -= b0 * xd
                        w1[d] -= b1 * xd
                        w2[d] -= b2 * xd
                        w3[d] -= b3 * xd
                for h in range(singles, n_heads, 3):
                    x, y, z = v[h], v[h + 1], v[h + 2]
                    b0x, b0y, b0z = a[0, h], a[0, h + 1], a[0, h + 2]
                    b1x, b1y, b1z = a[1, h], a[1, h + 1], a[1, h + 2]
                    b2x, b2y, b2z = a[2, h], a[2, h + 1], a[2, h + 2]
                    b3x, b3y, b3z = a[3, h], a[3, h + 1], a[3, h + 2]
                    for d in range(width):
                        xd, yd, zd = x[d], y[d], z[d]
                        w0[d] = w0[d] - b0x * xd - b0y * yd - b0z * zd
                        w1[d] = w1[d] - b1x * xd - b1y * yd - b1z * zd
                        w2[d] = w2[d] - b2x * xd - b2y * yd - b2z * zd
                        w3[d] = w3[d] - b3x * xd - b3y * yd - b3z * zd
                s0, s1, s2, s3 = zero, zero, zero, zero
                for d in range(width):
                    s0 += abs(w0[d])
                    s1 += abs(w1[d])
                    s2 += abs(w2[d])
                    s3 += abs(w3[d])
                out[i0, j], out[i1, j], out[i2, j], out[i3, j] = s0, s1, s2, s3


@_compiled(fastmath=_FAST_MATH)
def batch_manhattan_distances(probs: np.ndarray, vectors: np.ndarray, residual: np.ndarray, target: np.ndarray,
                              out: np.ndarray, lengths: np.ndarray) -> None:
    """``manhattan_distances`` of every example b of a right-padded batch ([B, H, S, S], [B, S, H, D],
    [B, S, D], [B, S, D]) on its own first ``lengths[b]`` tokens, into ``out[b, :n, :n]`` (the rest of
    ``out`` is left as it is): one call for a batch's layer instead of one per text."""
    for b in range(probs.shape[0]):
        n = lengths[b]
        manhattan_distances(probs[b, :, :n, :n], vectors[b, :n], residual[b, :n], target[b, :n], out[b, :n, :n], 0, 0)
