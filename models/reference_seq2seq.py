"""The float64 ALTI+ reference on a Hugging Face encoder-decoder (BART, Marian, M2M100, T5), by hooks.

Every attention block is read from the model's own modules while it runs in float64: the
attention module's output a (with b_O), the value projection's output, the probabilities the
model returns (``output_attentions``), and the norm next to the block: for a post-LN block the
LayerNorm after the residual sum (its output is y, its input minus a is x), for a pre-LN block the
norm before attention (its input is x, and y = x + a). The equations are
``models.reference_math`` (naive, shares nothing with the package's math).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.reference import _layer_norm, _linear_w, _numpy, _rms_norms_in_float64
from models.reference_math import LayerCapture, Seq2SeqReference, reference_alti_plus


@dataclass(frozen=True)
class _Block:
    """One attention block's modules: the attention, its value projection, its output projection,
    the norm that defines its kind, and whether it is a cross-attention block."""

    attention: nn.Module
    value: nn.Module
    out_proj: nn.Module
    norm: nn.Module
    cross: bool


def _blocks(model: nn.Module) -> tuple[str, list[_Block], list[_Block], list[_Block]]:
    """(kind, encoder blocks, decoder self-attention blocks, decoder cross-attention blocks)."""
    kind = model.config.model_type
    if kind == "t5":
        stacks = model.encoder.block, model.decoder.block

        def t5(sub, attention_name: str, cross: bool) -> _Block:
            attention = getattr(sub, attention_name)
            return _Block(attention, attention.v, attention.o, sub.layer_norm, cross)

        return ("pre", [t5(b.layer[0], "SelfAttention", False) for b in stacks[0]],
                [t5(b.layer[0], "SelfAttention", False) for b in stacks[1]],
                [t5(b.layer[1], "EncDecAttention", True) for b in stacks[1]])
    if kind in ("bart", "marian", "m2m_100", "mbart"):
        base = model.model

        def bart(attention: nn.Module, norm: nn.Module, cross: bool) -> _Block:
            return _Block(attention, attention.v_proj, attention.out_proj, norm, cross)

        block_kind = "pre" if kind == "m2m_100" or getattr(model.config, "normalize_before", False) else "post"
        return (block_kind, [bart(l.self_attn, l.self_attn_layer_norm, False) for l in base.encoder.layers],
                [bart(l.self_attn, l.self_attn_layer_norm, False) for l in base.decoder.layers],
                [bart(l.encoder_attn, l.encoder_attn_layer_norm, True) for l in base.decoder.layers])
    raise ValueError(f"no seq2seq reference for model type {kind!r}")


def reference_alti_plus_hf(model: nn.Module, source_ids, labels) -> Seq2SeqReference:
    """ALTI+ of one source (token ids, no padding) and one target (``labels``: the tokens the decoder
    is to produce; it reads them shifted right behind the decoder start token), in float64."""
    return reference_alti_plus(*seq2seq_captures(model, source_ids, labels))


def seq2seq_captures(model: nn.Module, source_ids, labels) -> tuple[list[LayerCapture], ...]:
    """Every block's float64 capture of one pair: the encoder's, the decoder's self- and cross-attention's."""
    model.double().eval()
    if getattr(model.config, "_attn_implementation", "eager") != "eager":
        model.set_attn_implementation("eager")
    kind, encoder, own, cross = _blocks(model)
    source = torch.as_tensor(np.asarray(source_ids), dtype=torch.long).reshape(1, -1)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(1, -1)
    start = model.config.decoder_start_token_id
    decoder_input = torch.cat([torch.full((1, 1), start, dtype=torch.long), labels[:, :-1]], dim=1)

    seen: dict[int, dict[str, torch.Tensor]] = {}

    def keep(module: nn.Module, role: str):
        def hook(mod, inputs, output):
            record = seen.setdefault(id(mod), {})
            record[role + "_in"] = (inputs[0] if inputs else None)
            record[role] = output[0] if isinstance(output, tuple) else output
        return module.register_forward_hook(hook)

    handles = []
    for block in encoder + own + cross:
        handles += [keep(block.attention, "a"), keep(block.value, "v"), keep(block.norm, "n")]
    try:
        with _rms_norms_in_float64(model), torch.no_grad():
            out = model(input_ids=source, attention_mask=torch.ones_like(source), decoder_input_ids=decoder_input,
                        output_attentions=True, return_dict=True)
    finally:
        for handle in handles:
            handle.remove()

    def capture(block: _Block, probs: torch.Tensor) -> LayerCapture:
        a = seen[id(block.attention)]["a"][0]
        norm = seen[id(block.norm)]
        weight, bias = _linear_w(block.out_proj)
        if kind == "post":
            x, y = norm["n_in"][0] - a, norm["n"][0]
            gamma, beta, eps, _ = _layer_norm(block.norm)
            parameters = (_numpy(gamma), _numpy(torch.zeros_like(gamma) if beta is None else beta), eps)
        else:
            x, parameters = norm["n_in"][0], None
            y = x + a
        return LayerCapture(x=_numpy(x), probs=_numpy(probs[0]), values=_numpy(seen[id(block.value)]["v"][0]),
                            out_weight=_numpy(weight), out_bias=None if bias is None else _numpy(bias),
                            norm=parameters, block_output=_numpy(y), kind=kind, cross=block.cross)

    return ([capture(b, p) for b, p in zip(encoder, out.encoder_attentions, strict=True)],
            [capture(b, p) for b, p in zip(own, out.decoder_attentions, strict=True)],
            [capture(b, p) for b, p in zip(cross, out.cross_attentions, strict=True)])


def record_expected(fixture: Path, hf_dir: Path, sources, targets) -> None:
    """expected.npz (per pair k: ``source_ids_k``, ``labels_k``, the encoder's contributions and
    rollout, the decoder's self and cross contributions, the combined rollout, the source share;
    ``generated_k``, the model's greedy output for source k (8 new tokens at most), and the reference
    on it: ``generated_combined_k``, ``generated_cross_contributions_k``, ``generated_source_share_k``)
    and texts.json beside an exported fixture."""
    from tokenizers import Tokenizer
    from transformers import AutoModelForSeq2SeqLM

    tokenizer = Tokenizer.from_file(str(fixture / "tokenizer.json"))
    arrays: dict[str, np.ndarray] = {}
    for k, (source, target) in enumerate(zip(sources, targets, strict=True)):
        source_ids = tokenizer.encode(source).ids
        labels = tokenizer.encode(target).ids
        model = AutoModelForSeq2SeqLM.from_pretrained(str(hf_dir), attn_implementation="eager")
        generated = model.generate(torch.tensor([source_ids]), attention_mask=torch.ones(1, len(source_ids), dtype=torch.long),
                                   do_sample=False, num_beams=1, max_new_tokens=8)[0, 1:]
        result = reference_alti_plus_hf(model, source_ids, labels)
        if result.block_outputs_error.max() > 1e-10:
            raise RuntimeError(f"the reference does not rebuild {hf_dir}'s blocks: {result.block_outputs_error.max():.2e}")
        on_generated = reference_alti_plus_hf(model, source_ids, generated.numpy())
        arrays.update({
            f"generated_combined_{k}": on_generated.combined, f"generated_cross_contributions_{k}": on_generated.cross_contributions,
            f"generated_source_share_{k}": on_generated.source_share,
        })
        arrays.update({
            f"source_ids_{k}": np.asarray(source_ids), f"labels_{k}": np.asarray(labels),
            f"encoder_contributions_{k}": result.encoder.contributions, f"encoder_rollout_{k}": result.encoder.rollout,
            f"self_contributions_{k}": result.self_contributions, f"cross_contributions_{k}": result.cross_contributions,
            f"combined_{k}": result.combined, f"source_share_{k}": result.source_share,
            f"generated_{k}": generated.numpy(),
        })
    np.savez_compressed(fixture / "expected.npz", **arrays)
    (fixture / "texts.json").write_text(json.dumps({"sources": list(sources), "targets": list(targets)}, indent=1) + "\n")
