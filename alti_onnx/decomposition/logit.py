"""The logit of one token or class as a sum of parts (docs/logit.md).

Decoders (pre-LN, sandwich, parallel blocks): ALTI-Logit (Ferrando et al., ACL 2023). With the final
norm and the unembedding read linearly at the actual point (``g``: the logit's adjoint at the final
residual z_t, from ``linearized``), every term of z_t maps to the logit:

    dlogit[l, j] = sum_h A^{l,h}[t, j] (v^{l,h}_j . (W~^{l,h} g)) / s_t

with W~ and s_t the block kind's mixing weight and row scale (``block_kinds``: W_O and 1 for pre-LN
and parallel blocks, gamma W_O and the norm's divisor of a_t for sandwich blocks); the embedding at t,
each layer's attention bias (b_O, through the sandwich norm with its beta), each layer's MLP output
(z_{l+1} - y_l at t) and the head's constants are parts of their own. The token attribution carries
dlogit through ALTI's rollout: ``sum_l dlogit[l] @ R^{l-1}`` (R^{-1} = I), evaluated from the top
layer down so that no rollout matrix is formed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from graph_rewrites import AttentionBlock

from .block_kinds import kind_of
from .contributions import values_per_head

#: Block kinds whose attention output is added to the residual stream as it is (or through its own
#: norm): the logit is additive over them. Post-LN blocks normalize the stream itself.
ADDITIVE_KINDS = ("pre", "sandwich", "parallel")


@dataclass(frozen=True)
class LayerAtTarget:
    """What ALTI-Logit keeps of one layer for target position t, until the final residual's
    adjoint is known: A[:, t, :] ([H, S]), the values ([H_kv, S, dh]), x_t and the model's y_t
    ([D]), and the kind's row scale s_t."""

    probs: np.ndarray
    values: np.ndarray
    residual: np.ndarray
    output: np.ndarray
    scale: float


def capture_layer(block: AttentionBlock, probs: np.ndarray, values: np.ndarray, residual: np.ndarray,
                  exposed_output: np.ndarray, position: int) -> LayerAtTarget:
    """One layer at ``position``, from its block tensors for one example ([H, S, S], [H_kv, S, dh],
    [S, D], [S, D]; positions already restricted to the real tokens)."""
    kind = kind_of(block)
    row = probs[:, position, :]
    per_head = values_per_head(values, row.shape[0])
    merged = np.einsum("hs,hsd->hd", row.astype(np.float64), per_head.astype(np.float64)).reshape(-1)
    attention = merged @ block.out_proj_weight.astype(np.float64)
    if block.out_proj_bias is not None:
        attention = attention + block.out_proj_bias
    x_t = residual[position].astype(np.float64)
    scale = float(kind.row_scale(block, attention[None], x_t[None])[0])
    y_t = kind.model_output(block, exposed_output[position][None].astype(np.float64), x_t[None])[0]
    return LayerAtTarget(row.astype(np.float32), np.ascontiguousarray(values), x_t, y_t, scale)


@dataclass(frozen=True)
class LogitParts:
    """A logit (or a target-minus-foil difference) as parts: ``attribution`` per input token,
    ``parts`` the other terms by name, ``per_layer`` [L, S] and ``per_head`` [L, H, S] for decoders,
    ``reconstruction_error`` |sum of everything - value| relative to the logits' scale."""

    value: float
    attribution: np.ndarray
    parts: dict[str, float]
    reconstruction_error: float
    per_layer: np.ndarray | None = None
    per_head: np.ndarray | None = None


def alti_logit(blocks: list[AttentionBlock], layers: list[LayerAtTarget], gradient: np.ndarray,
               final_residual: np.ndarray, head: float, value: float, scale: float,
               times_contributions: Callable[[np.ndarray, int], np.ndarray]) -> LogitParts:
    """ALTI-Logit of one example (module docstring). ``gradient``: g at z_t; ``final_residual``: z_t;
    ``head``: the head's constant parts; ``value``: the model's logit (difference); ``scale``: what the
    reconstruction error is relative to; ``times_contributions(v, l)``: v @ C^l of ALTI."""
    g = np.asarray(gradient, dtype=np.float64)
    per_head_rows, parts = [], {"embedding": float(g @ layers[0].residual)}
    for layer, (block, at) in enumerate(zip(blocks, layers)):
        kind = kind_of(block)
        heads = at.probs.shape[0]
        projected = (kind.mixing_weight(block) @ g).reshape(heads, -1) / at.scale  # W~^h g / s_t, [H, dh]
        per_head = at.probs * np.einsum("hsd,hd->hs", values_per_head(at.values, heads).astype(np.float64), projected)
        per_head_rows.append(per_head)
        parts[f"layer {layer} attention bias"] = float(g @ _attention_constant(block, at.scale))
        following = layers[layer + 1].residual if layer + 1 < len(layers) else final_residual
        parts[f"layer {layer} mlp"] = float(g @ (following - at.output))
    parts["head"] = float(head)
    per_head = np.stack(per_head_rows)
    per_layer = per_head.sum(1)
    attribution = per_layer[-1].copy()
    for layer in range(len(layers) - 1, 0, -1):  # sum_l dlogit[l] @ C^(l-1) ... C^0, top layer first
        attribution = times_contributions(attribution, layer - 1) + per_layer[layer - 1]
    total = float(per_layer.sum() + sum(parts.values()))
    return LogitParts(value, attribution, parts, abs(total - value) / scale, per_layer, per_head)


def _attention_constant(block: AttentionBlock, scale: float) -> np.ndarray:
    """What the attention output adds to the stream besides its token terms: b_O, or for a sandwich
    block n(.)'s linear map of b_O plus the norm's bias."""
    bias = np.zeros(block.hidden_size) if block.out_proj_bias is None else block.out_proj_bias.astype(np.float64)
    if block.kind != "sandwich":
        return bias
    if not block.norm_rms:
        bias = bias - bias.mean()
    constant = block.norm_weight * bias / scale
    return constant + (0.0 if block.norm_bias is None else block.norm_bias)


def token_parts(adjoint: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Each position's part of the output: its adjoint at the source times the source there, [S]."""
    return np.einsum("sd,sd->s", np.asarray(adjoint, dtype=np.float64), np.asarray(source, dtype=np.float64))
