"""ALTI contributions of one attention block (the math of docs/alti.md, "One layer"), written once
for every array namespace (NumPy on the CPU, CuPy on a GPU: ``arrays``).

Everything works on one example with its padding already removed: probs [H, S, S],
values [H_kv, S, dh], residual x [S, D], the model's block output y [S, D]. The S*S*D tensor
T[i, j] is never built: the compiled kernel in ``distances`` reduces each T[i, j] to its
distance as soon as it is formed.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import ParamSpec, TypeVar

import numpy as np
from threadpoolctl import ThreadpoolController

from alti_onnx.decomposition.arrays import (
    Array,
    batch_manhattan_distances,
    block_array,
    contiguous,
    dtype_in,
    manhattan_distances,
    namespace,
    to_numpy,
)
from alti_onnx.decomposition.block_kinds import kind_of
from graph_rewrites import AttentionBlock

P = ParamSpec("P")
R = TypeVar("R")

#: Every matmul here is small and batched; OpenBLAS's own threads make those up to 100x slower
#: (thread hand-offs per call), so the math runs with one BLAS thread and parallelizes outside.
_BLAS = ThreadpoolController()


class _OneBlasThread:
    """OpenBLAS (or MKL) limited to one thread while any caller is inside, restored when the last one
    leaves. threadpoolctl's limits are process-wide: entered and left by several threads at once,
    each would restore what another had set, and the process could stay at one thread for good."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._limiter = None

    def __enter__(self) -> None:
        with self._lock:
            if self._inside == 0:
                self._limiter = _BLAS.limit(limits=1, user_api="blas")
            self._inside += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                self._limiter.restore_original_limits()
                self._limiter = None


_ONE_BLAS_THREAD = _OneBlasThread()


def one_blas_thread(function: Callable[P, R] | None = None):
    """As a decorator, run ``function`` with one BLAS thread; called with nothing, the context manager."""
    if function is None:
        return _ONE_BLAS_THREAD

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _ONE_BLAS_THREAD:
            return function(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class LayerContributions:
    """One layer's matrices (row i receives from column j) and the self-check error.

    ``contributions`` is ALTI's C; ``norms`` the norm-based baseline of Kobayashi et al.
    (||T'[i, j]||_2, rows normalized) and ``attention`` the head-averaged attention, both
    by-products of the same pass.
    """

    contributions: Array
    norms: Array | None
    attention: Array
    reconstruction_error: float
    output_scale: float = 1.0  #: max |y| of the model's block output, what the self-check tolerance scales with

    def to_host(self) -> LayerContributions:
        """The same matrices as NumPy arrays (from a GPU: one copy each; itself when they are)."""
        if all(a is None or isinstance(a, np.ndarray) for a in (self.contributions, self.norms, self.attention)):
            return self
        return replace(self, contributions=to_numpy(self.contributions),
                       norms=None if self.norms is None else to_numpy(self.norms),
                       attention=None if self.attention is None else to_numpy(self.attention))


def head_outputs(weight: Array, values: Array, num_heads: int) -> Array:
    """v^h_j @ W^h for every token j and head h, laid out [..., S_j, H, D] (grouped key/value heads read
    by each head they serve): one GEMM per head over every token of every example, each written
    straight into its place of the layout (a batched product of small matrices, then a transposed
    copy, cost three times as much on a batch of short texts)."""
    xp = namespace(weight, values)
    *lead, kv_heads, seq_len, head_size = values.shape
    width = weight.shape[-1]
    weight = xp.reshape(weight, (num_heads, head_size, width))
    rows = math.prod(lead) * seq_len
    tokens = xp.reshape(xp.moveaxis(values, -3, 0), (kv_heads, rows, head_size))  # [H_kv, tokens, dh]
    out = xp.empty((rows, num_heads, width), dtype=xp.result_type(values.dtype, weight.dtype))
    group = num_heads // kv_heads
    for head in range(num_heads):
        out[:, head, :] = tokens[head // group, ...] @ weight[head, ...]
    return xp.reshape(out, (*lead, seq_len, num_heads, width))


def values_per_head(values: Array, num_heads: int) -> Array:
    """[..., H_kv, S, dh] -> [..., H, S, dh]: each query head with the key/value head that serves it."""
    xp = namespace(values)
    kv_heads = values.shape[-3]
    if kv_heads == num_heads:
        return values
    return xp.take(values, xp.arange(num_heads) // (num_heads // kv_heads), axis=values.ndim - 3)


def output_weight(block: AttentionBlock, xp: ModuleType, dtype: object) -> Array:
    """W_O in ``xp`` and NumPy's ``dtype``, converted once per block."""
    return block_array(block, "output", xp, dtype, lambda: block.out_proj_weight)


def mixing_weight(block: AttentionBlock, xp: ModuleType, dtype: object) -> Array:
    """W_O as it acts on T~ for the block's kind (post-LN: gamma (W_O - its row means)), in ``xp`` and ``dtype``."""
    return block_array(block, "mixing", xp, dtype, lambda: kind_of(block).mixing_weight(block))


def output_bias(block: AttentionBlock, xp: ModuleType) -> Array | float:
    """b_O in float64 (0.0 for a block without one)."""
    if block.out_proj_bias is None:
        return 0.0
    return block_array(block, "output bias", xp, np.float64, lambda: block.out_proj_bias)


#: Bytes of the attention a row block lays out per thread (see ``row_blocks``): bounded, whatever S is.
BLOCK_BYTES = 32 << 20


def row_blocks(seq_len: int, per_row_bytes: int, parts: int = 1) -> list[tuple[int, int]]:
    """Row ranges covering ``seq_len`` rows: at least ``parts`` of them when there are rows enough,
    each at most ``BLOCK_BYTES`` of per-row data, sizes a multiple of the kernel's four rows."""
    if seq_len == 0:
        return []
    rows = min(BLOCK_BYTES // max(1, per_row_bytes), -(-seq_len // max(1, parts)))
    rows = max(4, rows // 4 * 4)
    return [(start, min(start + rows, seq_len)) for start in range(0, seq_len, rows)]


MapBlocks = Callable[[Callable[[tuple[int, int]], None], list[tuple[int, int]]], Iterable[None]]


@one_blas_thread
@np.errstate(all="ignore")  # NaN and Inf are the caller's to report (the error is then non-finite), not warnings
def layer_contributions(
    block: AttentionBlock,
    probs: Array,
    values: Array,
    residual: Array,
    block_output: Array,
    dtype: type = np.float32,
    with_norms: bool = True,
    with_attention: bool = True,
    map_blocks: MapBlocks = map,
    parts: int = 1,
) -> LayerContributions:
    """ALTI contributions of one block for one unpadded example, in the namespace of its arrays
    (NumPy, CuPy, any array API library; ``arrays``).

    The block's norm maps T -> T' linearly once a per-row scale s_i is fixed (post-LN: sigma_i;
    see ``block_kinds``), so the norm's centering and gamma are folded into W_O and x once, giving
    T~[i, j] = s_i T'[i, j], and 1/s_i is pulled out of the distances. Only the Manhattan
    distance needs the S*S*D tensor T~, and the kernel never stores it. The norm-based baseline
    ||T'|| comes from per-token Gram matrices (S*S*H*H), never from T~. The attention output, the
    scale, the recomposed output and the self-check are float64; the per-token vectors and the
    S*S*D pass use ``dtype``. The norm-based baseline is skipped (``norms`` None) unless
    ``with_norms``, the head-averaged attention unless ``with_attention``. ``block_output`` is the
    block's exposed output tensor (for a parallel block, its attention output).

    The S*S work runs over blocks of rows (``row_blocks``, at least ``parts`` of them) handed to
    ``map_blocks`` (a thread pool's map runs them in parallel), so no temporary grows past a
    bounded block whatever the length: only the S*S results themselves are whole.
    """
    num_heads, seq_len, _ = probs.shape
    blocks = row_blocks(seq_len, seq_len * num_heads * np.dtype(dtype).itemsize, parts)
    terms = block_terms(block, probs, values, residual, block_output, dtype, blocks, map_blocks)
    return contributions_of(terms, probs, dtype, with_norms, with_attention, map_blocks, blocks)


@one_blas_thread
@np.errstate(all="ignore")  # NaN and Inf are the caller's to report, not warnings
def batch_contributions(block: AttentionBlock, probs: Array, values: Array, residual: Array, block_output: Array,
                        lengths: list[int], dtype: type = np.float32, with_norms: bool = True,
                        with_attention: bool = True) -> list[LayerContributions]:
    """``layer_contributions`` of every example of a right-padded batch ([B, H, S, S], [B, H_kv, S, dh],
    [B, S, D], [B, S, D]; example b's real tokens are its first ``lengths[b]``), the whole batch in one
    pass of each step (a short text's layer is otherwise mostly per-call overhead): the block terms, the
    distances (each example on its own tokens, one compiled call), the clipping and the rows normalized.
    The numbers are an unpadded example's: no real row attends to a padded position, so the padding
    adds exact zeros to every sum a real row makes, and the padded columns are zeroed before the rows
    are normalized. With the norm-based baseline, each example's distances are taken alone."""
    size = probs.shape[-1]
    terms = block_terms(block, probs, values, residual, block_output, dtype, [(0, size)])
    if with_norms:
        return [contributions_of(terms.example(b, n), probs[b, :, :n, :n], dtype, with_norms, with_attention, map,
                                 [(0, n)] if n else [])
                for b, n in enumerate(lengths)]
    xp = namespace(probs, terms.vectors)
    exact, working = xp.float64, dtype_in(xp, dtype)
    num_heads = probs.shape[-3]
    distance = batch_manhattan_distances(contiguous(xp.astype(probs, working, copy=False)), terms.vectors,
                                         contiguous(xp.astype(terms.residual_vectors, working)),
                                         contiguous(xp.astype(terms.target, working)), lengths)
    own_norms = terms.y_norms[..., None]
    raw = own_norms - distance / terms.scale[..., None]
    attention_sum = xp.sum(probs, axis=-3, dtype=exact)
    positions = xp.arange(size)
    real = positions[None, :] < xp.asarray(lengths)[:, None]  # [B, S]: each example's own tokens
    off_diagonal = positions[:, None] != positions[None, :]
    contributions = clipped_rows(raw, own_norms, ((attention_sum == 0.0) & off_diagonal) | ~real[:, None, :], working)
    averaged = attention_sum / num_heads if with_attention else None
    # each example's self-check and output scale over its own rows
    errors = xp.max(xp.where(real[..., None], xp.abs(terms.recomposed - terms.model_output), 0.0), axis=(-2, -1))
    scales = xp.max(xp.where(real[..., None], xp.abs(terms.model_output), 0.0), axis=(-2, -1))
    return [LayerContributions(contributions[b, :n, :n], None, None if averaged is None else averaged[b, :n, :n],
                               float(errors[b]) if n else 0.0, float(scales[b]) if n else 0.0)
            for b, n in enumerate(lengths)]


def contributions_of(terms: BlockTerms, probs: Array, dtype: type, with_norms: bool, with_attention: bool,
                     map_blocks: MapBlocks, blocks: list[tuple[int, int]]) -> LayerContributions:
    """The contributions of one example from its block terms and its attention [H, S, S] (the rows in
    ``blocks``, through ``map_blocks``): the distances, the noise and silent-pair clipping, the rows
    normalized; the norm-based baseline and the averaged attention when asked."""
    xp = namespace(probs, terms.vectors)
    exact, working = xp.float64, dtype_in(xp, dtype)
    num_heads, seq_len, _ = probs.shape
    vectors, scale, y_norms = terms.vectors, terms.scale, terms.y_norms
    residual = contiguous(xp.astype(terms.residual_vectors, working))
    target = xp.astype(terms.target, working)  # s_i y_i: ||target_i - T~[i, j]|| = s_i ||y_i - T'[i, j]||

    contributions = xp.empty((seq_len, seq_len), dtype=exact)
    norms = xp.empty((seq_len, seq_len), dtype=exact) if with_norms else None
    averaged = xp.empty((seq_len, seq_len), dtype=exact) if with_attention else None

    @np.errstate(all="ignore")
    def contribution_rows(rows: tuple[int, int]) -> None:
        start, stop = rows
        rows_probs = contiguous(xp.astype(probs[:, start:stop, :], working, copy=False))  # [H, rows, S_j]
        distance = manhattan_distances(rows_probs, vectors, residual, contiguous(target[start:stop, :]), start)
        if norms is not None:
            squared = _squared_norms(rows_probs, vectors, residual, start)
            norms[start:stop, :] = normalize_rows(xp.sqrt(squared) / scale[start:stop, None])
        own_norms = y_norms[start:stop, None]
        raw = own_norms - distance / scale[start:stop, None]
        attention_sum = xp.sum(probs[:, start:stop, :], axis=0, dtype=exact)
        off_diagonal = xp.arange(start, stop)[:, None] != xp.arange(seq_len)[None, :]
        contributions[start:stop, :] = clipped_rows(raw, own_norms, (attention_sum == 0.0) & off_diagonal, working)
        if averaged is not None:
            averaged[start:stop, :] = attention_sum / num_heads

    list(map_blocks(contribution_rows, blocks))
    output_scale = float(xp.max(xp.abs(terms.model_output))) if seq_len else 0.0
    return LayerContributions(contributions, norms, averaged, terms.error, output_scale)


@dataclass(frozen=True)
class BlockTerms:
    """What the distances of one block are measured with (docs/alti.md, "One layer"): the per-token
    head outputs v~ [S_j, H, D], the norm's per-row scale s_i, the recomposed output y and its
    L1 norms, x~ for the residual terms, the target s_i y_i, the model's own y and the self-check."""

    vectors: Array
    scale: Array
    recomposed: Array
    y_norms: Array
    residual_vectors: Array
    target: Array
    model_output: Array
    error: float

    def example(self, row: int, size: int) -> BlockTerms:
        """The terms of a batch's example ``row`` on its first ``size`` tokens, its self-check over them."""
        first = (row, slice(0, size), ...)
        recomposed, model_output = self.recomposed[first], self.model_output[first]
        xp = namespace(recomposed)
        error = float(xp.max(xp.abs(recomposed - model_output))) if size else 0.0
        return BlockTerms(self.vectors[first], self.scale[first], recomposed, self.y_norms[first],
                          self.residual_vectors[first], self.target[first], model_output, error)


def block_terms(block: AttentionBlock, probs: Array, values: Array, residual: Array,
                block_output: Array, dtype: type, blocks: list[tuple[int, int]],
                map_blocks: MapBlocks = map) -> BlockTerms:
    """The attention output a (rows in ``blocks``, through ``map_blocks``), y rebuilt from it for the
    block's kind and checked against the model's, and the scaled terms the distances need. ``probs``
    is [H, rows, S_j]: square for self-attention, rows over the memory for cross-attention; or a
    batch of them, [B, H, rows, S_j] with every other argument batched alike (``batch_contributions``)."""
    xp = namespace(probs, values, residual, block_output)
    exact, working = xp.float64, dtype_in(xp, dtype)
    kind = kind_of(block)
    num_heads, rows = probs.shape[-3], probs.shape[-2]
    batch = tuple(probs.shape[:-3])
    values = xp.astype(values, working, copy=False)
    residual = xp.astype(residual, exact, copy=False)
    per_head = values_per_head(values, num_heads)
    weight, bias = output_weight(block, xp, dtype), output_bias(block, xp)
    attention = xp.empty((*batch, rows, block.hidden_size), dtype=exact)

    @np.errstate(all="ignore")  # errstate is per thread, and map_blocks may run this on another
    def attention_rows(span: tuple[int, int]) -> None:
        start, stop = span
        rows_probs = xp.astype(probs[..., start:stop, :], working, copy=False)
        context = xp.matmul(rows_probs, per_head)  # [..., H, rows, dh]
        merged = xp.reshape(xp.moveaxis(context, -3, -2), (*batch, stop - start, -1))
        attention[..., start:stop, :] = xp.astype(merged @ weight, exact) + bias  # a_i = merge_h(A^h V^h) W_O + b_O

    list(map_blocks(attention_rows, blocks))
    recomposed = kind.output(block, attention, residual)
    model_output = kind.model_output(block, xp.astype(block_output, exact, copy=False), residual)
    error = float(xp.max(xp.abs(recomposed - model_output))) if rows and not batch else float("nan")  # batch: per example
    scale = kind.row_scale(block, attention, residual)
    return BlockTerms(
        vectors=head_outputs(mixing_weight(block, xp, dtype), values, num_heads),  # v^h_j W~^h, [S_j, H, D]
        scale=scale, recomposed=recomposed, y_norms=xp.sum(xp.abs(recomposed), axis=-1),
        residual_vectors=kind.residual_vectors(block, residual, scale), target=recomposed * scale[..., None],
        model_output=model_output, error=error,
    )


def _squared_norms(probs: Array, vectors: Array, residual: Array, first_row: int = 0) -> Array:
    """||T~[i, j]||_2^2 = a^T G_j a + [i==j] (2 a.c_j + ||x~_j||^2), a = A[:, i, j], from Gram matrices,
    for the rows ``first_row:first_row + rows`` that ``probs`` [H, rows, S_j] holds; [rows, S_j] float64."""
    xp = namespace(probs, vectors, residual)
    heads, rows, columns = probs.shape
    by_column = contiguous(xp.permute_dims(probs, (2, 1, 0)))  # [S_j, rows, H]
    gram = xp.matmul(vectors, xp.permute_dims(vectors, (0, 2, 1)))  # [S_j, H, H]
    weighted = xp.matmul(by_column, gram) * by_column  # (G_j a)[h] a[h] for every (j, i), [S_j, rows, H]
    squared = xp.astype(xp.permute_dims(xp.sum(weighted, axis=-1), (1, 0)), xp.float64)  # [rows, S_j]
    stop = first_row + rows  # the diagonal pairs (i, i) inside the block
    self_weights = xp.permute_dims(xp.linalg.diagonal(probs[:, :, first_row:stop]), (1, 0))  # A[:, i, i], [rows, H]
    own_residual = residual[first_row:stop, :]
    cross = xp.matmul(vectors[first_row:stop, ...], own_residual[:, :, None])[..., 0]  # v~[j, h] . x~_j, [rows, H]
    extra = 2.0 * xp.sum(self_weights * cross, axis=-1) + xp.sum(own_residual * own_residual, axis=-1)
    diagonal = (xp.arange(rows) + first_row)[:, None] == xp.arange(columns)[None, :]
    squared = xp.where(diagonal, squared + xp.astype(extra, xp.float64)[:, None], squared)
    return xp.clip(squared, min=0.0)


def clipped_rows(raw: Array, own_norms: Array, unattended: Array, working: object) -> Array:
    """ALTI's rows from the raw proximities ||y_i|| - ||y_i - T'[i, j]||: differences below the rounding
    of the distance pass (computed in ``working``) are noise, not contribution, and are clipped with the
    negative ones, so a row whose true c is all zero does not normalize noise to 1; where no head
    attends (``unattended``: causal masks, padding) T'[i, j] is exactly zero and so is c, not the
    rounding residue of ||y_i|| - ||s_i y_i|| / s_i. Then the rows normalized (NaN stays, to be reported)."""
    xp = namespace(raw, own_norms)
    noise = 8 * float(xp.finfo(working).eps)
    return normalize_rows(xp.where((raw <= noise * own_norms) | unattended, 0.0, raw))


def normalize_rows(matrix: Array) -> Array:
    """Rows of non-negative entries scaled to sum to 1; all-zero rows stay zero (and a row with NaN keeps
    a NaN, for the caller to report)."""
    xp = namespace(matrix)
    totals = xp.sum(matrix, axis=-1, keepdims=True)
    return matrix / xp.where(totals > 0, totals, xp.inf)


def rollout(contributions: Array) -> Array:
    """R^1 = C^1, R^l = C^l @ R^(l-1) for a stack [L, S, S]."""
    xp = namespace(contributions)
    layers, current = [], None
    for layer in range(contributions.shape[0]):
        matrix = contributions[layer, ...]
        current = matrix if current is None else matrix @ current
        layers.append(current)
    return xp.stack(layers) if layers else xp.asarray(contributions, copy=True)
