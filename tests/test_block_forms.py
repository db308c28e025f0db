"""The block matcher on hand-built graphs, one per spelling of each step and per negative case, with
no exporter involved (tests/block_graphs.py builds them).

For every form: the matcher finds both blocks, reads W_O (head-major rows), b_O, gamma, beta and
epsilon as the graph computes them, and the block tensors it exposes, run through onnxruntime,
give ALTI contributions equal to the float64 equations (models.reference_math) with the true
parameters. For the negative forms: a Softmax that is not attention is set aside with its reason;
a block broken after its Softmax, or a head merge that is no merge, refuses the model (it would
otherwise be explained with a layer missing).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from block_graphs import EPS, HEAD_SIZE, HEADS, WIDTH, encoder_graph, inputs
from onnx import TensorProto, helper, numpy_helper

from alti_onnx.decomposition.contributions import layer_contributions
from alti_onnx.runtime.sessions import block_tensors, session_options
from graph_rewrites import (
    UnmatchedAttentionError,
    analyze_attention,
    find_attention_blocks,
    instrument,
)
from models.reference_math import LayerCapture, reference_alti

FORMS = {
    "plain": {},
    "keras-masked-softmax": {"probs": "keras"},
    "flax-renormalized-softmax": {"probs": "flax"},
    "sdpa-nan-guard": {"probs": "nan_guard"},
    "keras-5d-merge": {"merge": "keras"},
    "flax-2d-merge-gemm-bias": {"merge": "flax"},
    "dh-major-merge": {"merge": "dh_major"},
    "transposed-weight": {"weight": "transposed"},
    "int8-weight-mul-cast": {"weight": "int8"},
    "int8-weight-dequantize-linear": {"weight": "dequantize"},
    "tf-folded-layer-norm": {"norm": "folded"},
    "keras-all-at-once": {"probs": "keras", "merge": "keras", "norm": "folded", "weight": "transposed"},
    "flax-all-at-once": {"probs": "flax", "merge": "flax", "weight": "int8"},
}


def _run(model: onnx.ModelProto, blocks, feeds) -> dict[str, np.ndarray]:
    instrumented = instrument(model, blocks)
    session = ort.InferenceSession(instrumented.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    names = [o.name for o in instrumented.graph.output]
    return dict(zip(names, session.run(names, feeds)))


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_each_form_is_read_as_the_graph_computes_it(form):
    model, truth = encoder_graph(**form)
    blocks = find_attention_blocks(model)
    assert [(b.num_heads, b.head_size, b.hidden_size, b.kind) for b in blocks] == [(HEADS, HEAD_SIZE, WIDTH, "post")] * 2
    for block, want in zip(blocks, truth):
        np.testing.assert_allclose(block.out_proj_weight, want.out_weight, atol=1e-7, rtol=0)
        np.testing.assert_allclose(block.out_proj_bias, want.out_bias, atol=1e-7, rtol=0)
        np.testing.assert_allclose(block.norm_weight, want.gamma, atol=1e-7, rtol=0)
        np.testing.assert_allclose(block.norm_bias, want.beta, atol=1e-7, rtol=0)
        assert block.norm_epsilon == pytest.approx(EPS, rel=1e-6)
    assert_contributions_match_equations(model, blocks, truth)


#: Block kinds (docs/alti.md), each as hand-built graph options and the kind it must be read as.
KINDS = {
    "pre-ln": ({"block": "pre"}, "pre"),
    "sandwich-rms-norm": ({"block": "sandwich"}, "sandwich"),
    "parallel-attention-and-mlp": ({"block": "parallel"}, "parallel"),
    "no-norm-before-attention": ({"block": "unnormed"}, "pre"),
    "heads-folded-into-batch": ({"fold_heads": True}, "post"),
    "pre-ln-heads-folded-into-batch": ({"block": "pre", "fold_heads": True}, "pre"),
}


@pytest.mark.parametrize("form, kind", KINDS.values(), ids=KINDS.keys())
def test_each_block_kind_is_read_as_the_graph_computes_it(form, kind):
    """The kind comes from where the norms sit around the residual sum; the parameters the kind's
    math uses are read as the graph computes them (a sandwich block's RMSNorm of the attention output)."""
    model, truth = encoder_graph(**form)
    blocks = find_attention_blocks(model)
    assert [(b.kind, b.num_heads, b.head_size) for b in blocks] == [(kind, HEADS, HEAD_SIZE)] * 2
    for block, want in zip(blocks, truth):
        np.testing.assert_allclose(block.out_proj_weight, want.out_weight, atol=1e-7, rtol=0)
        np.testing.assert_allclose(block.out_proj_bias, want.out_bias, atol=1e-7, rtol=0)
        if kind in ("post", "sandwich"):
            np.testing.assert_allclose(block.norm_weight, want.gamma, atol=1e-7, rtol=0)
            assert block.norm_rms == (kind == "sandwich")
            assert block.norm_epsilon == pytest.approx(EPS, rel=1e-6)
    assert_contributions_match_equations(model, blocks, truth)


def assert_contributions_match_equations(model: onnx.ModelProto, blocks, truth) -> None:
    """The exposed tensors, run through onnxruntime, give the float64 equations' contributions with
    the true parameters, and the decomposition rebuilds each block's output."""
    feeds = inputs()
    tensors = _run(model, blocks, feeds)
    for row, length in enumerate(feeds["mask"].sum(1)):
        captures, mine = [], []
        for block, want in zip(blocks, truth):
            run = block_tensors(*(tensors[name] for name in block.tensor_names()))
            probs = run.probs[row][:, :length, :length]
            values = run.values[row][:, :length]
            residual, output = run.residual[row][:length], run.output[row][:length]
            layer = layer_contributions(block, probs, values, residual, output)
            assert layer.reconstruction_error < 1e-5
            mine.append(layer.contributions)
            model_output = residual + output if want.kind == "parallel" else output  # a parallel block exposes a
            captures.append(LayerCapture(
                x=residual.astype(np.float64), probs=probs.astype(np.float64),
                values=values.transpose(1, 0, 2).reshape(length, -1).astype(np.float64),
                out_weight=want.out_weight, out_bias=want.out_bias, norm=want.norm,
                block_output=model_output.astype(np.float64), kind=want.kind, norm_rms=want.kind == "sandwich",
            ))
        reference = reference_alti(captures)
        assert reference.block_outputs_error.max() < 1e-5  # the true parameters rebuild what the graph computed
        np.testing.assert_allclose(np.stack(mine), reference.contributions, atol=1e-5, rtol=0)


def test_a_layer_broken_after_its_softmax_refuses_the_model():
    """One layer's probabilities pass a Transpose before they meet the values: that block cannot be
    read, so the model is refused rather than explained with one layer fewer."""
    model, _ = encoder_graph(broken_layer=1)
    analysis = analyze_attention(model)
    assert len(analysis.blocks) == 1 and len(analysis.missed) == 1
    assert analysis.missed[0].step == "probs x values"
    with pytest.raises(UnmatchedAttentionError, match=r"Softmax node '\w+' looks like attention .*step 'probs x values'"):
        find_attention_blocks(model)


def test_heads_reshaped_without_a_merge_refuse_the_model():
    model, _ = encoder_graph(merge="unpermuted")
    with pytest.raises(UnmatchedAttentionError, match="step 'head merge'"):
        find_attention_blocks(model)


def test_a_softmax_that_is_not_attention_is_set_aside_with_its_reason():
    """A classifier head's Softmax over logits from constant weights: accounted for, not a block, no error."""
    model, _ = encoder_graph()
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.ones((WIDTH, 3), np.float32), "classifier_w"))
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), "first"))
    graph.node.extend([
        helper.make_node("Gather", ["y", "first"], ["cls"], axis=1, name="pool"),
        helper.make_node("MatMul", ["cls", "classifier_w"], ["logits"], name="classifier"),
        helper.make_node("Softmax", ["logits"], ["class_probs"], axis=-1, name="class_softmax"),
    ])
    graph.output.append(helper.make_tensor_value_info("class_probs", TensorProto.FLOAT, None))
    analysis = analyze_attention(model)
    assert len(analysis.blocks) == 2 and not analysis.missed
    (other,) = analysis.unmatched
    assert other.node == "Softmax node 'class_softmax'" and other.step == "probs x values" and not other.attention_like
    assert len(find_attention_blocks(model)) == 2


def test_a_residual_sum_no_form_reads_records_every_forms_reason():
    """A post-LN layer whose norm after the residual sum is replaced by a Relu: no residual form fits,
    and the miss names each form with its own reason, in the declared order."""
    from graph_rewrites.residual_forms import FORMS

    model, _ = encoder_graph(layers=1)
    norm = next(n for n in model.graph.node if n.op_type == "LayerNormalization")
    norm.op_type = "Relu"
    del norm.input[1:]
    del norm.attribute[:]
    (miss,) = analyze_attention(model).missed
    assert miss.step == "norm" and miss.reason.startswith("no residual form fits: ")
    named = [part.split(": ", 1)[0] for part in miss.reason.removeprefix("no residual form fits: ").split("; ")]
    assert named == [form.name for form in FORMS]
    assert "post-LN: expected a LayerNorm of the residual sum" in miss.reason
    assert "pre-LN: the values are not projected from a LayerNorm or RMSNorm" in miss.reason
