"""Which graph input is which (token ids, attention mask, segment ids, positions), in the dtype the graph declares.

Exporters name and type the same inputs differently: optimum ``input_ids`` / ``attention_mask``
(int64), Keras 3 ``token_ids`` / ``padding_mask`` / ``segment_ids`` (int32), TF-Hub BERT
``input_word_ids`` / ``input_mask`` / ``input_type_ids``, jax2onnx ``in_0``, ``in_1`` unless told. A
role is read from the name (the aliases below, case and a ``:0`` suffix ignored) or given
explicitly (``input_map={"in_1": "mask"}``, ``--input-map in_1=mask``); each array is cast to the
dtype its input declares. KV-cache inputs are the runtime's business, not a role.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from .errors import InputError
from .text_inputs import Batch

#: role -> the input names exporters use for it (lower case).
ALIASES: dict[str, tuple[str, ...]] = {
    "ids": ("input_ids", "token_ids", "input_word_ids", "word_ids", "ids", "tokens", "token_ids_input"),
    "mask": ("attention_mask", "padding_mask", "input_mask", "mask", "attn_mask"),
    "segment": ("token_type_ids", "segment_ids", "input_type_ids", "type_ids", "segment_ids_input"),
    "positions": ("position_ids", "positions", "position_index"),
}
ROLES = tuple(ALIASES)

_NUMPY_TYPES = {
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64,
}


@dataclass(frozen=True)
class GraphInput:
    """One graph input the model is fed: its name, role and element type."""

    name: str
    role: str
    dtype: type


def declared_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: the graph's inputs that are not also initializers."""
    initializers = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def parse_input_map(pairs: Iterable[str]) -> dict[str, str]:
    """``["in_1=mask", ...]`` (the CLI's ``--input-map``) as ``{"in_1": "mask"}``."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        name, sep, role = pair.partition("=")
        if not sep or not name.strip() or not role.strip():
            raise InputError(f"--input-map expects NAME=ROLE (roles: {', '.join(ROLES)}), got {pair!r}")
        mapping[name.strip()] = role.strip()
    return mapping


class ModelInputs:
    """The model's token inputs by role, and the feeds for a batch in their declared dtypes.

    ``graph_inputs`` are the inputs the graph declares (initializers that are also inputs left out).
    """

    def __init__(self, graph_inputs: Iterable[onnx.ValueInfoProto], input_map: Mapping[str, str] | None = None,
                 skip: Iterable[str] = ()):
        declared = {v.name: v for v in graph_inputs}
        input_map = dict(input_map or {})
        _check_map(input_map, declared)
        self.inputs: list[GraphInput] = []
        skipped = set(skip)
        for name, value in declared.items():
            if name in skipped and name not in input_map:
                continue
            role = input_map.get(name) or _role_from_name(name)
            if role is None:
                raise InputError(
                    f"cannot tell what graph input {name!r} ({_describe(value)}) is: name its role with "
                    f"--input-map {name}=ROLE (API: input_map={{{name!r}: ROLE}}), ROLE one of {', '.join(ROLES)}"
                )
            self.inputs.append(GraphInput(name, role, _dtype(value)))
        roles = [i.role for i in self.inputs]
        for role in set(roles):
            if roles.count(role) > 1:
                names = [i.name for i in self.inputs if i.role == role]
                raise InputError(f"graph inputs {names} all look like the {role} input; set one with --input-map NAME=ROLE")
        if "ids" not in roles:
            raise InputError(
                f"none of the graph inputs ({', '.join(declared) or 'none'}) is the token ids; "
                "name it with --input-map NAME=ids"
            )

    @property
    def has_mask(self) -> bool:
        """Whether the model takes an attention mask (without one, texts run unpadded, one length at a time)."""
        return any(i.role == "mask" for i in self.inputs)

    def feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        """Every token input of the model for ``batch``, cast to the dtype the graph declares."""
        arrays = {"ids": batch.input_ids, "mask": batch.attention_mask, "segment": batch.token_type_ids,
                  "positions": batch.position_ids}
        return {i.name: arrays[i.role].astype(i.dtype, copy=False) for i in self.inputs}

    def describe(self) -> str:
        return ", ".join(f"{i.name}={i.role} ({np.dtype(i.dtype).name})" for i in self.inputs)


def _check_map(input_map: Mapping[str, str], declared: Mapping[str, onnx.ValueInfoProto]) -> None:
    for name, role in input_map.items():
        if role not in ROLES:
            raise InputError(f"unknown input role {role!r} for {name!r}; roles are {', '.join(ROLES)}")
        if name not in declared:
            raise InputError(f"the model has no input {name!r} (its inputs: {', '.join(declared) or 'none'})")


def _role_from_name(name: str) -> str | None:
    key = name.lower().split(":")[0]
    return next((role for role, names in ALIASES.items() if key in names), None)


def _dtype(value: onnx.ValueInfoProto) -> type:
    elem_type = value.type.tensor_type.elem_type
    if elem_type not in _NUMPY_TYPES:
        raise InputError(f"graph input {value.name!r} has element type {onnx.TensorProto.DataType.Name(elem_type)}, "
                         "not one a token input can have")
    return _NUMPY_TYPES[elem_type]


def _describe(value: onnx.ValueInfoProto) -> str:
    tensor = value.type.tensor_type
    dims = [d.dim_value or d.dim_param or "?" for d in tensor.shape.dim] if tensor.HasField("shape") else []
    return f"{onnx.TensorProto.DataType.Name(tensor.elem_type).lower()} [{', '.join(map(str, dims))}]"
