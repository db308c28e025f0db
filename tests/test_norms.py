"""The RMSNorm matcher on the forms exporters write, on hand-built graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from graph_rewrites.layer_norm import match_layer_norm, match_rms_norm

WIDTH = 8
GAMMA = np.linspace(0.5, 1.5, WIDTH).astype(np.float32)


def graph_of(nodes: list[onnx.NodeProto], output: str, opset: int = 18, domains=()) -> ir.Graph:
    inits = [
        numpy_helper.from_array(GAMMA, "gamma"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(1e-6, np.float32), "eps"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", WIDTH])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits,
    )
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return ir.from_proto(helper.make_model(graph, opset_imports=imports)).graph


def _x(graph: ir.Graph) -> ir.Value:
    return graph.inputs[0]


def decomposed(inverse: str) -> list[onnx.NodeProto]:
    head = [
        helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
        helper.make_node("Pow", ["x32", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq", "last"], ["ms"], keepdims=1),
        helper.make_node("Add", ["ms", "eps"], ["var"]),
        helper.make_node("Sqrt", ["var"], ["std"]),
    ]
    if inverse == "div":
        body = [helper.make_node("Div", ["x32", "std"], ["normed"])]
    elif inverse == "reciprocal":
        body = [helper.make_node("Reciprocal", ["std"], ["inv"]), helper.make_node("Mul", ["x32", "inv"], ["normed"])]
    else:
        body = [helper.make_node("Div", ["one", "std"], ["inv"]), helper.make_node("Mul", ["inv", "x32"], ["normed"])]
    return head + body + [helper.make_node("Mul", ["gamma", "normed"], ["y"])]


@pytest.mark.parametrize("inverse", ["div", "reciprocal", "one-over"])
def test_decomposed_rms_norm(inverse):
    graph = graph_of(decomposed(inverse), "y")
    x32 = next(n for n in graph if n.op_type == "Cast").outputs[0]
    match = match_rms_norm(x32, WIDTH)
    assert match is not None and match.output.name == "y"
    np.testing.assert_allclose(match.weight, GAMMA, rtol=1e-6)
    assert match.epsilon == pytest.approx(1e-6) and not match.bias.any()
    assert match_layer_norm(x32, WIDTH) is None  # not mistaken for a LayerNorm (no mean subtracted)


@pytest.mark.parametrize("op, domain, opset", [
    ("SimplifiedLayerNormalization", "", 18), ("SimplifiedLayerNormalization", "com.microsoft", 18),
    ("RMSNormalization", "", 23),
])
def test_fused_rms_norm(op, domain, opset):
    node = helper.make_node(op, ["x", "gamma"], ["y"], axis=-1, epsilon=1e-5, domain=domain)
    graph = graph_of([node], "y", opset=opset, domains=(domain,) if domain else ())
    match = match_rms_norm(_x(graph), WIDTH)
    assert match is not None and match.output.name == "y" and match.epsilon == pytest.approx(1e-5)
    np.testing.assert_allclose(match.weight, GAMMA, rtol=1e-6)
