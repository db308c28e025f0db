"""ALTI+ for encoder-decoder models (docs/alti.md, "Encoder-decoder models: ALTI+").

A decoder's cross-attention block mixes the encoder's J outputs into the decoder stream: its
probabilities are [H, T, J], and its residual is one more term per row, not a diagonal. Its
contributions are a [T, J + 1] matrix (the last column the residual); combined with the
decoder's self-attention contributions and the encoder's rollout, they give, for every target
position, one row over [source tokens; target-prefix tokens].
"""

from __future__ import annotations

import numpy as np

from alti_onnx.decomposition.arrays import Array, contiguous, dtype_in, manhattan_distances, namespace
from alti_onnx.decomposition.contributions import (
    LayerContributions,
    block_terms,
    clipped_rows,
    one_blas_thread,
    row_blocks,
)
from graph_rewrites import AttentionBlock


@one_blas_thread
@np.errstate(all="ignore")  # NaN and Inf are the caller's to report, not warnings
def cross_contributions(
    block: AttentionBlock,
    probs: Array,
    values: Array,
    residual: Array,
    block_output: Array,
    dtype: type = np.float32,
) -> LayerContributions:
    """ALTI contributions of one cross-attention block for one unpadded example: [T, J + 1], row t
    over the J memory positions and, last, the residual x_t. ``probs`` [H, T, J], ``values``
    [H_kv, J, dh], ``residual`` and ``block_output`` [T, D]. ``attention`` holds the head-averaged
    probabilities [T, J]. Any array namespace (``arrays``)."""
    xp = namespace(probs, values, residual, block_output)
    exact, working = xp.float64, dtype_in(xp, dtype)
    num_heads, rows, columns = probs.shape
    blocks = row_blocks(rows, columns * num_heads * np.dtype(dtype).itemsize)
    terms = block_terms(block, probs, values, residual, block_output, dtype, blocks)
    vectors, scale, target, y_norms = terms.vectors, terms.scale, terms.target, terms.y_norms
    carried = terms.residual_vectors  # x~_t, [T, D]

    no_diagonal = xp.zeros((1, vectors.shape[-1]), dtype=working)  # the residual is not a memory position
    # first_row = columns puts every row past the last column: the kernel's diagonal term never applies
    distance = manhattan_distances(contiguous(xp.astype(probs, working)), vectors, no_diagonal,
                                   contiguous(xp.astype(target, working)), columns)
    to_memory = y_norms[:, None] - distance / scale[:, None]
    to_residual = y_norms - xp.sum(xp.abs(target - carried), axis=-1) / scale
    raw = xp.concat([xp.astype(to_memory, exact), xp.astype(to_residual, exact)[:, None]], axis=1)
    attention_sum = xp.sum(probs, axis=0, dtype=exact)
    unread = xp.concat([attention_sum == 0.0, xp.zeros((rows, 1), dtype=xp.bool)], axis=1)  # the residual is read
    return LayerContributions(clipped_rows(raw, y_norms[:, None], unread, working), None, attention_sum / num_heads,
                              terms.error,
                              float(xp.max(xp.abs(terms.model_output))) if rows else 0.0)


def combined_rollout(encoder_rollout: Array, self_contributions: list[Array],
                     cross_contributions: list[Array]) -> Array:
    """R^l for every decoder layer, [L, T, J + T] (columns: source tokens, then target-prefix tokens).

    R^0 = [0 | I_T]; S^l = C^l_self R^(l-1); R^l[t] = X^l_res[t] S^l[t] + [X^l_src[t] R^enc | 0], with
    ``encoder_rollout`` R^enc [J, J] (the encoder's last layer), ``self_contributions`` C^l_self
    [T, T] and ``cross_contributions`` X^l [T, J + 1] per layer. Any array namespace (``arrays``).
    """
    xp = namespace(encoder_rollout, *self_contributions, *cross_contributions)
    sources = encoder_rollout.shape[0]
    targets = self_contributions[0].shape[0] if self_contributions else 0
    current = xp.concat([xp.zeros((targets, sources), dtype=xp.float64), xp.eye(targets, dtype=xp.float64)], axis=1)
    stack = []
    for own, cross in zip(self_contributions, cross_contributions, strict=True):
        mixed = cross[:, -1:] * (own @ current)
        current = xp.concat([mixed[:, :sources] + cross[:, :sources] @ encoder_rollout, mixed[:, sources:]], axis=1)
        stack.append(current)
    return xp.stack(stack) if stack else xp.zeros((0, targets, sources + targets), dtype=xp.float64)


def source_share(rollout: Array, sources: int) -> Array:
    """For each target position, the share of its last-layer row that comes from the source tokens."""
    xp = namespace(rollout)
    return xp.sum(rollout[-1, :, :sources], axis=-1)
