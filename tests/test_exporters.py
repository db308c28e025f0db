"""ONNX files that no optimum export made, against a float64 reference run in their own framework.

The fixtures (tests/fixtures, built by ``python -m models.frameworks`` in each framework's own
environment and by ``python -m models.int8_weights``) carry expected contributions and rollouts from
``models.reference_math`` fed with that framework's own float64 run of the same weights (TensorFlow,
Keras 3, Flax), or from the PyTorch reference (weight-only int8). No TensorFlow or JAX is needed here.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fixture_cases import FIXTURES, assert_matches, load_expected

from alti_onnx import Explainer, InputError
from graph_rewrites import fused_ops

#: Contributions and rollout must equal the reference within this; the self-check likewise.
TOLERANCE = 1e-5
#: fixture -> (exporter, the input roles its graph's names do not tell)
EXPORTERS = {
    "tf-bert": ("tf2onnx 1.17 (Hugging Face TFBertForSequenceClassification)", {}),
    "keras-bert": ("Keras 3.15 model.export (keras_hub BertBackbone)", {}),
    # dynamic shapes, no dropout: the einsum lowered with run-time reshapes, a 5-D head merge, args_0_ names
    "keras-bert-dynamic": ("Keras 3.15 model.export, dynamic input_signature (keras_hub BertBackbone)", {}),
    "flax-mha": ("jax2onnx 0.17 (Flax NNX MultiHeadAttention)", {"in_0": "ids", "in_1": "mask"}),
    "flax-sdpa": ("jax2onnx 0.17 (Flax NNX dot_product_attention, ONNX Attention op)", {}),
    "bert-int8-weights": ("torch.onnx.export, weight-only int8 linear layers", {}),
}


@pytest.fixture(scope="module", params=list(EXPORTERS))
def case(request):
    name = request.param
    texts, expected = load_expected(name)
    return name, Explainer(FIXTURES / f"tiny-{name}", input_map=EXPORTERS[name][1]), texts, expected


def test_every_block_is_found_and_no_softmax_is_left_over(case):
    _, explainer, _, expected = case
    assert len(explainer.blocks) == len(expected[0]["contributions"]) == 2
    assert [(b.num_heads, b.head_size, b.kind) for b in explainer.blocks] == [(4, 8, "post")] * 2
    assert explainer.analysis.unmatched == []


def test_single_texts_match_the_frameworks_reference(case):
    _, explainer, texts, expected = case
    for text, want in zip(texts, expected):
        assert_matches(explainer.explain(text), want, TOLERANCE)


def test_padded_batch_matches_the_frameworks_reference(case):
    _, explainer, texts, expected = case
    assert len({len(e["input_ids"]) for e in expected}) > 1, "the batch must mix lengths so padding is exercised"
    for explanation, want in zip(explainer.explain(texts), expected):
        assert_matches(explanation, want, TOLERANCE)


def test_inputs_are_fed_in_the_dtype_the_graph_declares(case):
    name, explainer, texts, _ = case
    declared = {i.name: i.type.tensor_type.elem_type for i in onnx.load(FIXTURES / f"tiny-{name}" / "model.onnx").graph.input}
    feeds = explainer.session.inputs.feeds(explainer.text_encoder.encode(texts[:2]))
    assert set(feeds) == set(declared)
    for input_name, array in feeds.items():
        assert onnx.helper.np_dtype_to_tensor_dtype(array.dtype) == declared[input_name]


def test_the_instrumented_model_keeps_the_original_outputs(case):
    name, explainer, texts, _ = case
    batch = explainer.text_encoder.encode(texts)
    plain = ort.InferenceSession(str(FIXTURES / f"tiny-{name}" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = explainer.session.inputs.feeds(batch)
    want = dict(zip([o.name for o in plain.get_outputs()], plain.run(None, feeds)))
    outputs, _ = explainer.session.run(batch)
    # A fused op (the ONNX Attention op of the sdpa export) runs unfused into standard ops: the same
    # function, in another summation order.
    exact = not fused_ops(onnx.load(FIXTURES / f"tiny-{name}" / "model.onnx"))
    for output_name, value in want.items():
        tolerance = 0.0 if exact else 1e-5 * max(1.0, float(np.abs(value).max()))
        np.testing.assert_allclose(outputs[output_name], value, atol=tolerance, rtol=0, err_msg=output_name)


def test_keras_inputs_are_recognized_by_their_own_names():
    explainer = Explainer(FIXTURES / "tiny-keras-bert")
    assert explainer.session.inputs.describe() == "padding_mask=mask (int32), segment_ids=segment (int32), token_ids=ids (int32)"


def test_unnamed_inputs_need_an_input_map():
    with pytest.raises(InputError, match=r"cannot tell what graph input 'in_0' \(int32 \[B, S\]\) is: .*--input-map in_0=ROLE"):
        Explainer(FIXTURES / "tiny-flax-mha")


def test_tf_classifier_prediction_is_the_models_argmax():
    explainer = Explainer(FIXTURES / "tiny-tf-bert")
    texts = json.loads((FIXTURES / "tiny-tf-bert" / "texts.json").read_text())
    labels = json.loads((FIXTURES / "tiny-tf-bert" / "config.json").read_text())["id2label"]
    for explanation in explainer.explain(texts):
        logits = explanation.outputs["logits"]
        assert explanation.prediction.index == int(np.argmax(logits))
        assert explanation.prediction.label == labels[str(explanation.prediction.index)]


def test_keras_dynamic_export_folds_the_heads_into_a_batched_matmul():
    """The lowering this fixture exists for: Softmax -> Unsqueeze -> Reshape -> MatMul, the exposed
    probabilities the [B*H, S, S] operand of a 3-D MatMul, the inputs TensorFlow's args_0_ names."""
    model = onnx.load(FIXTURES / "tiny-keras-bert-dynamic" / "model.onnx")
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    readers = [n.op_type for n in model.graph.node if softmax.output[0] in n.input]
    assert readers == ["Unsqueeze"]
    assert {i.name for i in model.graph.input} == {"args_0_token_ids", "args_0_segment_ids", "args_0_padding_mask"}
    explainer = Explainer(FIXTURES / "tiny-keras-bert-dynamic")
    assert [(b.num_heads, b.head_size, b.kind) for b in explainer.blocks] == [(4, 8, "post")] * 2
    assert sorted(i.role for i in explainer.session.inputs.inputs) == ["ids", "mask", "segment"]
