"""Independent float64 PyTorch reference for ALTI (see /work/shared/ALTI.md).

Written directly from the equations, on a Hugging Face model run in float64 with forward hooks:

* a forward pre-hook on each layer captures the layer input x,
* a forward hook on the value projection captures v (= n(x) W_V + b_V),
* a forward hook on the "check" norm captures what the model really computes for y
  (post-LN: the attention LayerNorm's output; pre-LN: the residual sum, i.e. the input of the norm
  that follows the attention block),
* the attention probabilities come from ``output_attentions=True`` (eager attention).

W_O, b_O, gamma, beta and eps are read from the modules. The per-architecture knowledge lives in
the small ``ADAPTERS`` table. Only used by tests and fixture recipes; the package itself never
imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["Adapter", "ADAPTERS", "ReferenceResult", "reference_alti", "find_adapter"]


@dataclass
class ReferenceResult:
    contributions: np.ndarray  # [L, S, S] float64, row-normalized C^l
    rollout: np.ndarray  # [L, S, S] float64, R^l
    block_outputs_error: np.ndarray  # [L] max |y_recomposed - y_model|


def _linear_w(mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) with the convention out = x @ W + b, for nn.Linear and GPT-2's Conv1D."""
    if isinstance(mod, nn.Linear):
        return mod.weight.T, mod.bias
    # transformers.pytorch_utils.Conv1D: out = x @ weight + bias
    return mod.weight, mod.bias


@dataclass
class Adapter:
    """Where the pieces of one architecture live.

    layers(base) -> list of blocks; value(layer) -> module whose output holds v (value_slice(D)
    picks v's columns out of it, e.g. GPT-2's fused c_attn); out_proj(layer) -> W_O module;
    check_norm(layer) -> post-LN: the attention LayerNorm (its output is y); pre-LN: the norm that
    follows the attention block (its input is y). num_heads / num_kv_heads read the config.
    """

    model_types: tuple[str, ...]
    layers: Callable[[nn.Module], list]
    value: Callable[[nn.Module], nn.Module]
    out_proj: Callable[[nn.Module], nn.Module]
    check_norm: Callable[[nn.Module], nn.Module]
    num_heads: Callable[[object], int]
    pre_ln: bool = False
    num_kv_heads: Callable[[object], int] | None = None
    value_slice: Callable[[int], slice] | None = None
    accepts_token_type_ids: bool = True


_BERT_LIKE = Adapter(
    model_types=("bert", "roberta", "electra", "xlm-roberta", "camembert"),
    layers=lambda base: list(base.encoder.layer),
    value=lambda layer: layer.attention.self.value,
    out_proj=lambda layer: layer.attention.output.dense,
    check_norm=lambda layer: layer.attention.output.LayerNorm,
    num_heads=lambda cfg: cfg.num_attention_heads,
)

_DISTILBERT = Adapter(
    model_types=("distilbert",),
    layers=lambda base: list(base.transformer.layer),
    value=lambda layer: layer.attention.v_lin,
    out_proj=lambda layer: layer.attention.out_lin,
    check_norm=lambda layer: layer.sa_layer_norm,
    num_heads=lambda cfg: cfg.n_heads,
    accepts_token_type_ids=False,
)

_GPT2 = Adapter(
    model_types=("gpt2",),
    layers=lambda base: list(base.h),
    value=lambda layer: layer.attn.c_attn,
    value_slice=lambda d: slice(2 * d, 3 * d),
    out_proj=lambda layer: layer.attn.c_proj,
    check_norm=lambda layer: layer.ln_2,
    num_heads=lambda cfg: cfg.n_head,
    pre_ln=True,
    accepts_token_type_ids=False,
)

_LLAMA = Adapter(
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    layers=lambda base: list(base.layers),
    value=lambda layer: layer.self_attn.v_proj,
    out_proj=lambda layer: layer.self_attn.o_proj,
    check_norm=lambda layer: layer.post_attention_layernorm,
    num_heads=lambda cfg: cfg.num_attention_heads,
    num_kv_heads=lambda cfg: getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads,
    pre_ln=True,
    accepts_token_type_ids=False,
)

ADAPTERS: dict[str, Adapter] = {t: a for a in (_BERT_LIKE, _DISTILBERT, _GPT2, _LLAMA) for t in a.model_types}


def find_adapter(model: nn.Module) -> tuple[Adapter, nn.Module]:
    """The adapter for ``model`` and its base model (task heads are unwrapped)."""
    mt = model.config.model_type
    if mt not in ADAPTERS:
        raise NotImplementedError(f"no ALTI reference adapter for model_type {mt!r}")
    base = getattr(model, "base_model", model)
    return ADAPTERS[mt], base


def _layer_T(x, v, A, W_O, adapter: Adapter, cfg) -> torch.Tensor:
    """T[i,j] = sum_h A^h[i,j] (v^h_j @ W_O^h) + [i==j] x_j, shape [S, S, D]."""
    S, D = x.shape
    H = adapter.num_heads(cfg)
    dh = W_O.shape[0] // H
    Hkv = adapter.num_kv_heads(cfg) if adapter.num_kv_heads else H
    vh = v.reshape(S, Hkv, dh).permute(1, 0, 2)  # [Hkv, S, dh]
    vh = vh.repeat_interleave(H // Hkv, dim=0)  # head h reads kv head h // (H/Hkv)
    W_Oh = W_O.reshape(H, dh, W_O.shape[1])  # rows of W_O that head h's slice multiplies
    vW = torch.einsum("hjk,hkd->hjd", vh, W_Oh)  # [H, S, D]
    T = torch.empty(S, S, W_O.shape[1], dtype=x.dtype)
    for i in range(S):  # one query row at a time: clarity over speed
        T[i] = torch.einsum("hj,hjd->jd", A[:, i, :], vW)
        T[i, i] += x[i]
    return T


@torch.no_grad()
def reference_alti(model, input_ids, attention_mask=None, token_type_ids=None) -> ReferenceResult:
    """ALTI contributions and rollout of one sequence, in float64, on a Hugging Face model.

    ``input_ids`` is [S] or [1, S]. The model is converted in place to float64 and eval mode.
    Masked positions (attention_mask == 0) get zero rows and columns.
    """
    model.double().eval()
    adapter, base = find_adapter(model)
    cfg = model.config
    if adapter.pre_ln and getattr(cfg, "_attn_implementation", "eager") != "eager":
        try:
            model.set_attn_implementation("eager")
        except Exception:  # pragma: no cover
            pass

    def as_batch(t):
        if t is None:
            return None
        t = torch.as_tensor(np.asarray(t), dtype=torch.long)
        return t.reshape(1, -1)

    ids = as_batch(input_ids)
    mask = as_batch(attention_mask)
    if mask is None:
        mask = torch.ones_like(ids)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if token_type_ids is not None and adapter.accepts_token_type_ids:
        kwargs["token_type_ids"] = as_batch(token_type_ids)

    layers = adapter.layers(base)
    caps: list[dict] = [dict() for _ in layers]
    handles = []
    for l, layer in enumerate(layers):
        c = caps[l]

        def pre_hook(mod, args, kw, c=c):
            h = args[0] if args else next(kw[k] for k in ("hidden_states", "hidden_state", "x") if k in kw)
            c["x"] = h[0].clone()

        def value_hook(mod, inp, out, c=c):
            c["v"] = out[0].clone()

        def norm_hook(mod, inp, out, c=c):
            c["norm_in"] = inp[0][0].clone()
            c["norm_out"] = out[0].clone()

        handles.append(layer.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(adapter.value(layer).register_forward_hook(value_hook))
        handles.append(adapter.check_norm(layer).register_forward_hook(norm_hook))
    try:
        out = base(**kwargs, output_attentions=True, return_dict=True)
    finally:
        for h in handles:
            h.remove()
    attentions = out.attentions
    if attentions is None or any(a is None for a in attentions):
        raise RuntimeError("the model returned no attention probabilities; load it with attn_implementation='eager'")

    keep = mask[0].to(torch.float64)  # [S]
    Cs, errs = [], []
    for l, layer in enumerate(layers):
        c = caps[l]
        x, A = c["x"], attentions[l][0].to(torch.float64)  # [S, D], [H, S, S]
        D = x.shape[-1]
        v = c["v"][:, adapter.value_slice(D)] if adapter.value_slice else c["v"]
        W_O, b_O = _linear_w(adapter.out_proj(layer))
        if b_O is None:
            b_O = torch.zeros(W_O.shape[1], dtype=torch.float64)
        T = _layer_T(x, v, A, W_O, adapter, cfg)
        if adapter.pre_ln:
            Tp = T
            y = T.sum(1) + b_O
            y_model = c["norm_in"]
        else:
            ln = adapter.check_norm(layer)
            gamma, beta, eps = ln.weight, ln.bias, ln.eps
            u = T.sum(1) + b_O  # the LayerNorm's input
            sigma = torch.sqrt(u.var(-1, unbiased=False) + eps)  # [S]
            Tp = gamma * (T - T.mean(-1, keepdim=True)) / sigma[:, None, None]
            y = Tp.sum(1) + gamma * (b_O - b_O.mean()) / sigma[:, None] + beta
            y_model = c["norm_out"]
        valid = keep.bool()
        errs.append((y - y_model)[valid].abs().max().item())
        y_l1 = y.abs().sum(-1)  # [S]
        dist = (y[:, None, :] - Tp).abs().sum(-1)  # [S, S]
        cm = torch.clamp(y_l1[:, None] - dist, min=0.0)
        cm = cm * keep[:, None] * keep[None, :]
        rs = cm.sum(-1, keepdim=True)
        Cs.append(torch.where(rs > 0, cm / torch.where(rs > 0, rs, 1.0), 0.0))
    C = torch.stack(Cs)
    R = torch.empty_like(C)
    R[0] = C[0]
    for l in range(1, C.shape[0]):
        R[l] = C[l] @ R[l - 1]
    return ReferenceResult(
        contributions=C.numpy().astype(np.float64),
        rollout=R.numpy().astype(np.float64),
        block_outputs_error=np.asarray(errs, dtype=np.float64),
    )
