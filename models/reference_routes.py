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
