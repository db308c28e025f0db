"""The float64 equations of the logit references (``models.reference_logit``) in NumPy alone, so that
the frameworks' own environments (TensorFlow's, for tf2onnx exports) run them too: DecompX carried
forward share by share through a BERT classifier."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LogitReference:
    value: float
    attribution: np.ndarray
    parts: dict[str, float]
    per_layer: np.ndarray | None = None


@dataclass
class BertLayerWeights:
    """One BERT layer's parameters as NumPy float64 arrays, ``x @ W + b`` convention; norms (gamma, beta, eps)."""

    heads: int
    query: tuple[np.ndarray, np.ndarray]
    key: tuple[np.ndarray, np.ndarray]
    value: tuple[np.ndarray, np.ndarray]
    output: tuple[np.ndarray, np.ndarray]
    attention_norm: tuple[np.ndarray, np.ndarray, float]
    inner: tuple[np.ndarray, np.ndarray]
    outer: tuple[np.ndarray, np.ndarray]
    output_norm: tuple[np.ndarray, np.ndarray, float]


def decompx_classifier(x: np.ndarray, layers: list[BertLayerWeights], pooler: tuple[np.ndarray, np.ndarray],
                       classifier: tuple[np.ndarray, np.ndarray], logits: np.ndarray, target: int,
                       foil: int | None = None) -> LogitReference:
    """A BERT classifier's logit carried forward part by part from its first layer's input ``x`` [S, D]
    (every position a real token): shares [S + L + 1, S, D], one slot of constants per layer and the
    head's; ``logits`` the framework's own, for the value."""
    size, width = x.shape
    slots = size + len(layers) + 1  # tokens, then one slot of constants per layer, then the head
    parts = np.zeros((slots, size, width))
    parts[np.arange(size), np.arange(size)] = x

    def layer_norm(weights, parts: np.ndarray, actual: np.ndarray, slot: int) -> np.ndarray:
        gamma, beta, eps = weights
        sigma = np.sqrt(actual.var(-1, keepdims=True) + eps)
        parts = gamma * (parts - parts.mean(-1, keepdims=True)) / sigma
        parts[slot] += beta
        return parts

    def slope(function, z: np.ndarray) -> np.ndarray:
        return np.where(z == 0, 0.0, function(z) / np.where(z == 0, 1.0, z))

    gelu = lambda z: 0.5 * z * (1.0 + _erf(z / np.sqrt(2.0)))  # noqa: E731
    for number, layer in enumerate(layers):
        slot = size + number
        actual = parts.sum(0)
        heads = layer.heads
        head_size = width // heads
        (w_q, b_q), (w_k, b_k), (w_v, b_v) = layer.query, layer.key, layer.value
        q = (actual @ w_q + b_q).reshape(size, heads, head_size).transpose(1, 0, 2)
        k = (actual @ w_k + b_k).reshape(size, heads, head_size).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_size)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        values = parts @ w_v
        values[slot] += b_v
        values = values.reshape(slots, size, heads, head_size)
        mixed = np.einsum("hij,pjhd->pihd", probs, values).reshape(slots, size, width)
        w_o, b_o = layer.output
        projected = mixed @ w_o
        projected[slot] += b_o
        summed = parts + projected
        parts = layer_norm(layer.attention_norm, summed, summed.sum(0), slot)
        w_1, b_1 = layer.inner
        inner = parts @ w_1
        inner[slot] += b_1
        inner = inner * slope(gelu, inner.sum(0))
        w_2, b_2 = layer.outer
        outer = inner @ w_2
        outer[slot] += b_2
        summed = parts + outer
        last = number == len(layers) - 1  # what follows the last residual sum is the head's
        parts = layer_norm(layer.output_norm, summed, summed.sum(0), slots - 1 if last else slot)
    w_p, b_p = pooler
    pooled = parts[:, 0] @ w_p
    pooled[-1] += b_p
    pooled = pooled * slope(np.tanh, pooled.sum(0))
    w_c, b_c = classifier
    final = pooled @ w_c
    final[-1] += b_c
    pick = np.zeros(final.shape[-1])
    pick[target] += 1.0
    if foil is not None:
        pick[foil] -= 1.0
    shares = final @ pick
    named = {f"layer {k}": float(shares[size + k]) for k in range(len(layers))}
    named["head"] = float(shares[-1])
    value = float(logits[target] - (0.0 if foil is None else logits[foil]))
    return LogitReference(value, shares[:size], named)


def _erf(z: np.ndarray) -> np.ndarray:
    from math import erf

    return np.vectorize(erf)(z)
