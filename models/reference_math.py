"""The ALTI equations in float64 NumPy, from one layer's captured tensors (docs/alti.md, "One layer").

Each framework's reference (PyTorch hooks in ``models.reference``; TensorFlow, Keras 3 and Flax in
their recipes) runs its own model in float64, captures each attention block's input x,
probabilities A, values v, W_O, b_O, the norm's parameters and the block output the model
computed, and calls ``reference_alti``. Written straight from the equations, naively
(T is built whole, [S, S, D]): it shares nothing with the package's optimized math. Needs NumPy only,
so it runs in every recipe's own environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LayerCapture:
    """One attention block of one sequence (no padding), everything float64.

    ``values`` are [S, H_kv * dh] (head h reads key/value head h // (H / H_kv)); ``out_weight`` is
    [H * dh, D] with ``context @ out_weight`` the projection; ``block_output`` is what the model
    computed for y. ``kind`` (docs/alti.md, "Block kinds"):

    - ``post``: y = n(x + a), ``norm`` (gamma, beta, eps) the norm after the residual sum;
    - ``pre`` and ``parallel``: y = x + a (``norm`` None; a parallel block's y is no tensor of the
      model: its ``block_output`` is x plus the attention module's output);
    - ``sandwich``: y = x + n(a), ``norm`` the norm on the attention output.

    None infers post or pre from ``norm``. ``norm_rms``: the norm divides by the root mean square and
    does not centre (RMSNorm) rather than by the standard deviation (LayerNorm).
    """

    x: np.ndarray
    probs: np.ndarray
    values: np.ndarray
    out_weight: np.ndarray
    out_bias: np.ndarray | None
    norm: tuple[np.ndarray, np.ndarray, float] | None
    block_output: np.ndarray
    kind: str | None = None
    norm_rms: bool = False

    @property
    def block_kind(self) -> str:
        return self.kind or ("pre" if self.norm is None else "post")


@dataclass
class ReferenceResult:
    contributions: np.ndarray  # [L, S, S] float64, row-normalized C^l
    rollout: np.ndarray  # [L, S, S] float64, R^l
    block_outputs_error: np.ndarray  # [L] max |y_recomposed - y_model|


def transformed_vectors(layer: LayerCapture) -> np.ndarray:
    """T[i, j] = sum_h A^h[i, j] (v^h_j @ W_O^h) + [i == j] x_j, shape [S, S, D]."""
    heads, seq_len, _ = layer.probs.shape
    head_size = layer.out_weight.shape[0] // heads
    kv_heads = layer.values.shape[1] // head_size
    per_head = layer.values.reshape(seq_len, kv_heads, head_size).transpose(1, 0, 2)  # [H_kv, S, dh]
    per_head = np.repeat(per_head, heads // kv_heads, axis=0)  # head h reads kv head h // (H / H_kv)
    weight = layer.out_weight.reshape(heads, head_size, -1)  # the rows head h's slice multiplies
    projected = np.einsum("hjk,hkd->hjd", per_head, weight)  # v^h_j W_O^h, [H, S, D]
    transformed = np.einsum("hij,hjd->ijd", layer.probs, projected)
    transformed[np.arange(seq_len), np.arange(seq_len)] += layer.x
    return transformed


def layer_contributions(layer: LayerCapture, keep: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """C (rows normalized) and the self-check error max |y - y_model| of one block; positions where
    ``keep`` is 0 (padding) neither contribute nor receive, and are left out of the error."""
    keep = np.ones(len(layer.x), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    transformed = transformed_vectors(layer)
    bias = np.zeros(transformed.shape[-1]) if layer.out_bias is None else layer.out_bias
    kind = layer.block_kind
    if kind in ("pre", "parallel"):  # y is the residual sum itself
        final = transformed
        output = transformed.sum(1) + bias
    elif kind == "post":  # y = n(x + a): T' = gamma (T - centre) / sigma_i
        summed = transformed.sum(1) + bias  # the norm's input
        final = _normalize_terms(transformed, summed, layer)
        output = final.sum(1) + _normalize_terms(bias[None, None], summed, layer)[:, 0] + layer.norm[1]
    elif kind == "sandwich":  # y = x + n(a): the norm acts on the attention terms, not on x
        residual = np.zeros_like(transformed)
        residual[np.arange(len(layer.x)), np.arange(len(layer.x))] = layer.x
        attention = transformed - residual
        summed = attention.sum(1) + bias  # a, the norm's input
        final = _normalize_terms(attention, summed, layer) + residual
        output = final.sum(1) + _normalize_terms(bias[None, None], summed, layer)[:, 0] + layer.norm[1]
    else:
        raise ValueError(f"unknown block kind {kind!r}")
    error = float(np.abs(output - layer.block_output)[keep].max())
    distance = np.abs(output[:, None, :] - final).sum(-1)  # ||y_i - T'[i, j]||_1
    clipped = np.maximum(np.abs(output).sum(-1)[:, None] - distance, 0.0) * keep[:, None] * keep[None, :]
    totals = clipped.sum(-1, keepdims=True)
    return np.divide(clipped, totals, out=np.zeros_like(clipped), where=totals > 0), error


def _normalize_terms(terms: np.ndarray, summed: np.ndarray, layer: LayerCapture) -> np.ndarray:
    """The norm's linear part applied to each term of a sum: gamma (t - mean t) / sigma_i for a LayerNorm,
    gamma t / rms_i for an RMSNorm, with sigma_i (rms_i) of the whole sum ``summed`` [S, D]; ``terms`` [S, S', D]."""
    gamma, _, eps = layer.norm
    if layer.norm_rms:
        return gamma * terms / np.sqrt(np.square(summed).mean(-1) + eps)[:, None, None]
    sigma = np.sqrt(summed.var(-1) + eps)
    return gamma * (terms - terms.mean(-1, keepdims=True)) / sigma[:, None, None]


def reference_alti(layers: list[LayerCapture], keep: np.ndarray | None = None) -> ReferenceResult:
    """Contributions, rollout (R^1 = C^1, R^l = C^l R^(l-1)) and self-check errors of all blocks."""
    results = [layer_contributions(layer, keep) for layer in layers]
    contributions = np.stack([c for c, _ in results])
    rollout = np.empty_like(contributions)
    for k, matrix in enumerate(contributions):
        rollout[k] = matrix if k == 0 else matrix @ rollout[k - 1]
    return ReferenceResult(contributions, rollout, np.array([e for _, e in results]))
