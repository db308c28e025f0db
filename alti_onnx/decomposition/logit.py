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
from types import ModuleType

import numpy as np

from graph_rewrites import AttentionBlock

from .arrays import Array, block_array, contiguous, namespace
from .block_kinds import kind_of
from .contributions import mixing_weight, output_bias, output_weight, values_per_head

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


def capture_layer(block: AttentionBlock, probs: Array, values: Array, residual: Array,
                  exposed_output: Array, position: int) -> LayerAtTarget:
    """One layer at ``position``, from its block tensors for one example ([H, S, S], [H_kv, S, dh],
    [S, D], [S, D]; positions already restricted to the real tokens). Any array namespace (``arrays``)."""
    xp = namespace(probs, values, residual, exposed_output)
    kind = kind_of(block)
    row = probs[:, position, :]
    per_head = xp.astype(values_per_head(values, row.shape[0]), xp.float64)
    merged = xp.reshape(xp.matmul(xp.astype(row, xp.float64)[:, None, :], per_head), (-1,))  # merge_h A^h[t] V^h
    attention = merged @ output_weight(block, xp, np.float64) + output_bias(block, xp)
    x_t = xp.astype(residual[position, :], xp.float64)
    scale = float(kind.row_scale(block, attention[None, :], x_t[None, :])[0])
    y_t = kind.model_output(block, xp.astype(exposed_output[position, :], xp.float64)[None, :], x_t[None, :])[0, :]
    return LayerAtTarget(xp.astype(row, xp.float32), contiguous(values), x_t, y_t, scale)


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


def alti_logit(blocks: list[AttentionBlock], layers: list[LayerAtTarget], gradient: Array,
               final_residual: Array, head: float, value: float, scale: float,
               times_contributions: Callable[[Array, int], Array]) -> LogitParts:
    """ALTI-Logit of one example (module docstring). ``gradient``: g at z_t; ``final_residual``: z_t;
    ``head``: the head's constant parts; ``value``: the model's logit (difference); ``scale``: what the
    reconstruction error is relative to; ``times_contributions(v, l)``: v @ C^l of ALTI. Any array
    namespace (``arrays``); the parts by name are floats."""
    xp = namespace(gradient, final_residual)
    g = xp.astype(gradient, xp.float64)
    per_head_rows, parts = [], {"embedding": float(xp.sum(g * layers[0].residual))}
    for layer, (block, at) in enumerate(zip(blocks, layers)):
        heads = at.probs.shape[0]
        projected = xp.reshape(mixing_weight(block, xp, np.float64) @ g, (heads, -1)) / at.scale  # W~^h g / s_t, [H, dh]
        per_value = xp.matmul(xp.astype(values_per_head(at.values, heads), xp.float64), projected[:, :, None])[..., 0]
        per_head_rows.append(xp.astype(at.probs, xp.float64) * per_value)  # [H, S]
        parts[f"layer {layer} attention bias"] = float(xp.sum(g * _attention_constant(block, at.scale, xp)))
        following = layers[layer + 1].residual if layer + 1 < len(layers) else final_residual
        parts[f"layer {layer} mlp"] = float(xp.sum(g * (following - at.output)))
    parts["head"] = float(head)
    per_head = xp.stack(per_head_rows)
    per_layer = xp.sum(per_head, axis=1)
    attribution = per_layer[-1, :]
    for layer in range(len(layers) - 1, 0, -1):  # sum_l dlogit[l] @ C^(l-1) ... C^0, top layer first
        attribution = times_contributions(attribution, layer - 1) + per_layer[layer - 1, :]
    total = float(xp.sum(per_layer)) + sum(parts.values())
    return LogitParts(value, attribution, parts, abs(total - value) / scale, per_layer, per_head)


def _attention_constant(block: AttentionBlock, scale: float, xp: ModuleType) -> Array:
    """What the attention output adds to the stream besides its token terms: b_O, or for a sandwich
    block n(.)'s linear map of b_O plus the norm's bias."""
    bias = output_bias(block, xp)
    if isinstance(bias, float):
        bias = xp.zeros(block.hidden_size, dtype=xp.float64)
    if block.kind != "sandwich":
        return bias
    if not block.norm_rms:
        bias = bias - xp.mean(bias)
    gamma = block_array(block, "norm_weight", xp, np.float64, lambda: block.norm_weight)
    constant = gamma * bias / scale
    if block.norm_bias is None:
        return constant
    return constant + block_array(block, "norm_bias", xp, np.float64, lambda: block.norm_bias)


def token_parts(adjoint: Array, source: Array) -> Array:
    """Each position's part of the output: its adjoint at the source times the source there, [S]."""
    xp = namespace(adjoint, source)
    return xp.sum(xp.astype(adjoint, xp.float64) * xp.astype(source, xp.float64), axis=-1)
