"""The ONNX-standard Attention operator (opset 23) as MatMul/Softmax/MatMul.

From its specification: Q, K, V are 4-D ``(B, heads, S, d)`` or 3-D with ``q_num_heads`` /
``kv_num_heads``; scores are ``Q K^T * scale`` (default ``1/sqrt(head_size)``), softcapped
(``softcap * tanh(scores / softcap)``) before the mask; a boolean ``attn_mask`` disallows keys
(-inf), a float one is added; ``is_causal`` keeps key j for query i iff j <= i; grouped key/value
heads are repeated so query head h reads key/value head ``h // (q_heads / kv_heads)``; a fully masked
row gives zeros. Past/present state and the qk debug output are refused.
"""

from __future__ import annotations

import math

import onnx_ir as ir

from .builder import Builder, UnsupportedFusedOpError, rank, used
from .sdpa import attend, causal_allowed, fill_bias, merge_heads, repeat_kv


def _attr(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def unfuse_onnx_attention(node: ir.Node, b: Builder) -> list[ir.Value | None]:
    q, k, v = node.inputs[0], node.inputs[1], node.inputs[2]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    extra = [x for x in node.inputs[4:] if x is not None]
    if extra or any(used(o) for o in node.outputs[1:]):
        raise UnsupportedFusedOpError(
            f"Attention node '{node.name}' uses past/present key-value state or its qk output; "
            "ALTI explains one full sequence (export without KV cache)"
        )
    q_rank = rank(q)
    three_d = q_rank == 3 or (q_rank is None and node.attributes.get("q_num_heads") is not None)
    if three_d:
        q_heads, kv_heads = int(_attr(node, "q_num_heads")), int(_attr(node, "kv_num_heads"))
        q4 = _heads(b, q, q_heads)
        k4, v4 = _heads(b, k, kv_heads), _heads(b, v, kv_heads)
    else:
        q4, k4, v4 = q, k, v
        q_heads, kv_heads = _static_dim(q, 1, node), _static_dim(k, 1, node)
    head_size = _head_size(q, q_heads, three_d, node)
    groups = q_heads // kv_heads
    k4, v4 = repeat_kv(b, k4, groups), repeat_kv(b, v4, groups)
    k_t = b.op("Transpose", k4, perm=[0, 1, 3, 2])
    bias, guard = None, False
    if mask is not None:
        if mask.dtype == ir.DataType.BOOL:
            bias, guard = fill_bias(b, mask, float("-inf")), True
        else:
            bias = mask
    if _attr(node, "is_causal", 0):
        causal = fill_bias(b, causal_allowed(b, q4, k_t), float("-inf"))
        bias, guard = (causal if bias is None else b.op("Add", bias, causal)), True
    scale = float(_attr(node, "scale", 0.0) or 1.0 / math.sqrt(head_size))
    softcap = float(_attr(node, "softcap", 0.0) or 0.0)
    context = attend(b, q4, k_t, v4, scale, bias, softcap=softcap, nan_guard=guard)
    if three_d:
        context = merge_heads(b, context, q_heads * _v_head_size(v, kv_heads, node))
    return [context] + [None] * (len(node.outputs) - 1)


def _heads(b: Builder, x: ir.Value, heads: int) -> ir.Value:
    """[B, S, heads*d] -> [B, heads, S, d]."""
    return b.op("Transpose", b.op("Reshape", x, b.ints([0, 0, heads, -1])), perm=[0, 2, 1, 3])


def _static_dim(value: ir.Value, axis: int, node: ir.Node) -> int:
    dims = list(value.shape) if value.shape is not None else []
    if len(dims) <= axis or not isinstance(dims[axis], int):
        raise UnsupportedFusedOpError(f"Attention node '{node.name}': dimension {axis} of '{value.name}' is not static")
    return int(dims[axis])


def _head_size(q: ir.Value, heads: int, three_d: bool, node: ir.Node) -> int:
    return _static_dim(q, 2, node) // heads if three_d else _static_dim(q, 3, node)


def _v_head_size(v: ir.Value, kv_heads: int, node: ir.Node) -> int:
    return _static_dim(v, 2, node) // kv_heads
