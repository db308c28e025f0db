"""Component contributions of one layer (issue 26, the first step of the routes): how much each head's
term from each source token, the residual, and a feed-forward block's output make up the whole.

The score is ALTI's proximity (docs/alti.md), ``c(part) = max(||whole||_1 - ||whole - part||_1, 0)``,
normalized over the parts of each receiving position:

- attention: the parts are each (source j, head h) term ``A^h[i, j] v^h_j W_O^h`` and the residual x_i;
  the whole is the block's output y_i (the output bias is in the whole, not a part). Through a post-LN
  or sandwich norm the parts and the whole are read as ALTI reads them: the norm linear at its
  actual statistics (``block_kinds``: T~ = s_i T', distances divided by s_i);
- feed-forward: the parts are the block's input y_i (the stream after the attention) and its output
  f_i; the whole is their sum, the next layer's input. Pre-LN, sandwich and parallel blocks hold both
  in the stream (f_i = x^{l+1}_i - y_i); a post-LN layer's output is LN(y + f), read through the norm
  as ALTI reads a post-LN block (``post_norm_ffn_components``).

Summing a row's head parts over h gives no token-to-token ALTI number (the proximity is not linear);
it is the weight of the edge from j to i through every head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graph_rewrites import AttentionBlock

from .contributions import block_terms, normalize_rows, values_per_head
from .distances import manhattan_distances


@dataclass(frozen=True)
class AttentionComponents:
    """``heads`` [H, S, S]: the share of (head h, source j) in position i's output; ``residual`` [S]:
    the residual's share; each row's shares (over h and j, and the residual) sum to 1."""

    heads: np.ndarray
    residual: np.ndarray
    #: the self-check of the rows decomposed: max |y rebuilt from the parts - the model's y|, and max |y|
    reconstruction_error: float = 0.0
    output_scale: float = 1.0


def attention_components(block: AttentionBlock, probs: np.ndarray, values: np.ndarray, residual: np.ndarray,
                         block_output: np.ndarray, dtype: type = np.float64,
                         rows: np.ndarray | None = None) -> AttentionComponents:
    """The component contributions of one self-attention block for one unpadded example ([H, S, S],
    [H_kv, S, dh], [S, D], [S, D] as ``layer_contributions`` takes them): of every receiving
    position, or of ``rows`` only (``heads`` is then [H, len(rows), S], ``residual`` [len(rows)]).
    A row's shares depend on that row alone, so a subset costs its share of the work."""
    probs = np.asarray(probs)
    if rows is not None:
        rows = np.asarray(rows, dtype=np.intp)
        probs, residual, block_output = probs[:, rows], np.asarray(residual)[rows], np.asarray(block_output)[rows]
    heads, size, sources = probs.shape
    terms = block_terms(block, probs, values, residual, block_output, dtype, [(0, size)])
    target = np.ascontiguousarray(terms.target.astype(dtype))
    scale = terms.scale
    own = terms.y_norms
    zero = np.zeros((sources, block.hidden_size), dtype=dtype)  # the residual is a part of its own
    raw = np.empty((size, heads * sources + 1))
    with np.errstate(all="ignore"):
        for h in range(heads):
            distance = np.empty((size, sources), dtype=dtype)
            manhattan_distances(np.ascontiguousarray(probs[h:h + 1], dtype=dtype),
                                np.ascontiguousarray(terms.vectors[:, h:h + 1]), zero, target, distance)
            shares = own[:, None] - distance / scale[:, None]
            shares[probs[h] == 0] = 0.0  # no term where the head does not attend (causal masks)
            raw[:, h * sources:(h + 1) * sources] = shares
        to_residual = np.abs(terms.target - terms.residual_vectors).sum(-1)
        raw[:, -1] = own - to_residual / scale
        raw[raw <= 8 * np.finfo(dtype).eps * own[:, None]] = 0.0  # rounding noise is no contribution
    shares = normalize_rows(raw)
    scale = float(np.abs(terms.model_output).max()) if size else 0.0
    return AttentionComponents(shares[:, :-1].reshape(size, heads, sources).transpose(1, 0, 2), shares[:, -1],
                               terms.error, scale)


def post_norm_ffn_components(stream: np.ndarray, total: np.ndarray, scale: np.ndarray, bias: np.ndarray | None,
                             epsilon: float) -> np.ndarray:
    """[S, 2]: the shares of the stream y and of the feed-forward block's output f = u - y in a post-LN
    layer's output LN(u), u = y + f (``total``), read as ALTI reads a post-LN block: the norm linear at
    u's statistics, each part centred and scaled by gamma / sigma(u); the whole is their sum plus beta."""
    y = np.asarray(stream, dtype=np.float64)
    u = np.asarray(total, dtype=np.float64)
    sigma = np.sqrt(u.var(-1) + epsilon)[:, None]
    gamma = np.asarray(scale, dtype=np.float64)

    def mapped(part: np.ndarray) -> np.ndarray:
        return gamma * (part - part.mean(-1, keepdims=True)) / sigma

    parts = np.stack([mapped(y), mapped(u - y)], axis=1)  # [S, 2, D]
    whole = parts.sum(1) + (0.0 if bias is None else np.asarray(bias, dtype=np.float64))
    own = np.abs(whole).sum(-1)
    raw = np.maximum(own[:, None] - np.abs(whole[:, None] - parts).sum(-1), 0.0)
    return normalize_rows(raw)


def head_vectors(block: AttentionBlock, probs_row: np.ndarray, values: np.ndarray) -> np.ndarray:
    """[H, D]: each head's term in the attention output of one position i, ``sum_j A^h[i, j] v^h_j W_O^h``
    (no bias, no norm), from that position's attention ``probs_row`` [H, S]: what a head's logit lens reads."""
    probs_row = np.asarray(probs_row, dtype=np.float64)
    heads = probs_row.shape[0]
    per_head = values_per_head(np.asarray(values, dtype=np.float64), heads)  # [H, S, dh]
    context = np.einsum("hj,hjd->hd", probs_row, per_head)
    weight = np.asarray(block.out_proj_weight, dtype=np.float64).reshape(heads, per_head.shape[-1], -1)
    return np.einsum("hd,hdo->ho", context, weight)


def ffn_components(block_input: np.ndarray, next_input: np.ndarray) -> np.ndarray:
    """[S, 2]: the shares of the feed-forward block's input (the stream) and of its output in the
    next layer's input, for blocks whose stream holds both (pre-LN and sandwich)."""
    whole = np.asarray(next_input, dtype=np.float64)
    stream = np.asarray(block_input, dtype=np.float64)
    own = np.abs(whole).sum(-1)
    parts = np.stack([stream, whole - stream], axis=1)  # [S, 2, D]
    raw = np.maximum(own[:, None] - np.abs(whole[:, None] - parts).sum(-1), 0.0)
    return normalize_rows(raw)
