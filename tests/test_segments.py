"""graph_rewrites.split_model: segments that, run in turn, compute what the whole model computes.

On hand-built graphs (what each segment holds, reads and hands on) and on every committed fixture
(each tensor bit for bit against one onnxruntime session of the whole model).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fixture_cases import DECODERS, ENCODERS, FIXTURES
from onnx import TensorProto, helper, numpy_helper

import graph_rewrites
from alti_onnx import Explainer
from alti_onnx.runtime.sessions import session_options
from graph_rewrites import GraphRewriteError, expose_tensors, inferred_types, split_model
from graph_rewrites.segments import with_operator_types


def _chain() -> onnx.ModelProto:
    """x -> Mul(w) -> a -> Relu -> b -> Add(x) -> c -> Tanh -> y, and a 'mask' made once, read late."""
    w = numpy_helper.from_array(np.full((3,), 2.0, np.float32), "w")
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["a"]),
        helper.make_node("Neg", ["x"], ["mask"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Add", ["b", "x"], ["c"]),
        helper.make_node("Add", ["c", "mask"], ["d"]),
        helper.make_node("Tanh", ["d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])], [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _run_segments(segments, feeds):
    live = dict(feeds)
    for segment in segments:
        session = ort.InferenceSession(segment.model.SerializeToString(), providers=["CPUExecutionProvider"])
        live.update(zip(segment.outputs, session.run(segment.outputs, {n: live[n] for n in segment.inputs})))
    return live


def test_each_group_gets_the_nodes_it_needs_first_and_the_rest_go_last():
    model = _chain()
    segments = list(split_model(model, [["a"], ["c"]], inferred_types(model)))
    assert [[n.op_type for n in s.model.graph.node] for s in segments] == [["Mul"], ["Relu", "Add"], ["Neg", "Add", "Tanh"]]
    assert [s.inputs for s in segments] == [["x"], ["x", "a"], ["x", "c"]]
    # a tensor is handed on when a later segment reads it or the caller asked for it
    assert [s.outputs for s in segments] == [["a"], ["c"], ["y"]]
    assert [[t.name for t in s.model.graph.initializer] for s in segments] == [["w"], [], []]
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    live = _run_segments(segments, {"x": x})
    np.testing.assert_allclose(live["y"], np.tanh(np.maximum(2 * x, 0) + x - x), rtol=1e-6)


def test_a_tensor_no_node_computes_cannot_be_a_split_point():
    model = _chain()
    with pytest.raises(GraphRewriteError, match="no node computes it"):
        list(split_model(model, [["x"]], inferred_types(model)))


def test_types_continue_past_operators_onnx_does_not_know():
    """ONNX's shape inference stops at a contrib op (here com.microsoft FastGelu) and everything
    computed from it; the split still needs the element type of each crossing tensor."""
    nodes = [
        helper.make_node("FastGelu", ["x"], ["g"], domain="com.microsoft"),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Cast", ["s"], ["f"], to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(nodes, "contrib", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("f", TensorProto.FLOAT16, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    inferred = inferred_types(model)
    assert "r" not in inferred
    completed = with_operator_types(model, inferred)
    assert {name: completed[name].tensor_type.elem_type for name in ("g", "r", "s", "f")} == {
        "g": TensorProto.FLOAT, "r": TensorProto.FLOAT, "s": TensorProto.INT64, "f": TensorProto.FLOAT16}
    segments = list(split_model(model, [["r"]], inferred))
    assert segments[1].inputs == ["r"] and segments[1].model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT


@pytest.mark.parametrize("arch", ENCODERS + DECODERS)
def test_segments_compute_the_whole_models_numbers_bit_for_bit(arch):
    """The model's own outputs and every block tensor, per layer segment, equal one session of the
    whole model with the same tensors exposed (the same nodes, fused the same way)."""
    explainer = Explainer(FIXTURES / f"tiny-{arch}", cache=False)
    batch = explainer.text_encoder.encode(["the quick brown fox jumps over the dog", "a cat"])
    model = graph_rewrites.unfuse(graph_rewrites.load_model(explainer.files.onnx))
    originals = [o.name for o in model.graph.output]
    names = originals + [n for b in explainer.blocks for n in b.tensor_names()]
    whole = ort.InferenceSession(expose_tensors(model, names).SerializeToString(), session_options(),
                                 providers=["CPUExecutionProvider"])
    feeds = {**explainer.session.inputs.feeds(batch), **explainer.session.empty_cache(2)}
    expected = dict(zip(names, whole.run(names, feeds)))
    outputs, tensors = explainer.session.run(batch)
    assert len(explainer.session.segments) == len(explainer.blocks) + 1
    for name in originals:
        np.testing.assert_array_equal(outputs[name], expected[name], err_msg=name)
    for block, got in zip(explainer.blocks, tensors):
        for name, array in zip(block.tensor_names(), (got.probs, got.values, got.residual, got.output)):
            np.testing.assert_array_equal(array, expected[name].reshape(array.shape), err_msg=f"layer {block.layer} {name}")
