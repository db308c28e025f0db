"""ALTI contributions of one attention block, in NumPy (the math of docs/alti.md, "One layer").

Everything works on one example with its padding already removed: probs [H, S, S],
values [H_kv, S, dh], residual x [S, D], the model's block output y [S, D]. The S*S*D tensor
T[i, j] is never built: the compiled kernel in ``distances`` reduces each T[i, j] to its
distance as soon as it is formed.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np
from threadpoolctl import ThreadpoolController

from alti_onnx.decomposition.block_kinds import kind_of
from alti_onnx.decomposition.distances import by_column, manhattan_distances
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

    contributions: np.ndarray
    norms: np.ndarray | None
    attention: np.ndarray
    reconstruction_error: float
    output_scale: float = 1.0  #: max |y| of the model's block output, what the self-check tolerance scales with


def head_outputs(weight: np.ndarray, values: np.ndarray, num_heads: int) -> np.ndarray:
    """v^h_j @ W^h for every token j and head h, laid out [S_j, H, D] (grouped key/value heads expanded)."""
    per_head = values_per_head(values, num_heads)
    _, seq_len, head_size = per_head.shape
    weight = weight.reshape(num_heads, head_size, -1)
    out = np.empty((seq_len, num_heads, weight.shape[-1]), dtype=np.result_type(per_head, weight))
    np.matmul(per_head, weight, out=out.transpose(1, 0, 2))  # written straight into the [S_j, H, D] layout
    return out


def values_per_head(values: np.ndarray, num_heads: int) -> np.ndarray:
    """[H_kv, S, dh] -> [H, S, dh]: each query head with the key/value head that serves it."""
    kv_heads = values.shape[0]
    return values if kv_heads == num_heads else values[np.arange(num_heads) // (num_heads // kv_heads)]


def output_weight(block: AttentionBlock, dtype: type) -> np.ndarray:
    """W_O in ``dtype``, converted once per block."""
    return _per_block(block, "output", dtype, lambda: block.out_proj_weight.astype(dtype))


def mixing_weight(block: AttentionBlock, dtype: type) -> np.ndarray:
    """W_O as it acts on T~ for the block's kind (post-LN: gamma (W_O - its row means)), in ``dtype``."""
    return _per_block(block, "mixing", dtype, lambda: kind_of(block).mixing_weight(block).astype(dtype))


def _per_block(block: AttentionBlock, kind: str, dtype: type, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """A weight derived from ``block``, computed once per block and dtype (every example and batch reuses it)."""
    key = (id(block), kind, np.dtype(dtype).str)
    cached = _BLOCK_WEIGHTS.get(key)
    if cached is not None and cached[0]() is block:
        return cached[1]
    weight = compute()
    _BLOCK_WEIGHTS[key] = (weakref.ref(block), weight)
    weakref.finalize(block, _BLOCK_WEIGHTS.pop, key, None)
    return weight


#: (id(block), kind, dtype) -> (weak reference to the block, weight); entries leave with their block.
_BLOCK_WEIGHTS: dict[tuple[int, str, str], tuple[weakref.ref, np.ndarray]] = {}


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
    probs: np.ndarray,
    values: np.ndarray,
    residual: np.ndarray,
    block_output: np.ndarray,
    dtype: type = np.float32,
    with_norms: bool = True,
    with_attention: bool = True,
    map_blocks: MapBlocks = map,
    parts: int = 1,
) -> LayerContributions:
    """ALTI contributions of one block for one unpadded example.

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
    probs = np.asarray(probs)
    exact = np.float64
    num_heads, seq_len, _ = probs.shape
    blocks = row_blocks(seq_len, seq_len * num_heads * np.dtype(dtype).itemsize, parts)
    terms = block_terms(block, probs, values, residual, block_output, dtype, blocks, map_blocks)
    vectors, scale, y_norms = terms.vectors, terms.scale, terms.y_norms
    residual = np.ascontiguousarray(terms.residual_vectors.astype(dtype))
    target = terms.target.astype(dtype)  # s_i y_i: ||target_i - T~[i, j]|| = s_i ||y_i - T'[i, j]||
    model_output, error = terms.model_output, terms.error

    contributions = np.empty((seq_len, seq_len), dtype=exact)
    norms = np.empty((seq_len, seq_len), dtype=exact) if with_norms else None
    averaged = np.empty((seq_len, seq_len), dtype=exact) if with_attention else None

    @np.errstate(all="ignore")
    def contribution_rows(rows: tuple[int, int]) -> None:
        start, stop = rows
        rows_probs = np.ascontiguousarray(probs[:, start:stop], dtype=dtype)  # [H, rows, S_j]
        distance = np.empty((stop - start, seq_len), dtype=dtype)
        manhattan_distances(rows_probs, vectors, residual, np.ascontiguousarray(target[start:stop]), distance, start)
        if norms is not None:
            squared = _squared_norms(by_column(rows_probs), vectors, residual, start)  # [S_j, rows, H] there
            norms[start:stop] = normalize_rows(np.sqrt(squared) / scale[start:stop, None])
        own_norms = y_norms[start:stop, None]
        raw = own_norms - distance / scale[start:stop, None]
        # Differences below the rounding of the distance pass are noise, not contribution: clip them
        # with the negative ones, so a row whose true c is all zero does not normalize noise to 1.
        raw[raw <= 8 * np.finfo(dtype).eps * own_norms] = 0.0
        # T'[i, j] is exactly zero where no head attends (causal masks, padding); keep c exactly zero
        # there rather than the rounding residue of ||y_i|| - ||s_i y_i|| / s_i.
        attention_sum = probs[:, start:stop].sum(0, dtype=np.float64)
        silent = attention_sum == 0.0
        diagonal = np.arange(start, stop)
        silent[diagonal - start, diagonal] = False
        raw[silent] = 0.0
        contributions[start:stop] = normalize_rows(raw)
        if averaged is not None:
            averaged[start:stop] = attention_sum / num_heads

    list(map_blocks(contribution_rows, blocks))
    output_scale = float(np.abs(model_output).max()) if seq_len else 0.0
    return LayerContributions(contributions, norms, averaged, error, output_scale)


@dataclass(frozen=True)
class BlockTerms:
    """What the distances of one block are measured with (docs/alti.md, "One layer"): the per-token
    head outputs v~ [S_j, H, D], the norm's per-row scale s_i, the recomposed output y and its
    L1 norms, x~ for the residual terms, the target s_i y_i, the model's own y and the self-check."""

    vectors: np.ndarray
    scale: np.ndarray
    recomposed: np.ndarray
    y_norms: np.ndarray
    residual_vectors: np.ndarray
    target: np.ndarray
    model_output: np.ndarray
    error: float


def block_terms(block: AttentionBlock, probs: np.ndarray, values: np.ndarray, residual: np.ndarray,
                block_output: np.ndarray, dtype: type, blocks: list[tuple[int, int]],
                map_blocks: MapBlocks = map) -> BlockTerms:
    """The attention output a (rows in ``blocks``, through ``map_blocks``), y rebuilt from it for the
    block's kind and checked against the model's, and the scaled terms the distances need. ``probs``
    is [H, rows, S_j]: square for self-attention, rows over the memory for cross-attention."""
    exact = np.float64
    kind = kind_of(block)
    num_heads, rows, _ = probs.shape
    values = np.asarray(values, dtype=dtype)
    residual = np.asarray(residual, dtype=exact)
    per_head = values_per_head(values, num_heads)
    attention = np.empty((rows, block.hidden_size), dtype=exact)

    @np.errstate(all="ignore")  # errstate is per thread, and map_blocks may run this on another
    def attention_rows(span: tuple[int, int]) -> None:
        start, stop = span
        attention[start:stop] = _attention_rows(block, probs[:, start:stop].astype(dtype, copy=False), per_head)

    list(map_blocks(attention_rows, blocks))
    recomposed = kind.output(block, attention, residual)
    model_output = kind.model_output(block, np.asarray(block_output, dtype=exact), residual)
    error = float(np.max(np.abs(recomposed - model_output))) if rows else 0.0
    scale = kind.row_scale(block, attention, residual)
    return BlockTerms(
        vectors=head_outputs(mixing_weight(block, dtype), values, num_heads),  # v^h_j W~^h, [S_j, H, D]
        scale=scale, recomposed=recomposed, y_norms=np.abs(recomposed).sum(-1),
        residual_vectors=kind.residual_vectors(block, residual, scale), target=recomposed * scale[:, None],
        model_output=model_output, error=error,
    )


def _attention_rows(block: AttentionBlock, probs: np.ndarray, per_head: np.ndarray) -> np.ndarray:
    """Rows of a_i = merge_h(A^h V^h) W_O + b_O, from those rows of the probabilities [H, rows, S]."""
    num_heads, rows, _ = probs.shape
    context = np.matmul(probs, per_head)  # [H, rows, dh]
    merged = context.transpose(1, 0, 2).reshape(rows, -1)
    bias = 0.0 if block.out_proj_bias is None else block.out_proj_bias
    return (merged @ output_weight(block, merged.dtype)).astype(np.float64) + bias


def _squared_norms(by_column: np.ndarray, vectors: np.ndarray, residual: np.ndarray, first_row: int = 0) -> np.ndarray:
    """||T~[i, j]||_2^2 = a^T G_j a + [i==j] (2 a.c_j + ||x~_j||^2), a = A[:, i, j], from Gram matrices,
    for the rows ``first_row:first_row + rows`` that ``by_column`` [S_j, rows, H] holds."""
    gram = np.matmul(vectors, vectors.transpose(0, 2, 1))  # [S_j, H, H]
    weighted = np.matmul(by_column, gram)  # (G_j a)[h] for every (j, i), [S_j, rows, H]
    np.multiply(weighted, by_column, out=weighted)
    squared = np.matmul(weighted, np.ones(weighted.shape[-1], dtype=weighted.dtype)).T.astype(np.float64)
    rows = np.arange(by_column.shape[1])
    columns = rows + first_row  # the diagonal pairs (i, i) inside the block
    self_weights = by_column[columns, rows]  # A[:, i, i], [rows, H]
    cross = np.einsum("jhd,jd->jh", vectors[columns], residual[columns])  # [rows, H]
    squared[rows, columns] += (2.0 * np.einsum("jh,jh->j", self_weights, cross)
                               + np.einsum("jd,jd->j", residual[columns], residual[columns]))
    return np.maximum(squared, 0.0)


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to sum to 1; all-zero rows stay zero."""
    totals = matrix.sum(-1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def rollout(contributions: np.ndarray) -> np.ndarray:
    """R^1 = C^1, R^l = C^l @ R^(l-1) for a stack [L, S, S]."""
    result = np.empty_like(contributions)
    current = None
    for layer, matrix in enumerate(contributions):
        current = matrix if current is None else matrix @ current
        result[layer] = current
    return result
