"""The one S*S*D step of ALTI, as a compiled kernel: Manhattan distances to the transformed vectors.

    distance[i, j] = || target_i - T~[i, j] ||_1,   T~[i, j] = sum_h A[h, i, j] v~[j, h] + [i == j] x~_j

T~ has S*S*D entries; built by BLAS it is written to memory, read back for the difference and
read again for the sum. Here four rows i of one column j are formed a chunk of D at a time in
vector registers, every head added to them there, and reduced to their absolute sums before
anything is stored (``four_row_sums``, LLVM vector code written as a GEMM's micro-kernel is): about
twice the multiply-adds per second of numba's own vectorized loops, which kept the rows in memory.
Numba compiles it for the machine it runs on (AVX-512 where there is one) and caches the result on
disk, so only the first run on a machine pays the compile (a few seconds).
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# --------------------------------------------------------------------------- the vector block
# Four rows i of one column j, as LLVM vector code:
#
#     sum_d | t_i[d] - sum_h a_i[h] v[h, d] |      (t_i = target_i, less x~_j on the diagonal)
#
# Each chunk of d (two vectors wide) of the four rows' T~ is held in vector registers while every
# head is added to it, as a GEMM's micro-kernel holds its block of C: per head, two loads of v and
# four broadcasts serve eight fused multiply-adds, and nothing is stored until the chunk's absolute
# values are summed. Numba's own vectorizer keeps such a block in memory (a load and a store per
# multiply-add) or, written as scalars, leaves it scalar. Vectors are 512 bits wide where the machine
# has AVX-512 and 256 elsewhere (LLVM splits a wider vector on a narrower machine, so the choice
# only costs speed, never correctness). It lives in this file because numba's disk cache of the
# kernel is invalidated by changes to the kernel's own file only.

#: Vectors per row and chunk of d.
CHUNKS = 2


def _vector_bits() -> int:
    """512 where the host has AVX-512 (numba compiles for the host), else 256; ``ALTI_ONNX_VECTOR_BITS``
    (256 or 512) overrides it, for testing the other width on one machine (with its own numba cache:
    the cache does not know this setting)."""
    given = os.environ.get("ALTI_ONNX_VECTOR_BITS")
    if given in ("256", "512"):
        return int(given)
    try:
        return 512 if llvm.get_host_cpu_features().get("avx512f", False) else 256
    except RuntimeError:  # no host feature detection on this platform
        return 256


VECTOR_BITS = _vector_bits()


#: Bytes of d one chunk covers (``four_row_sums`` covers the largest multiple of it).
CHUNK_BYTES = VECTOR_BITS // 8 * CHUNKS


@intrinsic
def four_row_sums(typingctx, t0, t1, t2, t3, a0, a1, a2, a3, v, width):
    """(sum_d |t_r[d] - sum_h a_r[h] v[h, d]|, r = 0..3) over the first ``width`` components of d,
    ``width`` a multiple of ``CHUNK_BYTES`` / itemsize. ``t_r`` are 1-D arrays with unit stride (target
    rows), ``a_r`` 1-D arrays of any stride (a row's H weights), ``v`` [H, D] with unit stride along D;
    one float dtype for all."""
    dtype = t0.dtype
    arrays = (t0, t1, t2, t3, a0, a1, a2, a3)
    if not all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == dtype for a in arrays) or \
            not (isinstance(v, types.Array) and v.ndim == 2 and v.dtype == dtype) or \
            dtype not in (types.float32, types.float64) or not isinstance(width, types.Integer):
        return None
    signature = types.UniTuple(dtype, 4)(t0, t1, t2, t3, a0, a1, a2, a3, v, width)

    def codegen(context, builder, sig, args):
        scalar = context.get_value_type(dtype)
        lanes = VECTOR_BITS // (8 * context.get_abi_sizeof(scalar))
        vector = ir.VectorType(scalar, lanes)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        suffix = f"v{lanes}f{8 * context.get_abi_sizeof(scalar)}"
        module = builder.module
        fma = cgutils.get_or_insert_function(module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.{suffix}")
        fabs = cgutils.get_or_insert_function(module, ir.FunctionType(vector, [vector]), f"llvm.fabs.{suffix}")

        def data(position: int):
            return cgutils.create_struct_proxy(sig.args[position])(context, builder, value=args[position]).data

        targets = [data(k) for k in range(4)]
        byte = ir.IntType(8).as_pointer()
        weights, weight_strides = [], []  # a row's weights, read with their own stride
        for k in range(4, 8):
            proxy = cgutils.create_struct_proxy(sig.args[k])(context, builder, value=args[k])
            weights.append(builder.bitcast(proxy.data, byte))
            weight_strides.append(cgutils.unpack_tuple(builder, proxy.strides, 1)[0])
        heads_array = cgutils.create_struct_proxy(sig.args[8])(context, builder, value=args[8])
        heads = cgutils.unpack_tuple(builder, heads_array.shape, 2)[0]
        head_stride = builder.udiv(cgutils.unpack_tuple(builder, heads_array.strides, 2)[0],
                                   ir.Constant(i64, context.get_abi_sizeof(scalar)))
        step = lanes * CHUNKS
        chunks = builder.udiv(context.cast(builder, args[9], sig.args[9], types.int64), ir.Constant(i64, step))

        def load(pointer, offset):
            return builder.load(builder.bitcast(builder.gep(pointer, [offset]), vector.as_pointer()),
                                align=context.get_abi_sizeof(scalar))

        zero = ir.Constant(vector, [ir.Constant(scalar, 0.0)] * lanes)
        sums = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
        block = [[cgutils.alloca_once(builder, vector) for _ in range(CHUNKS)] for _ in range(4)]
        spread = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        with cgutils.for_range(builder, chunks) as over_d:
            first = builder.mul(over_d.index, ir.Constant(i64, step))
            for row in range(4):
                for chunk in range(CHUNKS):
                    builder.store(load(targets[row], builder.add(first, ir.Constant(i64, chunk * lanes))),
                                  block[row][chunk])
            with cgutils.for_range(builder, heads) as over_h:
                head = over_h.index
                start = builder.add(builder.mul(head, head_stride), first)
                values = [load(heads_array.data, builder.add(start, ir.Constant(i64, chunk * lanes)))
                          for chunk in range(CHUNKS)]
                for row in range(4):
                    at = builder.gep(weights[row], [builder.mul(head, weight_strides[row])])
                    weight = builder.fneg(builder.load(builder.bitcast(at, scalar.as_pointer())))
                    lone = builder.insert_element(ir.Constant(vector, ir.Undefined), weight, ir.Constant(i32, 0))
                    broadcast = builder.shuffle_vector(lone, ir.Constant(vector, ir.Undefined), spread)
                    for chunk in range(CHUNKS):
                        builder.store(builder.call(fma, [broadcast, values[chunk], builder.load(block[row][chunk])]),
                                      block[row][chunk])
            for row in range(4):
                total = builder.load(sums[row])
                for chunk in range(CHUNKS):
                    total = builder.fadd(total, builder.call(fabs, [builder.load(block[row][chunk])]))
                builder.store(total, sums[row])
        results = []
        for row in range(4):
            total = builder.load(sums[row])
            result = builder.extract_element(total, ir.Constant(i32, 0))
            for lane in range(1, lanes):
                result = builder.fadd(result, builder.extract_element(total, ir.Constant(i32, lane)))
            results.append(result)
        return context.make_tuple(builder, sig.return_type, results)

    return signature, codegen


# --------------------------------------------------------------------------- the kernel

#: Contraction gives fused multiply-adds. No reassociation (the vector sums are written out in
#: ``four_row_sums``), so a row's sum is the same wherever it is computed, and no "no NaNs" or "no
#: infinities" assumptions: a NaN in the inputs stays a NaN in the result.
_FAST_MATH = {"contract"}


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


@_compiled(fastmath=_FAST_MATH, inline="always")
def _four_rows(t0, t1, t2, t3, a0, a1, a2, a3, v, blocked):
    """sum_d |t_r[d] - sum_h a_r[h] v[h, d]| for four rows r: the whole chunks in vector registers
    (``four_row_sums``), the components past them here, in the same order wherever it is called."""
    s0, s1, s2, s3 = four_row_sums(t0, t1, t2, t3, a0, a1, a2, a3, v, blocked)
    for d in range(blocked, v.shape[1]):
        x0, x1, x2, x3 = t0[d], t1[d], t2[d], t3[d]
        for h in range(v.shape[0]):
            x = v[h, d]
            x0 -= a0[h] * x
            x1 -= a1[h] * x
            x2 -= a2[h] * x
            x3 -= a3[h] * x
        s0 += abs(x0)
        s1 += abs(x1)
        s2 += abs(x2)
        s3 += abs(x3)
    return s0, s1, s2, s3


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
    while every column j passes (v~[j] in the L1 cache); each tile's weights are first laid out
    [j, i, h], so the H weights of a row are one contiguous read (read where they are, strided by
    the attention's planes, they cost more than the layout at 512 tokens). Four rows at a time go
    through ``_four_rows``; a block of four rows that no head of j reaches, off the diagonal, is
    given the target norms.
    """
    n_heads, n_rows, n_columns = probs.shape
    width = vectors.shape[2]
    blocked = width - width % (CHUNK_BYTES // target.itemsize)  # what ``four_row_sums`` covers
    shifted = np.empty(width, target.dtype)
    target_rows = np.ascontiguousarray(target)  # unit stride, as ``four_row_sums`` reads them; no copy when so
    # ||target_i||_1 exactly as a row of zero weights sums it below (a multiply-add of zero changes nothing)
    no_heads, no_values = np.zeros(1, target.dtype), np.zeros((1, width), target.dtype)
    target_norms = np.empty(n_rows, target.dtype)
    for first in range(0, n_rows, 4):
        i0, i1, i2, i3 = first, min(first + 1, n_rows - 1), min(first + 2, n_rows - 1), min(first + 3, n_rows - 1)
        target_norms[i0], target_norms[i1], target_norms[i2], target_norms[i3] = _four_rows(
            target_rows[i0], target_rows[i1], target_rows[i2], target_rows[i3],
            no_heads, no_heads, no_heads, no_heads, no_values, blocked)
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
            v = np.ascontiguousarray(vectors[j])  # [H, D]; no copy when it already is
            column = weights[j]
            for first in range(start, stop, 4):
                # four rows per pass; past the tile's last row, the last row is repeated (same value written twice)
                i0, i1, i2, i3 = first, min(first + 1, last), min(first + 2, last), min(first + 3, last)
                nonzero = False
                for h in range(n_heads):
                    if column[i0 - start, h] != 0 or column[i1 - start, h] != 0 or column[i2 - start, h] != 0 \
                            or column[i3 - start, h] != 0:
                        nonzero = True
                        break
                diagonal = (i0 + first_row == j or i1 + first_row == j or i2 + first_row == j
                            or i3 + first_row == j)
                if not diagonal and not nonzero:
                    out[i0, j], out[i1, j], out[i2, j], out[i3, j] = (
                        target_norms[i0], target_norms[i1], target_norms[i2], target_norms[i3])
                    continue
                s0, s1, s2, s3 = _four_rows(target_rows[i0], target_rows[i1], target_rows[i2], target_rows[i3],
                                            column[i0 - start], column[i1 - start], column[i2 - start],
                                            column[i3 - start], v, blocked)
                if diagonal:  # T~[j, j] also holds the residual x~_j: that row again, its target less x~_j
                    k = j - first_row
                    for d in range(width):
                        shifted[d] = target_rows[k, d] - residual[j, d]
                    a = column[k - start]
                    own = _four_rows(shifted, shifted, shifted, shifted, a, a, a, a, v, blocked)[0]
                    if i0 == k:
                        s0 = own
                    if i1 == k:
                        s1 = own
                    if i2 == k:
                        s2 = own
                    if i3 == k:
                        s3 = own
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
