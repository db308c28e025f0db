"""ALTI+ for encoder-decoder models (docs/alti.md, "Encoder-decoder models: ALTI+").

A decoder's cross-attention block mixes the encoder's J outputs into the decoder stream: its
probabilities are [H, T, J], and its residual is one more term per row, not a diagonal. Its
contributions are a [T, J + 1] matrix (the last column the residual); combined with the
decoder's self-attention contributions and the encoder's rollout, they give, for every target
position, one row over [source tokens; target-prefix tokens].
"""

from __future__ import annotations

import numpy as np

from alti_onnx.decomposition.contributions import (
    LayerContributions,
    block_terms,
    normalize_rows,
    one_blas_thread,
    row_blocks,
)
from alti_onnx.decomposition.distances import manhattan_distances
from graph_rewrites import AttentionBlock


@one_blas_thread
@np.errstate(all="ignore")  # NaN and Inf are the caller's to report, not warnings
def cross_contributions(
    block: AttentionBlock,
    probs: np.ndarray,
    values: np.ndarray,
    residual: np.ndarray,
    block_output: np.ndarray,
    dtype: type = np.float32,
) -> LayerContributions:
    """ALTI contributions of one cross-attention block for one unpadded example: [T, J + 1], row t
    over the J memory positions and, last, the residual x_t. ``probs`` [H, T, J], ``values``
    [H_kv, J, dh], ``residual`` and ``block_output`` [T, D]. ``attention`` holds the head-averaged
    probabilities [T, J]."""
    probs = np.asarray(probs)
    exact = np.float64
    num_heads, rows, columns = probs.shape
    blocks = row_blocks(rows, columns * num_heads * np.dtype(dtype).itemsize)
    terms = block_terms(block, probs, values, residual, block_output, dtype, blocks)
    vectors, scale, target, y_norms = terms.vectors, terms.scale, terms.target, terms.y_norms
    carried = terms.residual_vectors  # x~_t, [T, D]

    raw = np.empty((rows, columns + 1), dtype=exact)
    distance = np.empty((rows, columns), dtype=dtype)
    no_diagonal = np.zeros((1, vectors.shape[-1]), dtype=dtype)  # the residual is not a memory position
    # first_row = columns puts every row past the last column: the kernel's diagonal term never applies
    manhattan_distances(np.ascontiguousarray(probs, dtype=dtype), vectors, no_diagonal,
                        np.ascontiguousarray(target, dtype=dtype), distance, columns)
    raw[:, :columns] = y_norms[:, None] - distance / scale[:, None]
    raw[:, columns] = y_norms - np.abs(target - carried).sum(-1) / scale
    raw[raw <= 8 * np.finfo(dtype).eps * y_norms[:, None]] = 0.0  # rounding noise, as in layer_contributions
    attention_sum = probs.sum(0, dtype=np.float64)
    raw[:, :columns][attention_sum == 0.0] = 0.0  # no head reads j (padding): exactly no contribution
    return LayerContributions(normalize_rows(raw), None, attention_sum / num_heads, terms.error,
                              float(np.abs(terms.model_output).max()) if rows else 0.0)


def combined_rollout(encoder_rollout: np.ndarray, self_contributions: list[np.ndarray],
                     cross_contributions: list[np.ndarray]) -> np.ndarray:
    """R^l for every decoder layer, [L, T, J + T] (columns: source tokens, then target-prefix tokens).

    R^0 = [0 | I_T]; S^l = C^l_self R^(l-1); R^l[t] = X^l_res[t] S^l[t] + [X^l_src[t] R^enc | 0], with
    ``encoder_rollout`` R^enc [J, J] (the encoder's last layer), ``self_contributions`` C^l_self
    [T, T] and ``cross_contributions`` X^l [T, J + 1] per layer.
    """
    sources = encoder_rollout.shape[0]
    targets = self_contributions[0].shape[0] if self_contributions else 0
    current = np.concatenate([np.zeros((targets, sources)), np.eye(targets)], axis=1)
    stack = np.empty((len(self_contributions), targets, sources + targets))
    for layer, (own, cross) in enumerate(zip(self_contributions, cross_contributions, strict=True)):
        mixed = own @ current
        current = cross[:, -1:] * mixed
        current[:, :sources] += cross[:, :sources] @ encoder_rollout
        stack[layer] = current
    return stack


def source_share(rollout: np.ndarray, sources: int) -> np.ndarray:
    """For each target position, the share of its last-layer row that comes from the source tokens."""
    return rollout[-1][:, :sources].sum(-1)
