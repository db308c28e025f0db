"""Independent float64 PyTorch reference for ALTI: a Hugging Face model run in float64 with forward
hooks, its captures handed to the equations in ``models.reference_math``:

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

from models.reference_math import LayerCapture, ReferenceResult
from models.reference_math import reference_alti as reference_from_captures

__all__ = ["Adapter", "ADAPTERS", "ReferenceResult", "reference_alti", "find_adapter"]


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
    follows the attention block (its input is y). Heads and key/value heads come from the tensors' shapes.
    """

    model_types: tuple[str, ...]
    layers: Callable[[nn.Module], list]
    value: Callable[[nn.Module], nn.Module]
    out_proj: Callable[[nn.Module], nn.Module]
    check_norm: Callable[[nn.Module], nn.Module]
    pre_ln: bool = False
    value_slice: Callable[[int], slice] | None = None
    accepts_token_type_ids: bool = True


_BERT_LIKE = Adapter(
    model_types=("bert", "roberta", "electra", "xlm-roberta", "camembert"),
    layers=lambda base: list(base.encoder.layer),
    value=lambda layer: layer.attention.self.value,
    out_proj=lambda layer: layer.attention.output.dense,
    check_norm=lambda layer: layer.attention.output.LayerNorm,
)

_DISTILBERT = Adapter(
    model_types=("distilbert",),
    layers=lambda base: list(base.transformer.layer),
    value=lambda layer: layer.attention.v_lin,
    out_proj=lambda layer: layer.attention.out_lin,
    check_norm=lambda layer: layer.sa_layer_norm,
    accepts_token_type_ids=False,
)

_GPT2 = Adapter(
    model_types=("gpt2",),
    layers=lambda base: list(base.h),
    value=lambda layer: layer.attn.c_attn,
    value_slice=lambda d: slice(2 * d, 3 * d),
    out_proj=lambda layer: layer.attn.c_proj,
    check_norm=lambda layer: layer.ln_2,
    pre_ln=True,
    accepts_token_type_ids=False,
)

_LLAMA = Adapter(
    model_types=("llama", "mistral", "qwen2", "qwen3"),
    layers=lambda base: list(base.layers),
    value=lambda layer: layer.self_attn.v_proj,
    out_proj=lambda layer: layer.self_attn.o_proj,
    check_norm=lambda layer: layer.post_attention_layernorm,
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

    captures = []
    for l, layer in enumerate(layers):
        c = caps[l]
        x = c["x"]
        v = c["v"][:, adapter.value_slice(x.shape[-1])] if adapter.value_slice else c["v"]
        W_O, b_O = _linear_w(adapter.out_proj(layer))
        norm = adapter.check_norm(layer)
        captures.append(LayerCapture(
            x=_numpy(x),
            probs=_numpy(attentions[l][0]),
            values=_numpy(v),
            out_weight=_numpy(W_O),
            out_bias=None if b_O is None else _numpy(b_O),
            # pre-LN: y is the input of the norm after the block; post-LN: the attention LayerNorm's output
            norm=None if adapter.pre_ln else (_numpy(norm.weight), _numpy(norm.bias), float(norm.eps)),
            block_output=_numpy(c["norm_in"] if adapter.pre_ln else c["norm_out"]),
        ))
    return reference_from_captures(captures, keep=_numpy(mask[0]))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).numpy()
