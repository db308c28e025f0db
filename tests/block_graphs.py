"""Hand-built attention graphs (onnx.helper), one option per spelling exporters use and per block kind.

``encoder_graph(...)`` builds a stack of attention blocks over an input ``x`` [B, S, D]
and a padding ``mask`` [B, S], each block spelled as chosen:

- probs: ``plain``; ``keras`` (Mul/Add by the mask on both sides of the Softmax); ``flax`` (the
  Softmax renormalized over the kept keys: Mul -> ReduceSum -> Greater -> Where -> Div -> Where);
  ``nan_guard`` (SDPA's ``Where(IsNaN(p), 0, p)``);
- merge: ``torch`` (Transpose 0,2,1,3 + Reshape [0, 0, D]); ``keras`` (Unsqueeze, 5-D Transpose,
  Reshape [-1, D], Gemm transB, Reshape, Squeeze); ``flax`` (Transpose + Reshape [-1, D] + Gemm with C);
  ``dh_major`` (heads merged feature-major, Transpose 0,2,3,1: W_O's rows reordered to match);
  ``unpermuted`` (reshaped without moving the heads: a broken merge);
- weight: W_O as an ``initializer``, ``transposed`` (Transpose of a constant), ``int8`` (Mul(Cast(int8), scale))
  or ``dequantize`` (DequantizeLinear of int8);
- norm: ``fused`` (LayerNormalization) or ``folded`` (tf2onnx's x * s + (beta - mean * s));
- block (docs/alti.md, "Block kinds"): ``post`` (values from x, y = LN(x + a)); ``pre`` (values from
  LN(x), y = x + a carried on); ``sandwich`` (values from LN(x), y = x + RMSNorm(a), the RMSNorm
  spelled as PyTorch exports it); ``parallel`` (values from LN(x), x + a + MLP(LN(x)) in one sum);
  ``unnormed`` (values from x itself, x + a carried on past the LayerNorm that feeds the MLP, as
  ModernBERT's first layer: pre-LN, not post-LN);
- ``fold_heads``: probabilities and values reshaped to [B*H, S, S] and [B*H, S, dh] for their
  product, the context unfolded again (DeBERTa's and BLOOM's bmm).

``broken_layer`` puts a Transpose between that layer's Softmax and its MatMul with the values (the
block no longer reads as attention). ``Weights`` keeps every block's true parameters, so tests can
check what the matcher reads against what the graph computes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HEADS, HEAD_SIZE = 2, 4
WIDTH = HEADS * HEAD_SIZE
EPS = 1e-5


@dataclass
class LayerWeights:
    """A block's true parameters: W_O as [H*dh, D] with head-major rows, ``context @ W_O``; the norm
    the decomposition uses (post: the LayerNorm of the sum; sandwich: the RMSNorm of a; None else)."""

    out_weight: np.ndarray
    out_bias: np.ndarray
    gamma: np.ndarray | None
    beta: np.ndarray | None
    kind: str = "post"

    @property
    def norm(self) -> tuple[np.ndarray, np.ndarray, float] | None:
        return None if self.gamma is None else (self.gamma, self.beta, EPS)


@dataclass
class Builder:
    rng: np.random.Generator
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, array, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def random(self, *shape: int, scale: float = 0.4) -> np.ndarray:
        return (self.rng.normal(0.0, scale, shape)).astype(np.float32)


def _weight_input(b: Builder, weight: np.ndarray, spelling: str) -> tuple[str, np.ndarray]:
    """W_O ([H*dh, D], x @ W) as the graph stores it, and the float weights the graph then computes with."""
    if spelling == "initializer":
        return b.const(weight, "w_o"), weight
    if spelling == "transposed":
        return b.op("Transpose", [b.const(weight.T.copy(), "w_o_t")], perm=[1, 0]), weight
    scale = (np.abs(weight).max(0, keepdims=True) / 127.0).astype(np.float32)  # per output column
    quantized = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
    dequantized = (quantized.astype(np.float32) * scale).astype(np.float32)
    if spelling == "int8":
        cast = b.op("Cast", [b.const(quantized, "w_o_int8")], to=TensorProto.FLOAT)
        return b.op("Mul", [cast, b.const(scale, "w_o_scale")]), dequantized
    if spelling == "dequantize":
        return b.op("DequantizeLinear", [b.const(quantized, "w_o_int8"), b.const(scale.reshape(-1), "w_o_scale")], axis=1), dequantized
    raise ValueError(spelling)


def _heads(b: Builder, x: str, weight: np.ndarray, bias: np.ndarray, perm: list[int]) -> str:
    projected = b.op("Add", [b.op("MatMul", [x, b.const(weight)]), b.const(bias)])
    split = b.op("Reshape", [projected, b.const(np.array([0, 0, HEADS, HEAD_SIZE], np.int64))])
    return b.op("Transpose", [split], perm=perm)


def _probs(b: Builder, scores: str, mask_keep: str, spelling: str) -> str:
    if spelling == "keras":
        masked = b.op("Add", [b.op("Mul", [mask_keep, scores]), b.op("Mul", [b.const(np.float32(-1e9)), b.op("Sub", [b.const(np.float32(1)), mask_keep])])])
        probs = b.op("Softmax", [masked], axis=-1)
        return b.op("Add", [b.op("Mul", [mask_keep, probs]), b.op("Mul", [b.const(np.float32(0)), mask_keep])])
    if spelling == "flax":
        probs = b.op("Softmax", [scores], axis=3)
        kept = b.op("Mul", [probs, mask_keep])
        total = b.op("ReduceSum", [kept, b.const(np.array([3], np.int64))], keepdims=1)
        nonzero = b.op("Greater", [total, b.const(np.float32(0))])
        denominator = b.op("Where", [nonzero, total, b.const(np.float32(1))])
        return b.op("Where", [nonzero, b.op("Div", [kept, denominator]), b.const(np.float32(0))])
    masked = b.op("Add", [scores, b.op("Mul", [b.op("Sub", [b.const(np.float32(1)), mask_keep]), b.const(np.float32(-1e4))])])
    probs = b.op("Softmax", [masked], axis=-1)
    if spelling == "nan_guard":
        return b.op("Where", [b.op("IsNaN", [probs]), b.const(np.float32(0)), probs])
    return probs


def _merge_and_project(b: Builder, context: str, weight: str, bias: np.ndarray, spelling: str, shape_of: str) -> str:
    """The merged heads times W_O (the graph's weight input ``weight``), plus b_O, as [B, S, D]."""
    if spelling == "unpermuted":  # [B, H, S, dh] reshaped to [B, S, D] without moving the heads: not a merge
        merged = b.op("Reshape", [context, b.const(np.array([0, -1, WIDTH], np.int64))])
        return b.op("Add", [b.op("MatMul", [merged, weight]), b.const(bias, "b_o")])
    if spelling in ("torch", "dh_major"):
        perm = [0, 2, 1, 3] if spelling == "torch" else [0, 2, 3, 1]
        merged = b.op("Reshape", [b.op("Transpose", [context], perm=perm), b.const(np.array([0, 0, WIDTH], np.int64))])
        return b.op("Add", [b.op("MatMul", [merged, weight]), b.const(bias, "b_o")])
    if spelling == "keras":
        turned = b.op("Transpose", [b.op("Unsqueeze", [context, b.const(np.array([1], np.int64))])], perm=[0, 3, 1, 2, 4])
        flat = b.op("Reshape", [turned, b.const(np.array([-1, WIDTH], np.int64))])
        projected = b.op("Gemm", [flat, b.op("Transpose", [weight], perm=[1, 0])], transB=1)
        back = b.op("Reshape", [projected, b.op("Concat", [b.op("Shape", [shape_of]), b.const(np.array([1], np.int64))], axis=0)])
        return b.op("Add", [b.op("Squeeze", [back, b.const(np.array([3], np.int64))]), b.const(bias, "b_o")])
    if spelling == "flax":
        flat = b.op("Reshape", [b.op("Transpose", [context], perm=[0, 2, 1, 3]), b.const(np.array([-1, WIDTH], np.int64))])
        projected = b.op("Gemm", [flat, weight, b.const(bias, "b_o")])
        return b.op("Reshape", [projected, b.op("Shape", [shape_of])])
    raise ValueError(spelling)


def _norm(b: Builder, u: str, gamma: np.ndarray, beta: np.ndarray, spelling: str) -> str:
    if spelling == "fused":
        return b.op("LayerNormalization", [u, b.const(gamma, "gamma"), b.const(beta, "beta")], axis=-1, epsilon=EPS)
    mean = b.op("GlobalAveragePool", [u])
    d = b.op("Sub", [u, mean])
    var = b.op("GlobalAveragePool", [b.op("Mul", [d, d])])
    inverse = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const(np.float32(EPS))])])])
    s = b.op("Mul", [inverse, b.const(gamma, "gamma")])
    return b.op("Add", [b.op("Mul", [u, s]), b.op("Sub", [b.const(beta, "beta"), b.op("Mul", [mean, s])])])


def _rms_norm(b: Builder, u: str, gamma: np.ndarray) -> str:
    """gamma * u / sqrt(mean(u^2) + eps), as PyTorch exports an RMSNorm."""
    mean_square = b.op("ReduceMean", [b.op("Pow", [u, b.const(np.float32(2.0))])], axes=[-1], keepdims=1)
    inverse = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [mean_square, b.const(np.float32(EPS))])])])
    return b.op("Mul", [b.const(gamma, "gamma"), b.op("Mul", [u, inverse])])


def _fold(b: Builder, t: str) -> str:
    """[B, H, S, n] -> [B*H, S, n] (a target computed from the tensor's shape, as torch's view does)."""
    tail = b.op("Slice", [b.op("Shape", [t]), b.const(np.array([2], np.int64)), b.const(np.array([4], np.int64))])
    return b.op("Reshape", [t, b.op("Concat", [b.const(np.array([-1], np.int64)), tail], axis=0)])


def _unfold(b: Builder, t: str) -> str:
    """[B*H, S, dh] -> [B, H, S, dh]."""
    tail = b.op("Slice", [b.op("Shape", [t]), b.const(np.array([1], np.int64)), b.const(np.array([3], np.int64))])
    return b.op("Reshape", [t, b.op("Concat", [b.const(np.array([-1, HEADS], np.int64)), tail], axis=0)])


def _mlp(b: Builder, u: str) -> str:
    return b.op("Add", [b.op("MatMul", [u, b.const(b.random(WIDTH, WIDTH))]), b.const(b.random(WIDTH, scale=0.2))], "mlp")


def encoder_graph(layers: int = 2, probs: str = "plain", merge: str = "torch", weight: str = "initializer",
                  norm: str = "fused", broken_layer: int | None = None, seed: int = 0, block: str = "post",
                  fold_heads: bool = False) -> tuple[onnx.ModelProto, list[LayerWeights]]:
    """The model and every block's true parameters."""
    b = Builder(np.random.default_rng(seed))
    keep = b.op("Unsqueeze", [b.op("Cast", ["mask"], to=TensorProto.FLOAT), b.const(np.array([1, 2], np.int64))], "keep")
    x, truth = "x", []
    for layer in range(layers):
        source = x
        if block in ("pre", "sandwich", "parallel"):
            source = _norm(b, x, b.rng.uniform(0.5, 1.5, WIDTH).astype(np.float32), b.random(WIDTH, scale=0.1), norm)
        q = _heads(b, source, b.random(WIDTH, WIDTH), b.random(WIDTH, scale=0.2), [0, 2, 1, 3])
        k = _heads(b, source, b.random(WIDTH, WIDTH), b.random(WIDTH, scale=0.2), [0, 2, 3, 1])
        v = _heads(b, source, b.random(WIDTH, WIDTH), b.random(WIDTH, scale=0.2), [0, 2, 1, 3])
        scores = b.op("Mul", [b.op("MatMul", [q, k]), b.const(np.float32(HEAD_SIZE**-0.5))])
        p = _probs(b, scores, keep, probs)
        if layer == broken_layer:
            p = b.op("Transpose", [p], perm=[0, 1, 3, 2])
        if fold_heads:
            context = _unfold(b, b.op("MatMul", [_fold(b, p), _fold(b, v)], "context"))
        else:
            context = b.op("MatMul", [p, v], "context")
        head_major = b.random(WIDTH, WIDTH)
        graph_weight = head_major if merge != "dh_major" else _dh_major_rows(head_major)
        weight_name, computed = _weight_input(b, graph_weight, weight)
        bias, gamma, beta = b.random(WIDTH, scale=0.2), b.rng.uniform(0.5, 1.5, WIDTH).astype(np.float32), b.random(WIDTH, scale=0.1)
        projected = _merge_and_project(b, context, weight_name, bias, merge, x)
        if block == "post":
            x = _norm(b, b.op("Add", [projected, x], "residual_sum"), gamma, beta, norm)
        elif block == "pre":
            x = b.op("Add", [projected, x], "residual_sum")
            gamma = beta = None
        elif block == "sandwich":
            x = b.op("Add", [_rms_norm(b, projected, gamma), x], "residual_sum")
            beta = np.zeros(WIDTH, np.float32)
        elif block == "parallel":
            x = b.op("Add", [b.op("Add", [projected, _mlp(b, source)]), x], "residual_sum")
            gamma = beta = None
        elif block == "unnormed":
            summed = b.op("Add", [projected, x], "residual_sum")
            x = b.op("Add", [summed, _mlp(b, _norm(b, summed, gamma, beta, norm))])
            gamma = beta = None
        else:
            raise ValueError(block)
        head_major_computed = computed if merge != "dh_major" else _head_major_rows(computed)
        as_float64 = (lambda a: None if a is None else a.astype(np.float64))
        kind = "pre" if block == "unnormed" else block
        truth.append(LayerWeights(head_major_computed.astype(np.float64), bias.astype(np.float64), as_float64(gamma),
                                  as_float64(beta), kind))
    b.nodes.append(helper.make_node("Identity", [x], ["y"], name="output"))
    graph = helper.make_graph(
        b.nodes, "encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", WIDTH]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", WIDTH])], b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model, truth


def _dh_major_rows(weight: np.ndarray) -> np.ndarray:
    """Head-major rows (h * dh + d) laid out feature-major (d * H + h)."""
    return weight.reshape(HEADS, HEAD_SIZE, -1).transpose(1, 0, 2).reshape(WIDTH, -1).copy()


def _head_major_rows(weight: np.ndarray) -> np.ndarray:
    return weight.reshape(HEAD_SIZE, HEADS, -1).transpose(1, 0, 2).reshape(WIDTH, -1).copy()


def inputs(batch: int = 2, seq_len: int = 5, seed: int = 1) -> dict[str, np.ndarray]:
    """Random x and a right-padding mask (the second row two tokens shorter)."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq_len), np.int64)
    mask[1:, seq_len - 2:] = 0
    return {"x": rng.normal(0, 1, (batch, seq_len, WIDTH)).astype(np.float32), "mask": mask}
