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
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np
from threadpoolctl import ThreadpoolController

from alti_onnx.distances import by_column as attention_by_column
from alti_onnx.distances import manhattan_distances
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


def head_outputs(weight: np.ndarray, values: np.ndarray, num_heads: int) -> np.ndarray:
    """v^h_j @ W^h for every token j and head h, laid out [S_j, H, D] (grouped key/value heads expanded)."""
    per_head = _values_per_head(values, num_heads)
    _, seq_len, head_size = per_head.shape
    weight = weight.reshape(num_heads, head_size, -1)
    out = np.empty((seq_len, num_heads, weight.shape[-1]), dtype=np.result_type(per_head, weight))
    np.matmul(per_head, weight, out=out.transpose(1, 0, 2))  # written straight into the [S_j, H, D] layout
    return out


def residual_sum(block: AttentionBlock, probs: np.ndarray, values: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """u_i = sum_j T[i, j] + b_O = merge_h(A^h V^h) W_O + x_i + b_O (the cheap order), in float64.

    The products run in the inputs' dtype (what the model itself computed in); the sum is float64.
    """
    num_heads, seq_len, _ = probs.shape
    context = np.matmul(probs, _values_per_head(values, num_heads))  # [H, S, dh]
    merged = context.transpose(1, 0, 2).reshape(seq_len, -1)
    bias = 0.0 if block.out_proj_bias is None else block.out_proj_bias
    return (merged @ output_weight(block, merged.dtype)).astype(np.float64) + residual + bias


def _values_per_head(values: np.ndarray, num_heads: int) -> np.ndarray:
    """[H_kv, S, dh] -> [H, S, dh]: each query head with the key/value head that serves it."""
    kv_heads = values.shape[0]
    return values if kv_heads == num_heads else values[np.arange(num_heads) // (num_heads // kv_heads)]


def output_weight(block: AttentionBlock, dtype: type) -> np.ndarray:
    """W_O in ``dtype``, converted once per block."""
    return _per_block(block, "output", dtype, lambda: block.out_proj_weight.astype(dtype))


def mixing_weight(block: AttentionBlock, dtype: type) -> np.ndarray:
    """W_O as it acts on T~: for post-LN, (W_O - its row means) * gamma, so v W~ = gamma (vW - mean(vW))."""

    def compute() -> np.ndarray:
        weight = block.out_proj_weight
        if block.norm_placement == "post":
            weight = (weight - weight.mean(-1, keepdims=True)) * block.norm_weight
        return weight.astype(dtype)

    return _per_block(block, "mixing", dtype, compute)


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
) -> LayerContributions:
    """ALTI contributions of one block for one unpadded example.

    The post-LN map T -> T' = gamma (T - mean T) / sigma_i is linear in T once sigma_i is fixed,
    so centering and gamma are folded into W_O and x once, giving T~[i, j] = sigma_i T'[i, j],
    and 1/sigma_i is pulled out of the distances. Only the Manhattan distance needs the S*S*D
    tensor T~, and the kernel never stores it. The norm-based baseline ||T'|| comes from
    per-token Gram matrices (S*S*H*H), never from T~. The residual sum u, sigma, the recomposed
    output and the self-check are float64; the per-token vectors and the S*S*D pass use
    ``dtype``. The norm-based baseline is skipped (``norms`` None) unless ``with_norms``.
    """
    probs = np.asarray(probs)
    exact = np.float64
    num_heads, seq_len, _ = probs.shape
    values = np.asarray(values, dtype=dtype)
    summed = residual_sum(block, probs.astype(dtype, copy=False), values, np.asarray(residual, dtype=exact))
    recomposed = _recompose(block, summed)
    error = float(np.max(np.abs(recomposed - block_output))) if seq_len else 0.0

    vectors = head_outputs(mixing_weight(block, dtype), values, num_heads)  # v^h_j W~^h, [S_j, H, D]
    residual = np.asarray(residual, dtype=exact)
    if block.norm_placement == "post":
        sigma = np.sqrt(summed.var(-1) + block.norm_epsilon)
        residual = (residual - residual.mean(-1, keepdims=True)) * block.norm_weight
    else:
        sigma = np.ones(seq_len)
    residual = residual.astype(dtype)
    target = recomposed * sigma[:, None]  # sigma_i y_i, so that ||target_i - T~[i, j]|| = sigma_i ||y_i - T'[i, j]||

    # One transpose of the probabilities serves every pass: column j outermost, heads innermost.
    by_column = attention_by_column(np.asarray(probs, dtype=dtype))  # [S_j, S_i, H]
    distance = np.empty((seq_len, seq_len), dtype=dtype)
    manhattan_distances(by_column, vectors, np.ascontiguousarray(residual), target.astype(dtype), distance)
    norms = normalize_rows(np.sqrt(_squared_norms(by_column, vectors, residual)) / sigma[:, None]) if with_norms else None
    y_norms = np.abs(recomposed).sum(-1)[:, None]
    raw = y_norms - distance / sigma[:, None]
    # Differences below the rounding of the distance pass are noise, not contribution: clip them
    # with the negative ones, so a row whose true c is all zero does not normalize noise to 1.
    raw[raw <= 8 * np.finfo(dtype).eps * y_norms] = 0.0
    # T'[i, j] is exactly zero where no head attends (causal masks, padding); keep c exactly zero
    # there rather than the rounding residue of ||y_i|| - ||sigma_i y_i|| / sigma_i.
    attention = probs.sum(0, dtype=np.float64)
    silent = attention == 0.0
    np.fill_diagonal(silent, False)
    raw[silent] = 0.0
    attention /= num_heads
    return LayerContributions(normalize_rows(raw), norms, attention, error)


def _squared_norms(by_column: np.ndarray, vectors: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """||T~[i, j]||_2^2 = a^T G_j a + [i==j] (2 a.c_j + ||x~_j||^2), a = A[:, i, j], from Gram matrices."""
    gram = np.matmul(vectors, vectors.transpose(0, 2, 1))  # [S_j, H, H]
    weighted = np.matmul(by_column, gram)  # (G_j a)[h] for every (j, i), [S_j, S_i, H]
    np.multiply(weighted, by_column, out=weighted)
    squared = np.matmul(weighted, np.ones(weighted.shape[-1], dtype=weighted.dtype)).T.astype(np.float64)
    diagonal = np.diag_indices(len(vectors))
    self_weights = by_column[diagonal]  # A[:, j, j], [S_j, H]
    cross = np.einsum("jhd,jd->jh", vectors, residual)  # [S_j, H]
    squared[diagonal] += 2.0 * np.einsum("jh,jh->j", self_weights, cross) + np.einsum("jd,jd->j", residual, residual)
    return np.maximum(squared, 0.0)


def _recompose(block: AttentionBlock, summed: np.ndarray) -> np.ndarray:
    """The block output rebuilt from the decomposition: LN(u) for post-LN, u for pre-LN."""
    if block.norm_placement != "post":
        return summed
    centered = summed - summed.mean(-1, keepdims=True)
    sigma = np.sqrt(summed.var(-1, keepdims=True) + block.norm_epsilon)
    return block.norm_weight * centered / sigma + block.norm_bias


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
