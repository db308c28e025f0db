"""onnxruntime's fused ``com.microsoft`` Attention and MultiHeadAttention as standard ops.

Semantics from the operator schemas (docs/ContribOperators.md, the same text onnxruntime
registers): Attention projects Q, K, V with one packed weight ``(D_in, D_q + D_k + D_v)`` and bias,
scales ``Q K^T`` by ``scale`` (default ``1/sqrt(head_size)``), fills masked scores with
``mask_filter_value`` (default -10000) and, with ``unidirectional``, masks future keys.
MultiHeadAttention takes Q, K, V already projected, with an optional packed bias.
Past/present state, rotary embedding and packed/cross layouts are refused: ALTI explains one full
sequence.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from .builder import Builder, UnsupportedFusedOpError, rank, used
from .sdpa import attend, causal_allowed, fill_bias, key_lengths_allowed, merge_heads, raw_mask_allowed, split_heads

DEFAULT_MASK_FILTER = -10000.0


def _attr(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if len(node.inputs) > index else None


def _refuse_inputs(node: ir.Node, names: dict[int, str]) -> None:
    for index, name in names.items():
        if _input(node, index) is not None:
            raise UnsupportedFusedOpError(
                f"{node.domain}.{node.op_type} node '{node.name}' has a '{name}' input; the unfused attention "
                "supports one full sequence without past state (export without KV cache)"
            )


def _refuse_outputs(node: ir.Node, first_optional: int) -> None:
    for value in node.outputs[first_optional:]:
        if used(value):
            raise UnsupportedFusedOpError(
                f"{node.domain}.{node.op_type} node '{node.name}' has its optional output '{value.name}' in use "
                "(past/present state); export without KV cache"
            )


def _mask_bias(b: Builder, node: ir.Node, mask: ir.Value | None, q: ir.Value, k_t: ir.Value, x: ir.Value) -> ir.Value | None:
    """The additive score bias from the key mask, ``unidirectional`` and ``attention_bias``."""
    allowed = None
    if mask is not None:
        mask_rank = rank(mask)
        if mask_rank == 1:
            allowed = key_lengths_allowed(b, mask, k_t, x)
        elif mask_rank in (2, 3):
            allowed = raw_mask_allowed(b, mask, mask_rank)
        else:
            raise UnsupportedFusedOpError(
                f"{node.domain}.{node.op_type} node '{node.name}': mask of rank {mask_rank} is not supported "
                "(1-D index, 2-D or 3-D raw masks are)"
            )
    if _attr(node, "unidirectional", 0):
        causal = causal_allowed(b, q, k_t)
        allowed = causal if allowed is None else b.op("And", allowed, causal)
    bias = None if allowed is None else fill_bias(b, allowed, float(_attr(node, "mask_filter_value", DEFAULT_MASK_FILTER)))
    extra = _input(node, 5)  # attention_bias, for both Attention and MultiHeadAttention
    if extra is not None:
        bias = extra if bias is None else b.op("Add", bias, extra)
    return bias


def unfuse_attention(node: ir.Node, b: Builder) -> list[ir.Value]:
    """com.microsoft Attention -> MatMul(+bias) -> Split(Q, K, V) -> per-head softmax attention."""
    _refuse_inputs(node, {4: "past", 6: "past_sequence_length"})
    _refuse_outputs(node, 1)
    if _attr(node, "do_rotary", 0):
        raise UnsupportedFusedOpError(f"com.microsoft.Attention node '{node.name}' applies a rotary embedding (do_rotary=1)")
    x, weights, bias, mask = (_input(node, i) for i in range(4))
    if weights is None or weights.const_value is None:
        raise UnsupportedFusedOpError(f"com.microsoft.Attention node '{node.name}': its packed QKV weights are not constant")
    heads = int(_attr(node, "num_heads"))
    total = int(weights.const_value.shape[-1])
    sizes = [int(s) for s in _attr(node, "qkv_hidden_sizes", None) or [total // 3] * 3]
    qkv = b.op("MatMul", x, weights)
    if bias is not None:
        qkv = b.op("Add", qkv, bias)
    q3, k3, v3 = b.split(qkv, sizes)
    return [_multi_head(node, b, q3, k3, v3, heads, sizes, mask, x)]


def unfuse_multi_head_attention(node: ir.Node, b: Builder) -> list[ir.Value]:
    """com.microsoft MultiHeadAttention with separate 3-D query, key and value (self or cross attention)."""
    _refuse_inputs(node, {6: "past_key", 7: "past_value", 8: "past_sequence_length", 9: "cache_indirection"})
    _refuse_outputs(node, 1)
    query, key, value, bias, mask = (_input(node, i) for i in range(5))
    if key is None or value is None or any(rank(v) not in (None, 3) for v in (query, key, value)):
        raise UnsupportedFusedOpError(
            f"com.microsoft.MultiHeadAttention node '{node.name}': packed QKV/KV or past-key layouts are not "
            "supported (separate 3-D query, key and value are)"
        )
    heads = int(_attr(node, "num_heads"))
    if bias is not None:
        if bias.const_value is None:
            raise UnsupportedFusedOpError(f"com.microsoft.MultiHeadAttention node '{node.name}': its bias is not constant")
        packed = bias.const_value.numpy()
        width = packed.shape[0] // 3
        q_bias, k_bias, v_bias = np.split(packed, [width, 2 * width])  # hidden, hidden, v_hidden
        query, key, value = (b.op("Add", t, b.const(c)) for t, c in ((query, q_bias), (key, k_bias), (value, v_bias)))
        sizes = [len(q_bias), len(k_bias), len(v_bias)]
    else:
        sizes = [_width(t, node) for t in (query, key, value)]
    return [_multi_head(node, b, query, key, value, heads, sizes, mask, query)]


def _multi_head(
    node: ir.Node, b: Builder, query: ir.Value, key: ir.Value, value: ir.Value, heads: int, sizes: list[int],
    mask: ir.Value | None, mask_source: ir.Value,
) -> ir.Value:
    """Both operators' common core: split [B, S, width] projections into heads, softmax(QK^T scale + mask) V,
    merge the heads (the attention scale defaults to 1/sqrt(head size), as the specs say)."""
    head_size, v_head_size = sizes[0] // heads, sizes[2] // heads
    q = split_heads(b, query, heads, head_size)
    k_t = b.op("Transpose", b.op("Reshape", key, b.ints([0, 0, heads, head_size])), perm=[0, 2, 3, 1])
    v = split_heads(b, value, heads, v_head_size)
    scale = float(_attr(node, "scale", 0.0) or 1.0 / math.sqrt(head_size))
    context = attend(b, q, k_t, v, scale, _mask_bias(b, node, mask, q, k_t, mask_source))
    return merge_heads(b, context, sizes[2])


def _width(value: ir.Value, node: ir.Node) -> int:
    dims = list(value.shape) if value.shape is not None else []
    if not dims or not isinstance(dims[-1], int):
        raise UnsupportedFusedOpError(
            f"com.microsoft.MultiHeadAttention node '{node.name}': the hidden size of '{value.name}' is not static"
        )
    return int(dims[-1])
