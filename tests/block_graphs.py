"""Hand-built post-LN attention graphs (onnx.helper), one option per spelling exporters use.

``encoder_graph(...)`` builds a stack of BERT-like attention blocks over an input ``x`` [B, S, D]
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
- norm: ``fused`` (LayerNormalization) or ``folded`` (tf2onnx's x * s + (beta - mean * s)).

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
    """A block's true parameters: W_O as [H*dh, D] with head-major rows, ``context @ W_O``."""

    out_weight: np.ndarray
    out_bias: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray


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


def encoder_graph(layers: int = 2, probs: str = "plain", merge: str = "torch", weight: str = "initializer",
                  norm: str = "fused", broken_layer: int | None = None, seed: int = 0) -> tuple[onnx.ModelProto, list[LayerWeights]]:
    """The model and every block's true parameters."""
    b = Builder(np.random.default_rng(seed))
    keep = b.op("Unsqueeze", [b.op("Cast", ["mask"], to=TensorProto.FLOAT), b.const(np.array([1, 2], np.int64))], "keep")
    x, truth = "x", []
    for layer in range(layers):
        q = _heads(b, x, b.random(WIDTH, WIDTH), b.random(WIDTH, scale=0.2), [0, 2, 1, 3])
        k = _heads(b, x, b.random(WIDTH, WIDTH), b.random(WIDTH, scale=0.2), [0, 2, 3, 1])
        v = _heads(b, x, b.random(WIDTH, WIDTH), b.random(WIDTH, scale=0.2), [0, 2, 1, 3])
        scores = b.op("Mul", [b.op("MatMul", [q, k]), b.const(np.float32(HEAD_SIZE**-0.5))])
        p = _probs(b, scores, keep, probs)
        if layer == broken_layer:
            p = b.op("Transpose", [p], perm=[0, 1, 3, 2])
        context = b.op("MatMul", [p, v], "context")
        head_major = b.random(WIDTH, WIDTH)
        graph_weight = head_major if merge != "dh_major" else _dh_major_rows(head_major)
        weight_name, computed = _weight_input(b, graph_weight, weight)
        bias, gamma, beta = b.random(WIDTH, scale=0.2), b.rng.uniform(0.5, 1.5, WIDTH).astype(np.float32), b.random(WIDTH, scale=0.1)
        projected = _merge_and_project(b, context, weight_name, bias, merge, x)
        x = _norm(b, b.op("Add", [projected, x], "residual_sum"), gamma, beta, norm)
        head_major_computed = computed if merge != "dh_major" else _head_major_rows(computed)
        truth.append(LayerWeights(head_major_computed.astype(np.float64), bias.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64)))
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
