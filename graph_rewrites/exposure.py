"""Expose chosen intermediate tensors as extra graph outputs, leaving the original outputs alone."""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from .block import AttentionBlock


def expose_tensors(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are the original ones followed by ``names`` (deduplicated)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {o.name for o in exposed.graph.output}
    for name in names:
        if name in present:
            continue
        exposed.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
        present.add(name)
    return exposed


def instrument(model: onnx.ModelProto, blocks: Iterable[AttentionBlock]) -> onnx.ModelProto:
    """The model with every block's intermediates (see ``AttentionBlock.tensor_names``) as outputs."""
    return expose_tensors(model, (name for block in blocks for name in block.tensor_names()))
