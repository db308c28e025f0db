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
    cross: bool = False  #: a cross-attention block: probs [H, T, J] over a memory, the residual one more term per row

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
    heads, _, seq_len = layer.probs.shape  # seq_len: the positions the values belong to
    head_size = layer.out_weight.shape[0] // heads
    kv_heads = layer.values.shape[1] // head_size
    per_head = layer.values.reshape(seq_len, kv_heads, head_size).transpose(1, 0, 2)  # [H_kv, S, dh]
    per_head = np.repeat(per_head, heads // kv_heads, axis=0)  # head h reads kv head h // (H / H_kv)
    weight = layer.out_weight.reshape(heads, head_size, -1)  # the rows head h's slice multiplies
    projected = np.einsum("hjk,hkd->hjd", per_head, weight)  # v^h_j W_O^h, [H, S, D]
    transformed = np.einsum("hij,hjd->ijd", layer.probs, projected)
    if layer.cross:  # T[t, J] = x_t: the residual is a column of its own
        return np.concatenate([transformed, layer.x[:, None, :]], axis=1)
    transformed[np.arange(seq_len), np.arange(seq_len)] += layer.x
    return transformed


def layer_contributions(layer: LayerCapture, keep: np.ndarray | None = None,
                        keep_columns: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """C (rows normalized) and the self-check error max |y - y_model| of one block; positions where
    ``keep`` is 0 (padding) neither contribute nor receive, and are left out of the error. A cross
    block's columns are the memory positions (``keep_columns``) and, last, the residual."""
    keep = np.ones(len(layer.x), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if layer.cross:
        memory = np.ones(layer.probs.shape[-1], dtype=bool) if keep_columns is None else np.asarray(keep_columns, bool)
        keep_columns = np.concatenate([memory, [True]])
    else:
        keep_columns = keep
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
    clipped = np.maximum(np.abs(output).sum(-1)[:, None] - distance, 0.0) * keep[:, None] * keep_columns[None, :]
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


@dataclass
class Seq2SeqReference:
    """ALTI+ of one (source, target prefix) pair, float64 (docs/alti.md, "Encoder-decoder models")."""

    encoder: ReferenceResult  # contributions and rollout over the J source tokens
    self_contributions: np.ndarray  # [L, T, T] the decoder's self-attention C^l
    cross_contributions: np.ndarray  # [L, T, J + 1] X^l, the residual last
    combined: np.ndarray  # [L, T, J + T] R^l, columns the source tokens then the target prefix
    source_share: np.ndarray  # [T] sum of R^L's source columns
    block_outputs_error: np.ndarray  # [2 L] self, cross, self, ... max |y_recomposed - y_model|


def reference_alti_plus(encoder: list[LayerCapture], self_blocks: list[LayerCapture],
                        cross_blocks: list[LayerCapture]) -> Seq2SeqReference:
    """ALTI+ from each block's captured tensors, written from the equations (loops, no shortcuts)."""
    encoded = reference_alti(encoder)
    sources = encoded.rollout.shape[-1]
    targets = len(self_blocks[0].x)
    own = [layer_contributions(layer) for layer in self_blocks]
    cross = [layer_contributions(layer) for layer in cross_blocks]
    combined = np.zeros((len(self_blocks), targets, sources + targets))
    previous = np.concatenate([np.zeros((targets, sources)), np.eye(targets)], axis=1)  # R^0
    for layer, ((c_self, _), (x_cross, _)) in enumerate(zip(own, cross)):
        for t in range(targets):
            through_self = sum(c_self[t, k] * previous[k] for k in range(targets))  # S^l[t]
            row = x_cross[t, sources] * through_self
            for j in range(sources):
                row[:sources] += x_cross[t, j] * encoded.rollout[-1][j]
            combined[layer, t] = row
        previous = combined[layer]
    errors = np.array([e for pair in zip(own, cross) for _, e in pair])
    return Seq2SeqReference(encoded, np.stack([c for c, _ in own]), np.stack([c for c, _ in cross]), combined,
                            combined[-1][:, :sources].sum(-1), errors)


def component_contributions(layer: LayerCapture) -> tuple[np.ndarray, np.ndarray]:
    """Issue 26's component contributions of one self-attention block, from the definitions: each
    (head h, source j) term A^h[i, j] v^h_j W_O^h and the residual x_i, read through the block's norm
    as ALTI reads them (post-LN: centred, times gamma / sigma(x + a); sandwich: the attention terms
    through the norm at a's statistics), and each one's proximity max(||y_i|| - ||y_i - part||, 0) to
    the block's output, normalized over a row's parts. Returns ([H, S, S], [S])."""
    heads, _, seq = layer.probs.shape
    head_size = layer.out_weight.shape[0] // heads
    kv_heads = layer.values.shape[1] // head_size
    per_head = np.repeat(layer.values.reshape(seq, kv_heads, head_size).transpose(1, 0, 2), heads // kv_heads, axis=0)
    weight = layer.out_weight.reshape(heads, head_size, -1)
    terms = np.einsum("hij,hjk,hkd->hijd", layer.probs, per_head, weight)  # [H, S_i, S_j, D]
    bias = np.zeros(weight.shape[-1]) if layer.out_bias is None else layer.out_bias
    attention = terms.sum((0, 2)) + bias
    centre = (lambda t: t) if layer.norm_rms else (lambda t: t - t.mean(-1, keepdims=True))
    kind = layer.block_kind
    if kind == "post":
        gamma, _, eps = layer.norm
        summed = layer.x + attention
        sigma = np.sqrt((np.square(summed).mean(-1) if layer.norm_rms else summed.var(-1)) + eps)
        mapped = gamma * centre(terms) / sigma[None, :, None, None]
        own = gamma * centre(layer.x) / sigma[:, None]
    elif kind == "sandwich":
        gamma, _, eps = layer.norm
        s = np.sqrt((np.square(attention).mean(-1) if layer.norm_rms else attention.var(-1)) + eps)
        mapped = gamma * centre(terms) / s[None, :, None, None]
        own = layer.x
    else:
        mapped, own = terms, layer.x
    y = layer.block_output
    norm_y = np.abs(y).sum(-1)
    shares = np.maximum(norm_y[None, :, None] - np.abs(y[None, :, None, :] - mapped).sum(-1), 0.0)
    shares[layer.probs == 0] = 0.0
    residual = np.maximum(norm_y - np.abs(y - own).sum(-1), 0.0)
    totals = shares.sum((0, 2)) + residual
    scale = np.where(totals > 0, totals, 1.0)
    return shares / scale[None, :, None], residual / scale
