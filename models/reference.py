"""Independent float64 PyTorch reference for ALTI: a Hugging Face model run in float64 with forward
hooks, its captures handed to the equations in ``models.reference_math``:

* a forward pre-hook on each layer captures the layer input x,
* a forward hook on the value projection captures v (= n(x) W_V + b_V; the value columns of a fused
  QKV projection are picked out),
* a forward hook on the block's end captures what the model really computes for y: post-LN, the
  LayerNorm's output; pre-LN and sandwich, the input of the norm that follows the attention block
  (the residual sum); parallel, the attention module's output a (y = x + a is no tensor of the model),
* the attention probabilities come from ``output_attentions=True`` (eager attention).

Hooks append in call order, so a layer module that runs several times (ALBERT's one shared layer)
gives one capture per run. W_O, b_O and the norm's parameters are read from the modules. The
per-family knowledge is one ``Adapter`` each, in ``ADAPTERS``. Only used by tests and fixture
recipes; the package itself never imports torch.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from models.reference_math import LayerCapture, ReferenceResult  # noqa: F401 - re-exported
from models.reference_math import reference_alti as reference_from_captures

__all__ = ["Adapter", "ADAPTERS", "ReferenceResult", "reference_alti", "find_adapter"]


def _linear_w(mod: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(W, b) with the convention out = x @ W + b, for nn.Linear and GPT-2's Conv1D."""
    if isinstance(mod, nn.Linear):
        return mod.weight.T, mod.bias
    # transformers.pytorch_utils.Conv1D: out = x @ weight + bias
    return mod.weight, mod.bias


def _layer_norm(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, float, bool]:
    """(gamma, beta, eps, rms) of a LayerNorm or an RMSNorm (T5, Llama: ``variance_epsilon``)."""
    eps = getattr(module, "eps", None)
    eps = getattr(module, "variance_epsilon", None) if eps is None else eps
    return module.weight, getattr(module, "bias", None), float(eps), not isinstance(module, nn.LayerNorm)


def _gemma_norm(module: nn.Module) -> tuple[torch.Tensor, None, float, bool]:
    """Gemma's RMSNorm scales by (1 + w)."""
    return 1.0 + module.weight, None, float(module.eps), True


def _fused_qkv_values(config) -> np.ndarray:
    """The value columns of a fused [q | k | v] projection (Phi-3): after H query and H_kv key heads."""
    head_size = config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    start = (config.num_attention_heads + kv_heads) * head_size
    return np.arange(start, start + kv_heads * head_size)


def _interleaved_qkv_values(config) -> np.ndarray:
    """The value columns of a projection laid out per head as [q_h | k_h | v_h] (GPT-NeoX, BLOOM)."""
    heads = config.num_attention_heads
    head_size = config.hidden_size // heads
    return np.concatenate([np.arange(h * 3 * head_size + 2 * head_size, (h + 1) * 3 * head_size) for h in range(heads)])


def _multi_query_values(config) -> np.ndarray:
    """The value columns of Falcon's multi-query [q_1 .. q_H | k | v] projection: the last head."""
    head_size = config.hidden_size // config.num_attention_heads
    return np.arange((config.num_attention_heads + 1) * head_size, (config.num_attention_heads + 2) * head_size)


def _thirds(config) -> np.ndarray:
    """The last third of a fused [q | k | v] projection without grouped heads (GPT-2, ModernBERT)."""
    return np.arange(2 * config.hidden_size, 3 * config.hidden_size)


@dataclass
class Adapter:
    """Where the pieces of one family live.

    ``layers(base)`` lists the modules that run each attention block, in call order (ALBERT's one
    shared layer L times); ``value(layer)`` the module whose output holds v (``value_columns(config)``
    picks v's columns out of a fused projection); ``out_proj(layer)`` W_O; ``block_end(layer)``:
    post-LN, the LayerNorm after the sum (its output is y); pre-LN and sandwich, the module after the
    block whose input is y; parallel, the attention module (its output is a). ``norm(layer)`` is the
    norm the decomposition uses (post: the LayerNorm after the sum; sandwich: the norm on the
    attention output) and ``norm_parameters`` reads (gamma, beta, eps, rms) from it.
    """

    model_types: tuple[str, ...]
    layers: Callable[[nn.Module], list]
    value: Callable[[nn.Module], nn.Module]
    out_proj: Callable[[nn.Module], nn.Module]
    block_end: Callable[[nn.Module], nn.Module]
    kind: str = "post"
    norm: Callable[[nn.Module], nn.Module] | None = None
    norm_parameters: Callable[[nn.Module], tuple] = _layer_norm
    value_columns: Callable[[object], np.ndarray] | None = None
    accepts_token_type_ids: bool = True


def _llama_like(*model_types: str, **changes) -> Adapter:
    fields = dict(
        layers=lambda base: list(base.layers),
        value=lambda layer: layer.self_attn.v_proj,
        out_proj=lambda layer: layer.self_attn.o_proj,
        block_end=lambda layer: layer.post_attention_layernorm,
        kind="pre",
        accepts_token_type_ids=False,
    )
    fields.update(changes)
    return Adapter(model_types=model_types, **fields)


_ADAPTERS = (
    # -- post-LN encoders: y = LN(x + a)
    Adapter(
        model_types=("bert", "roberta", "electra", "xlm-roberta", "camembert"),
        layers=lambda base: list(base.encoder.layer),
        value=lambda layer: layer.attention.self.value,
        out_proj=lambda layer: layer.attention.output.dense,
        block_end=lambda layer: layer.attention.output.LayerNorm,
    ),
    Adapter(
        model_types=("deberta-v2",),
        layers=lambda base: list(base.encoder.layer),
        value=lambda layer: layer.attention.self.value_proj,
        out_proj=lambda layer: layer.attention.output.dense,
        block_end=lambda layer: layer.attention.output.LayerNorm,
    ),
    Adapter(
        model_types=("distilbert",),
        layers=lambda base: list(base.transformer.layer),
        value=lambda layer: layer.attention.v_lin,
        out_proj=lambda layer: layer.attention.out_lin,
        block_end=lambda layer: layer.sa_layer_norm,
        accepts_token_type_ids=False,
    ),
    Adapter(
        model_types=("albert",),
        layers=lambda base: [base.encoder.albert_layer_groups[g * base.config.num_hidden_groups // base.config.num_hidden_layers]
                             .albert_layers[k] for g in range(base.config.num_hidden_layers)
                             for k in range(base.config.inner_group_num)],
        value=lambda layer: layer.attention.value,
        out_proj=lambda layer: layer.attention.dense,
        block_end=lambda layer: layer.attention.LayerNorm,
    ),
    Adapter(
        model_types=("mpnet",),
        layers=lambda base: list(base.encoder.layer),
        value=lambda layer: layer.attention.attn.v,
        out_proj=lambda layer: layer.attention.attn.o,
        block_end=lambda layer: layer.attention.LayerNorm,
        accepts_token_type_ids=False,
    ),
    # -- pre-LN: y = x + a, the input of the norm after the block
    Adapter(
        model_types=("modernbert",),  # the first layer's attention norm is an Identity: values from x itself
        layers=lambda base: list(base.layers),
        value=lambda layer: layer.attn.Wqkv,
        value_columns=_thirds,
        out_proj=lambda layer: layer.attn.Wo,
        block_end=lambda layer: layer.mlp_norm,
        kind="pre",
        accepts_token_type_ids=False,
    ),
    Adapter(
        model_types=("t5",),
        layers=lambda base: list(base.encoder.block),
        value=lambda layer: layer.layer[0].SelfAttention.v,
        out_proj=lambda layer: layer.layer[0].SelfAttention.o,
        block_end=lambda layer: layer.layer[1].layer_norm,
        kind="pre",
        accepts_token_type_ids=False,
    ),
    Adapter(
        model_types=("gpt2",),
        layers=lambda base: list(base.h),
        value=lambda layer: layer.attn.c_attn,
        value_columns=_thirds,
        out_proj=lambda layer: layer.attn.c_proj,
        block_end=lambda layer: layer.ln_2,
        kind="pre",
        accepts_token_type_ids=False,
    ),
    _llama_like("llama", "mistral", "qwen2", "qwen3"),
    _llama_like("phi3", value=lambda layer: layer.self_attn.qkv_proj, value_columns=_fused_qkv_values),
    Adapter(
        model_types=("opt",),
        layers=lambda base: list(base.decoder.layers),
        value=lambda layer: layer.self_attn.v_proj,
        out_proj=lambda layer: layer.self_attn.out_proj,
        block_end=lambda layer: layer.final_layer_norm,
        kind="pre",
        accepts_token_type_ids=False,
    ),
    Adapter(
        model_types=("bloom",),
        layers=lambda base: list(base.h),
        value=lambda layer: layer.self_attention.query_key_value,
        value_columns=_interleaved_qkv_values,
        out_proj=lambda layer: layer.self_attention.dense,
        block_end=lambda layer: layer.post_attention_layernorm,
        kind="pre",
        accepts_token_type_ids=False,
    ),
    # -- sandwich: y = x + n(a), the input of the norm before the MLP
    _llama_like("gemma2", "gemma3_text", block_end=lambda layer: layer.pre_feedforward_layernorm, kind="sandwich",
                norm=lambda layer: layer.post_attention_layernorm, norm_parameters=_gemma_norm),
    # -- parallel: y = x + a + mlp(n'(x)); a is the attention module's output
    Adapter(
        model_types=("gpt_neox",),
        layers=lambda base: list(base.layers),
        value=lambda layer: layer.attention.query_key_value,
        value_columns=_interleaved_qkv_values,
        out_proj=lambda layer: layer.attention.dense,
        block_end=lambda layer: layer.attention,
        kind="parallel",
        accepts_token_type_ids=False,
    ),
    _llama_like("phi", out_proj=lambda layer: layer.self_attn.dense, block_end=lambda layer: layer.self_attn,
                kind="parallel"),
    Adapter(
        model_types=("falcon",),  # Falcon-7B's form: multi-query, parallel (new_decoder_architecture=False)
        layers=lambda base: list(base.h),
        value=lambda layer: layer.self_attention.query_key_value,
        value_columns=_multi_query_values,
        out_proj=lambda layer: layer.self_attention.dense,
        block_end=lambda layer: layer.self_attention,
        kind="parallel",
        accepts_token_type_ids=False,
    ),
)

ADAPTERS: dict[str, Adapter] = {t: a for a in _ADAPTERS for t in a.model_types}


def find_adapter(model: nn.Module) -> tuple[Adapter, nn.Module]:
    """The adapter for ``model`` and its base model (task heads are unwrapped)."""
    mt = model.config.model_type
    if mt not in ADAPTERS:
        raise NotImplementedError(f"no ALTI reference adapter for model_type {mt!r}")
    base = getattr(model, "base_model", model)
    if base is model and isinstance(getattr(model, "model", None), nn.Module):  # Gemma3ForCausalLM names it model
        base = model.model
    return ADAPTERS[mt], base


@torch.no_grad()
def reference_alti(model, input_ids, attention_mask=None, token_type_ids=None) -> ReferenceResult:
    """ALTI contributions and rollout of one sequence, in float64, on a Hugging Face model.

    ``input_ids`` is [S] or [1, S]. The model is converted in place to float64 and eval mode.
    Masked positions (attention_mask == 0) get zero rows and columns.
    """
    captures, keep = reference_captures(model, input_ids, attention_mask, token_type_ids)
    return reference_from_captures(captures, keep=keep)


def reference_captures(model, input_ids, attention_mask=None, token_type_ids=None) -> tuple[list[LayerCapture], np.ndarray]:
    """Every attention block's float64 capture of one sequence (``reference_alti``), and its mask."""
    model.double().eval()
    adapter, base = find_adapter(model)
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")

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
    with _rms_norms_in_float64(model):
        captured = _run_with_hooks(base, kwargs, adapter, layers)
    attentions = captured.pop("attentions")
    if attentions is None or any(a is None for a in attentions):
        raise RuntimeError("the model returned no attention probabilities; load it with attn_implementation='eager'")
    counts = {role: len(found) for role, found in captured.items()}
    if set(counts.values()) != {len(layers)} or len(attentions) != len(layers):
        raise RuntimeError(f"expected {len(layers)} captures per role, got {counts} and {len(attentions)} attentions")

    captures = []
    for l, layer in enumerate(layers):
        x = captured["x"][l]
        v = captured["v"][l]
        if adapter.value_columns is not None:
            v = v[:, torch.as_tensor(adapter.value_columns(model.config))]
        W_O, b_O = _linear_w(adapter.out_proj(layer))
        end = captured["end"][l]
        norm = None
        rms = False
        if adapter.kind in ("post", "sandwich"):
            module = adapter.block_end(layer) if adapter.kind == "post" else adapter.norm(layer)
            gamma, beta, eps, rms = adapter.norm_parameters(module)
            beta = torch.zeros_like(gamma) if beta is None else beta
            norm = (_numpy(gamma), _numpy(beta), eps)
        captures.append(LayerCapture(
            x=_numpy(x),
            probs=_numpy(attentions[l][0]),
            values=_numpy(v),
            out_weight=_numpy(W_O),
            out_bias=None if b_O is None else _numpy(b_O),
            norm=norm,
            block_output=_numpy(x + end if adapter.kind == "parallel" else end),
            kind=adapter.kind,
            norm_rms=rms,
        ))
    return captures, _numpy(mask[0])


@contextmanager
def _rms_norms_in_float64(model: nn.Module):
    """RMSNorms computed in the model's float64 while the reference runs: transformers' RMSNorms
    (Llama, Gemma, T5, ...) cast to float32 inside, which would put float32 rounding into a sandwich
    block's output. Same equation: gamma x / sqrt(mean(x^2) + eps), gamma = 1 + w for Gemma's."""
    patched = []
    for module in model.modules():
        name = type(module).__name__
        if not (name.endswith("RMSNorm") or name == "T5LayerNorm") or not isinstance(getattr(module, "weight", None), nn.Parameter):
            continue
        gamma, _, eps, _ = (_gemma_norm if name.startswith("Gemma") else _layer_norm)(module)

        def forward(x, gamma=gamma, eps=eps):
            return gamma * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)

        module.forward = forward
        patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward  # back to the class's forward


def _run_with_hooks(base: nn.Module, kwargs: dict, adapter: Adapter, layers: list) -> dict[str, list]:
    """Run ``base`` once; per role (x, v, end) the captured tensors of the first sequence, in call
    order, and the model's attention probabilities."""
    captured: dict[str, list] = defaultdict(list)

    def layer_input(mod, args, kw):
        h = args[0] if args else next(kw[k] for k in ("hidden_states", "hidden_state", "x") if k in kw)
        captured["x"].append(h[0].clone())

    def value_output(mod, inp, out):
        captured["v"].append(_first_sequence(out))

    def block_end(mod, inp, out):
        if adapter.kind == "post":
            captured["end"].append(_first_sequence(out))  # the LayerNorm's output
        elif adapter.kind == "parallel":
            captured["end"].append(_first_sequence(out[0] if isinstance(out, tuple) else out))  # a
        else:
            captured["end"].append(_first_sequence(inp[0]))  # the next norm's input: the residual sum

    handles = []
    seen: set[int] = set()
    for layer in layers:
        if id(layer) in seen:  # a shared layer: its hooks fire on every run
            continue
        seen.add(id(layer))
        handles.append(layer.register_forward_pre_hook(layer_input, with_kwargs=True))
        handles.append(adapter.value(layer).register_forward_hook(value_output))
        handles.append(adapter.block_end(layer).register_forward_hook(block_end))
    try:
        out = base(**kwargs, output_attentions=True, return_dict=True)
    finally:
        for h in handles:
            h.remove()
    captured["attentions"] = out.attentions
    return dict(captured)


def _first_sequence(tensor: torch.Tensor) -> torch.Tensor:
    """[S, D] of a batch of one: [1, S, D], or the [S, D] that OPT flattens its tokens to."""
    return (tensor[0] if tensor.dim() == 3 else tensor).clone()


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float64).numpy()
