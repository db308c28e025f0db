"""Independent float64 references for the logit decompositions (docs/logit.md), written naively from
the equations on a Hugging Face model: the tests hold ``explain(..., logit=...)`` to them.

* ``reference_alti_logit``: ALTI-Logit of a causal LM. The blocks are captured by the ALTI
  reference's hooks (``models.reference``); a pre-hook on the final norm captures the final residual
  z. Every term of z_t is a vector; the linearized head F (the final norm at z_t's statistics, the
  unembedding, a softcap at its actual slope) maps each to the vocabulary, and the attribution is
  ``sum_l dlogit[l] @ R^{l-1}`` with the rollout matrices themselves.
* ``reference_classifier_logit``: a BERT sequence classifier carried forward part by part (DecompX):
  an array [S + parts, S, D] holding each input token's share of every position's vector, and one
  slot per layer (and the head) for the constants, through attention at the actual probabilities,
  every LayerNorm at its actual statistics, GELU and tanh at f(z)/z, the pooler and the classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.reference import find_adapter, reference_captures
from models.reference_math import reference_alti as reference_from_captures
from models.reference_math import transformed_vectors

_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm")


@dataclass
class LogitReference:
    value: float
    attribution: np.ndarray
    parts: dict[str, float]
    per_layer: np.ndarray | None = None


def _final_norm(model: torch.nn.Module) -> torch.nn.Module:
    found = [module for name, module in model.named_modules()  # outside the layers (no numbered path step)
             if name.split(".")[-1] in _FINAL_NORMS and not any(step.isdigit() for step in name.split("."))]
    if not found:
        raise RuntimeError("no final norm module found")
    return found[-1]


def reference_alti_logit(model, input_ids, target: int, foil: int | None = None) -> LogitReference:
    """ALTI-Logit of the last position of ``input_ids`` for token ``target`` (minus ``foil``)."""
    model.double().eval()
    adapter, _ = find_adapter(model)
    captures, _ = reference_captures(model, input_ids)
    rollout = reference_from_captures(captures).rollout
    norm = _final_norm(model)
    seen = {}

    def final_residual(module, args) -> None:
        seen["z"] = args[0][0, -1].detach().clone()

    handle = norm.register_forward_pre_hook(final_residual)
    try:
        with torch.no_grad():
            logits = model(input_ids=torch.as_tensor(np.asarray(input_ids).reshape(1, -1))).logits[0, -1].numpy()
    finally:
        handle.remove()
    z = seen["z"].numpy()
    gamma, beta, eps, rms = adapter.norm_parameters(norm)
    gamma = gamma.detach().numpy()
    beta = np.zeros_like(gamma) if beta is None else beta.detach().numpy()
    sigma = np.sqrt((np.square(z).mean() if rms else z.var()) + eps)
    head = model.get_output_embeddings()
    unembedding = head.weight.detach().numpy()
    bias = np.zeros(len(unembedding)) if head.bias is None else head.bias.detach().numpy()
    raw = unembedding @ (gamma * (z if rms else z - z.mean()) / sigma + beta) + bias
    cap = getattr(model.config, "final_logit_softcapping", None)
    slope = np.ones_like(raw) if not cap else cap * np.tanh(raw / cap) / raw
    pick = np.zeros(len(raw))
    pick[target] += 1.0
    if foil is not None:
        pick[foil] -= 1.0

    def logit_of(vector: np.ndarray) -> float:
        """F(c): the linearized head's target (minus foil) logit of one residual-stream vector."""
        centred = vector if rms else vector - vector.mean()
        return float(pick @ (slope * (unembedding @ (gamma * centred / sigma))))

    t = captures[0].x.shape[0] - 1
    per_layer, parts = [], {"embedding": logit_of(captures[0].x[t])}
    for layer, capture in enumerate(captures):
        terms = transformed_vectors(capture)[t].copy()  # T[t, j]
        terms[t] -= capture.x[t]  # the residual is not an attention term
        b_o = np.zeros(terms.shape[-1]) if capture.out_bias is None else capture.out_bias
        if capture.block_kind == "sandwich":  # y = x + n(a), n linear at a_t's statistics
            n_gamma, n_beta, n_eps = capture.norm
            a_t = terms.sum(0) + b_o
            centre = (lambda v: v) if capture.norm_rms else (lambda v: v - v.mean(-1, keepdims=True))
            s_t = np.sqrt((np.square(a_t).mean() if capture.norm_rms else a_t.var()) + n_eps)
            terms = n_gamma * centre(terms) / s_t
            constant = n_gamma * centre(b_o) / s_t + n_beta
        else:
            constant = b_o
        per_layer.append([logit_of(term) for term in terms])
        parts[f"layer {layer} attention bias"] = logit_of(constant)
        following = captures[layer + 1].x[t] if layer + 1 < len(captures) else z
        parts[f"layer {layer} mlp"] = logit_of(following - capture.block_output[t])
    parts["head"] = float(pick @ (slope * (unembedding @ beta + bias)))
    per_layer = np.asarray(per_layer)
    attribution = per_layer[0].copy()
    for layer in range(1, len(captures)):
        attribution += per_layer[layer] @ rollout[layer - 1]
    value = float(logits[target] - (0.0 if foil is None else logits[foil]))
    return LogitReference(value, attribution, parts, per_layer)


def reference_classifier_logit(model, input_ids, token_type_ids=None, target: int = 0,
                               foil: int | None = None) -> LogitReference:
    """The class logit of a BertForSequenceClassification, carried forward part by part (module docstring)."""
    model.double().eval()
    bert = model.bert
    ids = torch.as_tensor(np.asarray(input_ids).reshape(1, -1))
    types = None if token_type_ids is None else torch.as_tensor(np.asarray(token_type_ids).reshape(1, -1))
    with torch.no_grad():
        x = bert.embeddings(input_ids=ids, token_type_ids=types)[0].numpy()
        logits = model(input_ids=ids, token_type_ids=types).logits[0].numpy()
    size, width = x.shape
    layers = bert.encoder.layer
    slots = size + len(layers) + 1  # tokens, then one slot of constants per layer, then the head
    parts = np.zeros((slots, size, width))
    parts[np.arange(size), np.arange(size)] = x

    def weights(linear: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray]:
        return linear.weight.detach().numpy().T, linear.bias.detach().numpy()

    def layer_norm(module, parts: np.ndarray, actual: np.ndarray, slot: int) -> np.ndarray:
        gamma, beta = module.weight.detach().numpy(), module.bias.detach().numpy()
        sigma = np.sqrt(actual.var(-1, keepdims=True) + module.eps)
        parts = gamma * (parts - parts.mean(-1, keepdims=True)) / sigma
        parts[slot] += beta
        return parts

    def slope(function, z: np.ndarray) -> np.ndarray:
        return np.where(z == 0, 0.0, function(z) / np.where(z == 0, 1.0, z))

    gelu = lambda z: 0.5 * z * (1.0 + _erf(z / np.sqrt(2.0)))  # noqa: E731
    for number, layer in enumerate(layers):
        slot = size + number
        actual = parts.sum(0)
        attention = layer.attention.self
        heads, head_size = attention.num_attention_heads, attention.attention_head_size
        (w_q, b_q), (w_k, b_k), (w_v, b_v) = (weights(m) for m in (attention.query, attention.key, attention.value))
        q = (actual @ w_q + b_q).reshape(size, heads, head_size).transpose(1, 0, 2)
        k = (actual @ w_k + b_k).reshape(size, heads, head_size).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_size)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        values = parts @ w_v
        values[slot] += b_v
        values = values.reshape(slots, size, heads, head_size)
        mixed = np.einsum("hij,pjhd->pihd", probs, values).reshape(slots, size, width)
        w_o, b_o = weights(layer.attention.output.dense)
        projected = mixed @ w_o
        projected[slot] += b_o
        summed = parts + projected
        parts = layer_norm(layer.attention.output.LayerNorm, summed, summed.sum(0), slot)
        w_1, b_1 = weights(layer.intermediate.dense)
        inner = parts @ w_1
        inner[slot] += b_1
        inner = inner * slope(gelu, inner.sum(0))
        w_2, b_2 = weights(layer.output.dense)
        outer = inner @ w_2
        outer[slot] += b_2
        summed = parts + outer
        last = number == len(layers) - 1  # what follows the last residual sum is the head's
        parts = layer_norm(layer.output.LayerNorm, summed, summed.sum(0), slots - 1 if last else slot)
    w_p, b_p = weights(bert.pooler.dense)
    pooled = parts[:, 0] @ w_p
    pooled[-1] += b_p
    pooled = pooled * slope(np.tanh, pooled.sum(0))
    w_c, b_c = weights(model.classifier)
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
