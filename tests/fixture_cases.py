"""The committed tiny fixtures and how a result is compared with their reference outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from models.families import DECODERS as _DECODERS
from models.families import ENCODERS as _ENCODERS
from models.families import FAMILIES

FIXTURES = Path(__file__).parent / "fixtures"
#: Largest absolute difference allowed against the float64 reference (and largest self-check error:
#: every tiny block output is of magnitude 1 to 10, so this bounds the relative error too).
TOLERANCE = 1e-5
#: The committed tiny fixtures, by family (models.families).
ENCODERS = list(_ENCODERS)
DECODERS = list(_DECODERS)


def block_kind(arch: str) -> str:
    """The block kind every layer of the family's fixture must be read as."""
    return FAMILIES[arch].kind


def load_expected(arch: str) -> tuple[list[str], list[dict[str, np.ndarray]]]:
    """The fixture's texts and, per text, the reference's input ids, contributions and rollout."""
    folder = FIXTURES / f"tiny-{arch}"
    texts = json.loads((folder / "texts.json").read_text())
    with np.load(folder / "expected.npz") as npz:
        expected = [
            {key: npz[f"{key}_{k}"] for key in ("input_ids", "contributions", "rollout")} for k in range(len(texts))
        ]
    return texts, expected


def assert_matches(explanation, expected: dict[str, np.ndarray], tolerance: float = TOLERANCE) -> None:
    """Same tokens, contributions and rollout within ``tolerance``, and a self-check under it."""
    assert explanation.input_ids == expected["input_ids"].tolist()
    np.testing.assert_allclose(explanation.contributions, expected["contributions"], atol=tolerance, rtol=0)
    np.testing.assert_allclose(explanation.rollout, expected["rollout"], atol=tolerance, rtol=0)
    assert np.all(explanation.reconstruction_error < tolerance)


def without_mask_input(source: Path, folder: Path) -> Path:
    """A copy of the fixture ``source`` whose graph computes its attention mask as all ones instead of
    taking it as an input (as exports of ``model(input_ids)`` do)."""
    shutil.copytree(source, folder)
    model = onnx.load(str(folder / "model.onnx"))
    (mask,) = [i for i in model.graph.input if i.name == "attention_mask"]
    model.graph.input.remove(mask)
    ones = [
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("ConstantOfShape", ["ids_shape"], ["attention_mask"], value=helper.make_tensor("one", TensorProto.INT64, [1], [1])),
    ]
    nodes = ones + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(folder / "model.onnx"))
    return folder
