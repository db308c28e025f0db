"""Feeding what the graph declares: input roles from names or an explicit map, dtypes from the graph,
models without an attention mask explained unpadded, and the layer count checked against config.json."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from fixture_cases import FIXTURES, assert_matches, load_expected, without_mask_input
from onnx import TensorProto, helper

from alti_onnx import Explainer, InputError, LayerCountError
from alti_onnx.runtime.model_inputs import ALIASES, ModelInputs, declared_inputs, parse_input_map
from alti_onnx.runtime.text_inputs import Batch

BERT = FIXTURES / "tiny-bert"


def graph_with_inputs(*inputs: tuple[str, int]) -> onnx.ModelProto:
    """A graph whose only content is its inputs (each [batch, sequence] of the given element type)."""
    values = [helper.make_tensor_value_info(name, dtype, ["batch", "sequence"]) for name, dtype in inputs]
    nodes = [helper.make_node("Identity", [inputs[0][0]], ["out"])]
    graph = helper.make_graph(nodes, "g", values, [helper.make_tensor_value_info("out", inputs[0][1], None)])
    return helper.make_model(graph)


BATCH = Batch.padded([[2, 10, 11, 3], [2, 12, 3]], pad_id=0)


@pytest.mark.parametrize("role", list(ALIASES))
def test_every_alias_names_its_role(role):
    for name in ALIASES[role]:
        others = [("input_ids", TensorProto.INT64)] if role != "ids" else []
        inputs = ModelInputs(declared_inputs(graph_with_inputs(*others, (name.upper() + ":0", TensorProto.INT32))))
        assert [i.role for i in inputs.inputs if i.name == name.upper() + ":0"] == [role]


def test_feeds_take_the_declared_dtypes():
    inputs = ModelInputs(declared_inputs(graph_with_inputs(("token_ids", TensorProto.INT32), ("padding_mask", TensorProto.BOOL),
                                           ("segment_ids", TensorProto.INT64), ("position_ids", TensorProto.INT32))))
    feeds = inputs.feeds(BATCH)
    assert {k: v.dtype for k, v in feeds.items()} == {
        "token_ids": np.int32, "padding_mask": np.bool_, "segment_ids": np.int64, "position_ids": np.int32,
    }
    np.testing.assert_array_equal(feeds["token_ids"], BATCH.input_ids)
    np.testing.assert_array_equal(feeds["padding_mask"], [[True] * 4, [True] * 3 + [False]])
    np.testing.assert_array_equal(feeds["position_ids"], [[0, 1, 2, 3], [0, 1, 2, 3]])
    assert inputs.has_mask


def test_an_input_map_names_what_the_names_do_not():
    model = graph_with_inputs(("in_0", TensorProto.INT32), ("in_1", TensorProto.INT32))
    with pytest.raises(InputError, match="cannot tell what graph input 'in_0'"):
        ModelInputs(declared_inputs(model))
    inputs = ModelInputs(declared_inputs(model), {"in_0": "ids", "in_1": "mask"})
    assert inputs.describe() == "in_0=ids (int32), in_1=mask (int32)"


@pytest.mark.parametrize("mapping, message", [
    ({"in_0": "tokens"}, "unknown input role 'tokens' for 'in_0'"),
    ({"nope": "ids"}, "the model has no input 'nope'"),
    ({"in_0": "ids", "in_1": "ids"}, r"graph inputs \['in_0', 'in_1'\] all look like the ids input"),
    ({"in_0": "mask", "in_1": "segment"}, "none of the graph inputs .* is the token ids"),
])
def test_bad_input_maps_are_one_line_errors(mapping, message):
    with pytest.raises(InputError, match=message):
        ModelInputs(declared_inputs(graph_with_inputs(("in_0", TensorProto.INT32), ("in_1", TensorProto.INT32))), mapping)


@pytest.mark.parametrize("pair", ["in_0", "=ids", "in_0=", "in_0:ids"])
def test_input_map_syntax(pair):
    with pytest.raises(InputError, match="--input-map expects NAME=ROLE"):
        parse_input_map([pair])


def test_a_model_without_mask_is_explained_unpadded_one_length_at_a_time(tmp_path):
    explainer = Explainer(without_mask_input(BERT, tmp_path / "no-mask"))
    assert not explainer.session.inputs.has_mask
    texts, expected = load_expected("bert")
    texts = [*texts, texts[0]]  # two texts of one length share a run
    got = explainer.explain(texts)
    for explanation, want in zip(got, [*expected, expected[0]]):
        assert_matches(explanation, want)


def test_config_layer_count_must_match_the_blocks(tmp_path):
    folder = tmp_path / "three-layers"
    shutil.copytree(BERT, folder)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LayerCountError, match="config.json says the model has 3 layers, but the graph has 2 attention blocks"):
        Explainer(folder)


def test_self_check_tolerance_must_be_positive():
    for bad in (0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(InputError, match="self-check tolerance must be a positive number"):
            Explainer(BERT, self_check_tolerance=bad)
