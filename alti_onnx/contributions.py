"""ALTI contributions of one attention block, in NumPy (the math of ALTI.md, "One layer").

Everything works on one example with its padding already removed: probs [H, S, S],
values [H_kv, S, dh], residual x [S, D], the model's block output y [S, D]. The S*S*D tensor
T[i, j] is never built whole: rows i are processed in blocks sized to a memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graph_rewrites import AttentionBlock

#: Bytes one block of transformed vectors T[i_block, :, :] may take.
ROW_BLOCK_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class LayerContributions:
    """One layer's matrices (row i receives from column j) and the self-check error.

    ``contributions`` is ALTI's C; ``norms`` the norm-based baseline of Kobayashi et al.
    (||T'[i, j]||_2, rows normalized), which falls out of the same pass over T' for free.
    """

    contributions: np.ndarray
    norms: np.ndarray
    reconstruction_error: float


def head_outputs(block: AttentionBlock, values: np.ndarray, num_heads: int) -> np.ndarray:
    """v^h_j @ W_O^h for every head h and token j: [H, S, D] (grouped key/value heads expanded)."""
    kv_heads, _, head_size = values.shape
    weight = block.out_proj_weight.reshape(num_heads, head_size, -1)
    per_head = values[np.arange(num_heads) // (num_heads // kv_heads)]
    return np.matmul(per_head, weight)


def layer_contributions(
    block: AttentionBlock,
    probs: np.ndarray,
    values: np.ndarray,
    residual: np.ndarray,
    block_output: np.ndarray,
    row_block_bytes: int = ROW_BLOCK_BYTES,
) -> LayerContributions:
    """ALTI contributions of one block for one unpadded example."""
    probs = np.asarray(probs, dtype=np.float64)
    residual = np.asarray(residual, dtype=np.float64)
    num_heads, seq_len, _ = probs.shape
    projected = head_outputs(block, np.asarray(values, dtype=np.float64), num_heads)  # [H, S, D]
    width = projected.shape[-1]
    bias = np.zeros(width) if block.out_proj_bias is None else block.out_proj_bias

    attended = np.einsum("hij,hjd->id", probs, projected)  # sum_j sum_h A v W, [S, D]
    summed = attended + residual + bias  # the residual sum u_i = sum_j T[i,j] + b_O
    scale = _norm_scale(block, summed)  # gamma / sigma_i per row (post-LN) or None (pre-LN)
    recomposed = _recompose(block, summed)
    error = float(np.max(np.abs(recomposed - block_output))) if seq_len else 0.0

    raw = np.empty((seq_len, seq_len))
    norms = np.empty((seq_len, seq_len))
    rows_per_block = max(1, row_block_bytes // max(1, 8 * seq_len * width * 3))
    by_column = projected.transpose(1, 0, 2)  # [S_j, H, D]
    y_norm = np.abs(recomposed).sum(-1)
    for start in range(0, seq_len, rows_per_block):
        stop = min(seq_len, start + rows_per_block)
        rows = np.arange(start, stop)
        # T[i, j] = sum_h A^h[i, j] v^h_j W_O^h, as one batched matmul over j: [S_j, I, H] @ [S_j, H, D]
        mixed = np.matmul(probs[:, start:stop, :].transpose(2, 1, 0), by_column).transpose(1, 0, 2)
        mixed[np.arange(stop - start), rows] += residual[rows]  # + [i == j] x_j
        if scale is not None:  # T'[i, j] = gamma (T - mean(T)) / sigma_i
            mixed -= mixed.mean(-1, keepdims=True)
            mixed *= scale[start:stop, None, :]
        distance = np.abs(recomposed[start:stop, None, :] - mixed).sum(-1)
        raw[start:stop] = np.maximum(0.0, y_norm[start:stop, None] - distance)
        norms[start:stop] = np.sqrt(np.einsum("ijd,ijd->ij", mixed, mixed))
    return LayerContributions(normalize_rows(raw), normalize_rows(norms), error)


def _norm_scale(block: AttentionBlock, summed: np.ndarray) -> np.ndarray | None:
    """gamma / sigma_i for post-LN blocks ([S, D]); None when no norm follows the block."""
    if block.norm_placement != "post":
        return None
    sigma = np.sqrt(summed.var(-1) + block.norm_epsilon)
    return block.norm_weight[None, :] / sigma[:, None]


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
