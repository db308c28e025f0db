"""Every norm spelling exporters write, on hand-built graphs: ``norm_forms`` rewrites it into the
canonical op on the analysis copy, and the parameters read from that op reproduce what onnxruntime
computes with the original graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graph_rewrites.analyze import analysis_copy
from graph_rewrites.layer_norm import LAYER_NORM_OPS, RMS_NORM_OPS, norm_reading

WIDTH = 8
GAMMA = np.linspace(0.5, 1.5, WIDTH).astype(np.float32)
BETA = np.linspace(-0.3, 0.4, WIDTH).astype(np.float32)
EPS = 1e-6


def model_of(nodes: list[onnx.NodeProto], opset: int = 18, domains=(), rank: int = 3) -> onnx.ModelProto:
    inits = [
        numpy_helper.from_array(GAMMA, "gamma"),
        numpy_helper.from_array(BETA, "beta"),
        numpy_helper.from_array(GAMMA.reshape(1, 1, WIDTH), "gamma3"),
        numpy_helper.from_array(BETA.reshape(1, 1, WIDTH), "beta3"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(-0.5, np.float32), "minus_half"),
        numpy_helper.from_array(np.array(EPS, np.float32), "eps"),
        numpy_helper.from_array(np.array([-1], np.int64), "last"),
        numpy_helper.from_array(np.array([rank - 1], np.int64), "last_positive"),
        numpy_helper.from_array(np.array([1], np.int64), "second"),
    ]
    shape = ["b", "s", WIDTH][-rank:] if rank <= 3 else ["b", "h", "s", WIDTH]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits,
    )
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=imports, ir_version=10)


def node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], **attrs)


def read(model: onnx.ModelProto, kinds=LAYER_NORM_OPS | RMS_NORM_OPS):
    copy = analysis_copy(model)
    x = copy.graph.inputs[0]
    return norm_reading(x, WIDTH, kinds) or next(
        (m for n in copy.graph for m in [norm_reading(n.outputs[0], WIDTH, kinds)] if n.op_type == "Cast" and m), None
    )


def computed(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def layer_norm(x, weight, bias, eps, rms=False):
    x = x.astype(np.float64)
    centered = x if rms else x - x.mean(-1, keepdims=True)
    scale = np.sqrt((centered**2).mean(-1, keepdims=True) + eps)
    return weight * centered / scale + bias


X = np.random.default_rng(0).normal(0.5, 2.0, (2, 3, WIDTH)).astype(np.float32)


def assert_reads_as_norm(model: onnx.ModelProto, rms: bool = False, affine: bool = True) -> None:
    """The canonical norm is found on x, ends at y, and its parameters reproduce the graph's output."""
    match = read(model)
    assert match is not None, "no norm recognized"
    assert match.output.name == "y" and match.rms == rms
    assert match.epsilon == pytest.approx(EPS, rel=1e-6)
    np.testing.assert_allclose(match.weight, GAMMA if affine else np.ones(WIDTH), rtol=1e-6)
    np.testing.assert_allclose(match.bias, BETA if affine and not rms else np.zeros(WIDTH), atol=1e-7)
    want = computed(model, X)
    np.testing.assert_allclose(layer_norm(X, match.weight, match.bias, match.epsilon, rms), want, atol=2e-5)


def centered_layer_norm(square: str, normalize: str, mean_axes: str = "last") -> list[onnx.NodeProto]:
    """PyTorch below opset 17 and onnxruntime's unfusing: (x - mean) / sqrt(mean((x - mean)^2) + eps)."""
    squared = node("Pow", ["d", "two"], "sq") if square == "pow" else node("Mul", ["d", "d"], "sq")
    if normalize == "div":
        tail = [node("Div", ["d", "std"], "n")]
    else:
        tail = [node("Reciprocal", ["std"], "inv"), node("Mul", ["inv", "d"], "n")]
    return [
        node("ReduceMean", ["x", mean_axes], "mean", keepdims=1),
        node("Sub", ["x", "mean"], "d"),
        squared,
        node("ReduceMean", ["sq", mean_axes], "var", keepdims=1),
        node("Add", ["var", "eps"], "ve"),
        node("Sqrt", ["ve"], "std"),
        *tail,
        node("Mul", ["n", "gamma"], "scaled"),
        node("Add", ["beta", "scaled"], "y"),
    ]


@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("normalize", ["div", "reciprocal"])
def test_centered_layer_norm(square, normalize):
    assert_reads_as_norm(model_of(centered_layer_norm(square, normalize)))


def test_centered_layer_norm_with_axes_attribute_and_positive_axis():
    nodes = centered_layer_norm("pow", "div")
    for n in nodes:
        if n.op_type == "ReduceMean":
            del n.input[1:]
            n.attribute.append(helper.make_attribute("axes", [2]))
    assert_reads_as_norm(model_of(nodes, opset=13))


def test_unit_layer_norm_without_scale_or_shift():
    nodes = centered_layer_norm("pow", "div")[:-2]
    nodes[-1].output[0] = "y"
    assert_reads_as_norm(model_of(nodes), affine=False)


def folded_layer_norm(negated_mean: bool, mean_op: str = "GlobalAveragePool") -> list[onnx.NodeProto]:
    """tf.nn.batch_normalization as tf2onnx writes it: x * s + (beta - mean * s), s = gamma / sqrt(var + eps);
    Keras 3 writes the shift as -mean * s + beta and keeps gamma and beta [1, 1, D]."""
    def mean(src: str, out: str) -> onnx.NodeProto:
        return node("GlobalAveragePool", [src], out) if mean_op == "GlobalAveragePool" else node("ReduceMean", [src, "last"], out, keepdims=1)

    gamma, beta = ("gamma3", "beta3") if negated_mean else ("gamma", "beta")
    head = [
        mean("x", "mean"),
        node("Sub", ["x", "mean"], "d"),
        node("Mul", ["d", "d"], "sq"),
        mean("sq", "var"),
        node("Add", ["var", "eps"], "ve"),
        node("Sqrt", ["ve"], "std"),
        node("Reciprocal", ["std"], "inv"),
        node("Mul", ["inv", gamma], "s"),
        node("Mul", ["x", "s"], "xs"),
    ]
    if negated_mean:
        shift = [node("Neg", ["mean"], "neg"), node("Mul", ["neg", "s"], "ms"), node("Add", ["ms", beta], "shift")]
    else:
        shift = [node("Mul", ["mean", "s"], "ms"), node("Sub", [beta, "ms"], "shift")]
    return head + shift + [node("Add", ["xs", "shift"], "y")]


@pytest.mark.parametrize("negated_mean", [False, True], ids=["tf2onnx", "keras3"])
@pytest.mark.parametrize("mean_op", ["GlobalAveragePool", "ReduceMean"])
def test_folded_layer_norm(negated_mean, mean_op):
    assert_reads_as_norm(model_of(folded_layer_norm(negated_mean, mean_op), opset=18 if mean_op == "ReduceMean" else 17))


@pytest.mark.parametrize("clipped", [True, False])
def test_second_moment_layer_norm(clipped):
    """Flax: var = max(E[x^2] - E[x]^2, 0), means over axis 2 of [B, S, D]."""
    variance = [node("Max", ["v0", "zero"], "var")] if clipped else [node("Identity", ["v0"], "var")]
    nodes = [
        node("ReduceMean", ["x", "last_positive"], "mean", keepdims=1),
        node("Sub", ["x", "mean"], "d"),
        node("Mul", ["x", "x"], "xx"),
        node("ReduceMean", ["xx", "last_positive"], "m2", keepdims=1),
        node("Mul", ["mean", "mean"], "mm"),
        node("Sub", ["m2", "mm"], "v0"),
        *variance,
        node("Add", ["var", "eps"], "ve"),
        node("Sqrt", ["ve"], "std"),
        node("Div", ["d", "std"], "n"),
        node("Mul", ["n", "gamma"], "scaled"),
        node("Add", ["scaled", "beta"], "y"),
    ]
    assert_reads_as_norm(model_of(nodes))


def test_inverse_square_root_as_power():
    nodes = centered_layer_norm("pow", "div")
    at = next(k for k, n in enumerate(nodes) if n.op_type == "Sqrt")
    nodes[at:at + 2] = [node("Pow", ["ve", "minus_half"], "inv"), node("Mul", ["d", "inv"], "n")]
    assert_reads_as_norm(model_of(nodes))


@pytest.mark.parametrize("axis", [-1, 2])
def test_fused_layer_norm_any_spelling_of_the_last_axis(axis):
    """jax2onnx writes LayerNormalization with axis=2 on [B, S, D]."""
    assert_reads_as_norm(model_of([node("LayerNormalization", ["x", "gamma", "beta"], "y", axis=axis, epsilon=EPS)], opset=17))


def rms_norm(inverse: str) -> list[onnx.NodeProto]:
    head = [
        helper.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT),
        node("Pow", ["x32", "two"], "sq"),
        node("ReduceMean", ["sq", "last"], "ms", keepdims=1),
        node("Add", ["ms", "eps"], "var"),
        node("Sqrt", ["var"], "std"),
    ]
    if inverse == "div":
        body = [node("Div", ["x32", "std"], "normed")]
    elif inverse == "reciprocal":
        body = [node("Reciprocal", ["std"], "inv"), node("Mul", ["x32", "inv"], "normed")]
    else:
        body = [node("Div", ["one", "std"], "inv"), node("Mul", ["inv", "x32"], "normed")]
    return head + body + [node("Mul", ["gamma", "normed"], "y")]


@pytest.mark.parametrize("inverse", ["div", "reciprocal", "one-over"])
def test_decomposed_rms_norm(inverse):
    model = model_of(rms_norm(inverse))
    assert_reads_as_norm(model, rms=True)
    assert read(model, LAYER_NORM_OPS) is None  # not mistaken for a LayerNorm (no mean subtracted)


@pytest.mark.parametrize("op, domain, opset", [
    ("SimplifiedLayerNormalization", "", 18), ("SimplifiedLayerNormalization", "com.microsoft", 18),
    ("RMSNormalization", "", 23),
])
def test_fused_rms_norm(op, domain, opset):
    n = helper.make_node(op, ["x", "gamma"], ["y"], axis=-1, epsilon=EPS, domain=domain)
    match = read(model_of([n], opset=opset, domains=(domain,) if domain else ()))
    assert match is not None and match.output.name == "y" and match.rms and match.epsilon == pytest.approx(EPS)
    np.testing.assert_allclose(match.weight, GAMMA, rtol=1e-6)


def test_a_mean_over_another_axis_is_no_norm():
    assert read(model_of(centered_layer_norm("pow", "div", mean_axes="second"))) is None


def test_global_average_pool_of_a_rank_4_tensor_is_no_norm():
    """GlobalAveragePool of [B, H, S, D] averages S and D together: not a mean over the last axis."""
    assert read(model_of(folded_layer_norm(False), opset=17, rank=4)) is None


def test_layer_norm_over_another_axis_is_no_norm():
    assert read(model_of([node("LayerNormalization", ["x", "gamma3", "beta3"], "y", axis=1, epsilon=EPS)], opset=17)) is None
