"""float64 references for the routes (issue 26), by hooks on the Hugging Face model: the final
residual stream (the input of the final norm) at every position, and the logit lens written from
its definition, ``lm_head(final_norm(v))`` (the anchor's "normalize before unembedding"), with the
model's final softcap where it has one."""

from __future__ import annotations

import numpy as np
import torch

from models.reference_logit import _final_norm


def final_residual(model, input_ids) -> np.ndarray:
    """[S, D]: the stream after the last layer (what the final norm reads), float64."""
    model.double().eval()
    norm = _final_norm(model)
    seen = {}

    def hook(module, args) -> None:
        seen["z"] = args[0][0].detach().clone()

    handle = norm.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=torch.as_tensor(np.asarray(input_ids).reshape(1, -1)))
    finally:
        handle.remove()
    return seen["z"].numpy()


def logit_lens(model, vectors: np.ndarray) -> np.ndarray:
    """[N, V]: each vector through the final norm and the unembedding (and the final softcap)."""
    model.double().eval()
    norm = _final_norm(model)
    with torch.no_grad():
        found = model.get_output_embeddings()(norm(torch.as_tensor(np.asarray(vectors, dtype=np.float64))))
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        found = torch.tanh(found / cap) * cap
    return found.numpy()


def post_ln_ffn_shares(model, input_ids, token_type_ids=None) -> list[np.ndarray]:
    """[S, 2] per layer of a BERT-style post-LN encoder (``encoder.layer[l]``: ``attention.output``
    gives y = LN1(x + a), ``output.dense`` the feed-forward output f, ``output.LayerNorm`` the norm of
    y + f): the shares of y and f in LN2(y + f), each part centred and scaled by gamma / sigma(y + f),
    the whole their sum plus beta, each share's proximity max(||whole|| - ||whole - part||, 0) normalized."""
    model.double().eval()
    layers = model.base_model.encoder.layer
    seen: dict[tuple[int, str], np.ndarray] = {}
    handles = []
    for number, layer in enumerate(layers):
        for role, module in (("y", layer.attention.output), ("f", layer.output.dense)):
            handles.append(module.register_forward_hook(
                lambda m, args, out, key=(number, role): seen.__setitem__(key, out[0].detach().numpy())))
    kwargs = {"input_ids": torch.as_tensor(np.asarray(input_ids).reshape(1, -1))}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.as_tensor(np.asarray(token_type_ids).reshape(1, -1))
    try:
        with torch.no_grad():
            model(**kwargs)
    finally:
        for handle in handles:
            handle.remove()
    shares = []
    for number, layer in enumerate(layers):
        norm = layer.output.LayerNorm
        gamma, beta = norm.weight.detach().numpy(), norm.bias.detach().numpy()
        y, f = seen[(number, "y")], seen[(number, "f")]
        u = y + f
        sigma = np.sqrt(u.var(-1) + norm.eps)[:, None]
        parts = [gamma * (p - p.mean(-1, keepdims=True)) / sigma for p in (y, f)]
        whole = parts[0] + parts[1] + beta
        raw = np.stack([np.maximum(np.abs(whole).sum(-1) - np.abs(whole - p).sum(-1), 0.0) for p in parts], axis=1)
        shares.append(raw / raw.sum(-1, keepdims=True))
    return shares
