"""Scaled dot-product attention written in standard ops, in the layout the block matcher reads:
``Softmax(Q K^T * scale + bias) @ V`` per head, then Transpose(0,2,1,3) + Reshape to merge heads."""

from __future__ import annotations

import onnx_ir as ir

from .builder import Builder


def split_heads(b: Builder, x: ir.Value, heads: int, head_size: int) -> ir.Value:
    """[B, S, heads*head_size] -> [B, heads, S, head_size]."""
    return b.op("Transpose", b.op("Reshape", x, b.ints([0, 0, heads, head_size])), perm=[0, 2, 1, 3])


def merge_heads(b: Builder, context: ir.Value, width: int) -> ir.Value:
    """[B, H, S, dh] -> [B, S, H*dh], the head merge the matcher expects after probs x values."""
    return b.op("Reshape", b.op("Transpose", context, perm=[0, 2, 1, 3]), b.ints([0, 0, width]))


def repeat_kv(b: Builder, x: ir.Value, groups: int) -> ir.Value:
    """[B, Hkv, T, d] -> [B, Hkv*groups, T, d] with query head h reading key/value head h // groups
    (Unsqueeze(2) -> Expand -> Reshape, the form the matcher un-repeats)."""
    if groups == 1:
        return x
    shape = b.op("Shape", x)
    batch, kv_heads, rest = (b.op("Slice", shape, b.ints([s]), b.ints([e])) for s, e in ((0, 1), (1, 2), (2, 4)))
    expanded = b.op("Expand", b.unsqueeze(x, [2]), b.op("Concat", batch, kv_heads, b.ints([groups]), rest, axis=0))
    heads = b.op("Mul", kv_heads, b.ints([groups]))
    return b.op("Reshape", expanded, b.op("Concat", batch, heads, rest, axis=0))


def attend(
    b: Builder,
    q: ir.Value,
    k_t: ir.Value,
    v: ir.Value,
    scale: float,
    bias: ir.Value | None = None,
    softcap: float = 0.0,
    nan_guard: bool = False,
) -> ir.Value:
    """``Softmax(q @ k_t * scale [softcapped] + bias) @ v`` on [B, H, S, dh] heads; k_t is [B, H, dh, T].

    ``nan_guard`` zeroes fully masked rows (``Where(IsNaN(p), 0, p)``), as the ONNX Attention spec
    asks when a boolean mask disallows every key of a query.
    """
    scores = b.op("Mul", b.op("MatMul", q, k_t), b.float_const(scale))
    if softcap > 0:
        scores = b.op("Mul", b.op("Tanh", b.op("Div", scores, b.float_const(softcap))), b.float_const(softcap))
    if bias is not None:
        scores = b.op("Add", scores, bias)
    probs = b.op("Softmax", scores, axis=-1)
    if nan_guard:
        probs = b.op("Where", b.op("IsNaN", probs), b.float_const(0.0), probs)
    return b.op("MatMul", probs, v)


def causal_allowed(b: Builder, q: ir.Value, k_t: ir.Value) -> ir.Value:
    """[S, T] booleans, key j allowed for query i iff j <= i (no past state)."""
    rows = b.op("Range", b.const(0, "int64"), b.op("Squeeze", b.dim(q, 2)), b.const(1, "int64"))
    cols = b.op("Range", b.const(0, "int64"), b.op("Squeeze", b.dim(k_t, 3)), b.const(1, "int64"))
    return b.op("LessOrEqual", b.unsqueeze(cols, [0]), b.unsqueeze(rows, [1]))


def key_lengths_allowed(b: Builder, lengths: ir.Value, k_t: ir.Value, batch_from: ir.Value) -> ir.Value:
    """[B, 1, 1, T] booleans from a 1-D index mask: ``(B)`` exclusive end positions, or ``(2B)`` end
    positions followed by inclusive start positions (onnxruntime's right/left padding formats)."""
    batch = b.dim(batch_from, 0)
    lengths = b.op("Cast", lengths, to=ir.DataType.INT64)
    ends = b.op("Slice", lengths, b.ints([0]), batch)
    padded = b.op("Concat", lengths, b.op("ConstantOfShape", batch, value=ir.tensor([0], dtype=ir.DataType.INT64)), axis=0)
    starts = b.op("Slice", padded, batch, b.op("Mul", batch, b.ints([2])))
    cols = b.op("Range", b.const(0, "int64"), b.op("Squeeze", b.dim(k_t, 3)), b.const(1, "int64"))
    cols = b.unsqueeze(cols, [0])
    allowed = b.op("And", b.op("Less", cols, b.unsqueeze(ends, [1])), b.op("GreaterOrEqual", cols, b.unsqueeze(starts, [1])))
    return b.unsqueeze(allowed, [1, 2])


def raw_mask_allowed(b: Builder, mask: ir.Value, mask_rank: int) -> ir.Value:
    """[B, 1, 1|S, T] booleans from a raw 0/1 mask of shape [B, T] or [B, S, T] (1 = attend)."""
    allowed = b.op("Greater", b.op("Cast", mask, to=ir.DataType.FLOAT), b.const(0.0, "float32"))
    return b.unsqueeze(allowed, [1, 2] if mask_rank == 2 else [1])


def fill_bias(b: Builder, allowed: ir.Value, fill: float) -> ir.Value:
    """0 where allowed, ``fill`` elsewhere (added to the scores)."""
    return b.op("Where", allowed, b.float_const(0.0), b.float_const(fill))
