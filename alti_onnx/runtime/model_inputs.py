"""Which graph input is which (token ids, attention mask, segment ids, positions), in the dtype the graph declares.

Exporters name and type the same inputs differently: optimum ``input_ids`` / ``attention_mask``
(int64), Keras 3 ``token_ids`` / ``padding_mask`` / ``segment_ids`` (int32), TF-Hub BERT
``input_word_ids`` / ``input_mask`` / ``input_type_ids``, jax2onnx ``in_0``, ``in_1`` unless told. A
role is read from the name (the aliases below, case and a ``:0`` suffix ignored) or given
explicitly (``input_map={"in_1": "mask"}``, ``--input-map in_1=mask``); each array is cast to the
dtype its input declares. KV-cache inputs are the runtime's business, not a role.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from alti_onnx.errors import InputError

from .text_inputs import Batch

#: role -> the input names exporters use for it (lower case).
ALIASES: dict[str, tuple[str, ...]] = {
    "ids": ("input_ids", "token_ids", "input_word_ids", "word_ids", "ids", "tokens", "token_ids_input"),
    "mask": ("attention_mask", "padding_mask", "input_mask", "mask", "attn_mask"),
    "segment": ("token_type_ids", "segment_ids", "input_type_ids", "type_ids", "segment_ids_input"),
    "positions": ("position_ids", "positions", "position_index"),
}
ROLES = tuple(ALIASES)

#: ONNX element types (TensorProto.DataType, fixed by the ONNX spec) a graph input can have, as NumPy
#: dtypes; spelled as numbers so that reading a prepared model needs no onnx import.
ELEMENT_TYPES: dict[int, tuple[str, type]] = {
    1: ("float", np.float32), 2: ("uint8", np.uint8), 3: ("int8", np.int8), 5: ("int16", np.int16),
    6: ("int32", np.int32), 7: ("int64", np.int64), 9: ("bool", np.bool_), 10: ("float16", np.float16),
    11: ("double", np.float64),
}
_TOKEN_TYPES = frozenset(ELEMENT_TYPES)
#: The float element types (a KV cache, an encoder's output) and the integer ones token ids and masks
#: usually have, as NumPy dtypes: views of the one table above.
FLOAT_TYPES: dict[int, type] = {k: dtype for k, (_, dtype) in ELEMENT_TYPES.items() if np.issubdtype(dtype, np.floating)}
INTEGER_TYPES: dict[int, type] = {k: dtype for k, (_, dtype) in ELEMENT_TYPES.items() if dtype in (np.int32, np.int64)}


@dataclass(frozen=True)
class DeclaredInput:
    """A graph input as the graph declares it: its name, ONNX element type and dims (a size, a
    symbolic name, or None when unknown; ``dims`` None when even the rank is unknown)."""

    name: str
    elem_type: int
    dims: tuple[int | str | None, ...] | None

    def describe(self) -> str:
        type_name = ELEMENT_TYPES.get(self.elem_type, (f"type {self.elem_type}", None))[0]
        return f"{type_name} [{', '.join('?' if d is None else str(d) for d in self.dims or ())}]"


@dataclass(frozen=True)
class GraphInput:
    """One graph input the model is fed: its name, role and element type."""

    name: str
    role: str
    dtype: type


def declared_inputs(model) -> list[DeclaredInput]:
    """The inputs a caller feeds (an onnx.ModelProto's graph inputs that are not also initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    found = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim) \
            if tensor.HasField("shape") else None
        found.append(DeclaredInput(value.name, tensor.elem_type, dims))
    return found


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

    def __init__(self, graph_inputs: Iterable[DeclaredInput], input_map: Mapping[str, str] | None = None,
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
                    f"cannot tell what graph input {name!r} ({value.describe()}) is: name its role with "
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
    def ids_name(self) -> str:
        """The graph input that takes the token ids."""
        return next(i.name for i in self.inputs if i.role == "ids")

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


def _check_map(input_map: Mapping[str, str], declared: Mapping[str, DeclaredInput]) -> None:
    for name, role in input_map.items():
        if role not in ROLES:
            raise InputError(f"unknown input role {role!r} for {name!r}; roles are {', '.join(ROLES)}")
        if name not in declared:
            raise InputError(f"the model has no input {name!r} (its inputs: {', '.join(declared) or 'none'})")


def _role_from_name(name: str) -> str | None:
    """The role a graph input's name tells, TensorFlow's naming of a signature's positional
    arguments (``args_0_token_ids``: Keras's export with an ``input_signature``) left out."""
    key = re.sub(r"^args_\d+_", "", name.lower().split(":")[0])
    return next((role for role, names in ALIASES.items() if key in names), None)


def _dtype(value: DeclaredInput) -> type:
    if value.elem_type not in _TOKEN_TYPES:
        raise InputError(f"graph input {value.name!r} has element type {value.describe().split(' [')[0]}, "
                         "not one a token input can have")
    return ELEMENT_TYPES[value.elem_type][1]
