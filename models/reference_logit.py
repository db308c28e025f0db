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

import numpy as np
import torch

from models.reference import find_adapter, reference_captures
from models.reference_logit_math import BertLayerWeights, LogitReference, decompx_classifier
from models.reference_math import reference_alti as reference_from_captures
from models.reference_math import transformed_vectors

_FINAL_NORMS = ("norm", "ln_f", "final_layer_norm", "final_layernorm")


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
    """The class logit of a PyTorch BertForSequenceClassification, carried forward part by part (module docstring)."""
    model.double().eval()
    bert = model.bert
    ids = torch.as_tensor(np.asarray(input_ids).reshape(1, -1))
    types = None if token_type_ids is None else torch.as_tensor(np.asarray(token_type_ids).reshape(1, -1))
    with torch.no_grad():
        x = bert.embeddings(input_ids=ids, token_type_ids=types)[0].numpy()
        logits = model(input_ids=ids, token_type_ids=types).logits[0].numpy()

    def linear(module) -> tuple[np.ndarray, np.ndarray]:
        return module.weight.detach().numpy().T, module.bias.detach().numpy()

    def norm(module) -> tuple[np.ndarray, np.ndarray, float]:
        return module.weight.detach().numpy(), module.bias.detach().numpy(), float(module.eps)

    layers = [BertLayerWeights(
        layer.attention.self.num_attention_heads, linear(layer.attention.self.query), linear(layer.attention.self.key),
        linear(layer.attention.self.value), linear(layer.attention.output.dense), norm(layer.attention.output.LayerNorm),
        linear(layer.intermediate.dense), linear(layer.output.dense), norm(layer.output.LayerNorm),
    ) for layer in bert.encoder.layer]
    return decompx_classifier(x, layers, linear(bert.pooler.dense), linear(model.classifier), logits, target, foil)
