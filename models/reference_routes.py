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


def seq2seq_ffn_streams(model, source_ids, labels, kind: str) -> dict[str, dict]:
    """What an encoder-decoder's feed-forward shares are measured with, by hooks (float64): per stack,
    for post-LN layers (``kind`` "post": BART, Marian) each layer's ``u = y + f`` (the input of the
    layer's ``final_layer_norm``) and that norm's (gamma, beta, eps); for pre-LN stacks the input of
    the stack's final norm (the stream after its last layer: T5's ``final_layer_norm``, M2M100's
    ``layer_norm``)."""
    model.double().eval()
    base = model.get_encoder(), model.get_decoder()
    found: dict[str, dict] = {"encoder": {"u": {}, "norm": {}, "final": None},
                              "decoder": {"u": {}, "norm": {}, "final": None}}
    handles = []

    def keep(store: dict, key, module) -> None:
        handles.append(module.register_forward_pre_hook(
            lambda m, args: store.__setitem__(key, args[0][0].detach().numpy())))

    for role, stack in zip(("encoder", "decoder"), base):
        record = found[role]
        if kind == "post":
            for number, layer in enumerate(stack.layers):
                keep(record["u"], number, layer.final_layer_norm)
                norm = layer.final_layer_norm
                record["norm"][number] = (norm.weight.detach().numpy(), norm.bias.detach().numpy(), norm.eps)
        else:
            final = getattr(stack, "final_layer_norm", None) or getattr(stack, "layer_norm")
            keep(record, "final", final)
    source = torch.as_tensor(np.asarray(source_ids), dtype=torch.long).reshape(1, -1)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(1, -1)
    start = model.config.decoder_start_token_id
    decoder_input = torch.cat([torch.full((1, 1), start, dtype=torch.long), labels[:, :-1]], dim=1)
    try:
        with torch.no_grad():
            model(input_ids=source, attention_mask=torch.ones_like(source), decoder_input_ids=decoder_input)
    finally:
        for handle in handles:
            handle.remove()
    return found


def post_ln_shares(y: np.ndarray, u: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """[S, 2]: the shares of y and f = u - y in LN(u), each centred and scaled by gamma / sigma(u), the
    whole their sum plus beta (written out here, apart from the package's ``post_norm_ffn_components``)."""
    sigma = np.sqrt(u.var(-1) + eps)[:, None]
    parts = [gamma * (p - p.mean(-1, keepdims=True)) / sigma for p in (y, u - y)]
    whole = parts[0] + parts[1] + beta
    raw = np.stack([np.maximum(np.abs(whole).sum(-1) - np.abs(whole - p).sum(-1), 0.0) for p in parts], axis=1)
    return raw / raw.sum(-1, keepdims=True)
