"""Loading ONNX files (inline or external weights) with errors a user can act on."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from .errors import ModelLoadError
from .paths import require_model_file


def load_model(path: str | Path, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX model; external data files are resolved relative to the model.

    The graph is read first and the weights after, so that a missing or unreadable external
    data file is reported by name instead of as onnx's checker error about "regular files".
    """
    path = require_model_file(path)
    try:
        # binary protobuf whatever the name: onnx would read "config.json" or "m.textproto" as text formats
        model = onnx.load(str(path), format="protobuf", load_external_data=False)
    except DecodeError as exc:
        raise ModelLoadError(f"{path} is not a valid ONNX model (truncated or not ONNX): {exc}") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path} could not be loaded as ONNX: {exc}") from None
    if len(model.graph.node) == 0:
        raise ModelLoadError(f"{path} is not a valid ONNX model: its graph has no nodes")
    _check_tensor_sizes(model, path)
    _check_external_data(model, path)
    if load_weights:
        _load_external_weights(model, path)
    return model


def _check_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Every external data file the model names is beside it, and long enough for each tensor it
    holds: else a ModelLoadError naming it (also when the weights are left on disk, where the
    failure would otherwise come later, from deep inside whatever reads them first)."""
    locations = external_data_files(model)
    missing = [loc for loc in locations if not (path.parent / loc).is_file()]
    if missing:
        raise ModelLoadError(
            f"external weights of {path} are missing: expected {', '.join(missing)} in {path.parent} "
            "(copy the .data file saved with the model next to it)"
        )
    sizes = {loc: (path.parent / loc).stat().st_size for loc in locations}
    for tensor in _tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        itemsize = _itemsize(tensor.data_type)
        count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
        length = info.length if info.length else (None if itemsize is None else count * itemsize)
        end = (info.offset or 0) + (length or 0)
        if end > sizes[info.location]:
            raise ModelLoadError(
                f"external weights of {path} could not be read ({info.location}): tensor {tensor.name!r} ends at "
                f"byte {end} of a {sizes[info.location]}-byte file (truncated?)"
            )


def _check_tensor_sizes(model: onnx.ModelProto, path: Path) -> None:
    """Every weight stored in the file holds as many numbers as its shape says (a damaged file can
    keep a valid protobuf structure with a short tensor, which fails later, deep inside analysis)."""
    for tensor in _tensors(model.graph):
        if uses_external_data(tensor) or tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            continue
        count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
        if tensor.HasField("raw_data"):
            itemsize = _itemsize(tensor.data_type)
            held, needed = len(tensor.raw_data), None if itemsize is None else count * itemsize
        else:
            field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
            held, needed = len(getattr(tensor, field)), count
            if tensor.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
                needed = 2 * count
        if needed is not None and held != needed and not (held == 0 and count == 0):
            unit = "bytes" if tensor.HasField("raw_data") else "numbers"
            raise ModelLoadError(
                f"{path} is damaged: its tensor {tensor.name!r} holds {held} {unit} where its shape "
                f"{list(tensor.dims)} needs {needed}"
            )


def _itemsize(data_type: int) -> int | None:
    """Bytes per element of an ONNX element type (None: sub-byte or unknown)."""
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    except (KeyError, ValueError, TypeError):
        return None
    if data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4) or getattr(onnx.TensorProto, "FLOAT4E2M1", -1) == data_type:
        return None
    return np.dtype(dtype).itemsize


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """The external data locations the model's tensors refer to (relative to the model), in order."""
    locations = (ExternalDataInfo(t).location for t in _tensors(model.graph) if uses_external_data(t))
    return list(dict.fromkeys(locations))


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph``: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _load_external_weights(model: onnx.ModelProto, path: Path) -> None:
    """Read the weights kept beside ``path`` into ``model``; a missing or short file is a ModelLoadError."""
    locations = external_data_files(model)
    if not locations:
        return
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(f"external weights of {path} could not be read ({', '.join(locations)}): {exc}") from None


#: Protobuf's limit on one serialized message; larger models keep their weights beside the file.
_INLINE_LIMIT = 1_800_000_000


def save_model(model: onnx.ModelProto, path: str | Path, base_dir: str | Path | None = None) -> None:
    """Save a model. Weights stay inline when they are and fit; a model whose weights are external
    data (read from ``base_dir``, its folder) or would not fit gets them in ``<name>.data`` beside it.

    External weights are streamed from the files they are in (memory-mapped by onnx-ir) into the new
    one, never all held in memory, and the pair is written under temporary names first, so that
    saving over the model being read, or an interruption, cannot leave a damaged pair.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not external_data_files(model) and model.ByteSize() <= _INLINE_LIMIT:
        onnx.save(model, str(path))
        return
    copy = ir.from_proto(model)
    if base_dir is not None:
        ir.external_data.set_base_dir(copy.graph, str(base_dir))
    data = f"{path.name}.data"
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        ir.save(copy, work / path.name, external_data=data)
        os.replace(work / data, path.parent / data)
        os.replace(work / path.name, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


class SharedWeights:
    """One external data file for the initializers of several models, each stored once (by name).

    Models split from one graph (``split_model``) share weights: a tied embedding is read by the
    first segment and by the head. Stored once and page-aligned, onnxruntime maps them from the
    file instead of parsing and copying them out of each model's protobuf: every segment starts
    fast and a weight read by two segments is held once.
    """

    #: Initializers smaller than this stay inline (shapes, scalars).
    MIN_BYTES = 1024
    ALIGNMENT = 4096

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = open(self.path, "wb")
        self._placed: dict[str, tuple[int, int]] = {}

    def externalize(self, model: onnx.ModelProto) -> None:
        """Move ``model``'s large inline initializers into the file (in place), referring to it by name."""
        for tensor in model.graph.initializer:
            if uses_external_data(tensor):
                continue
            data = tensor.raw_data if tensor.HasField("raw_data") else None
            if data is None:
                if _itemsize(tensor.data_type) is None:
                    continue
                data = numpy_helper.to_array(tensor).tobytes()
            if len(data) < self.MIN_BYTES:
                continue
            if tensor.name not in self._placed:
                offset = -(-self._handle.tell() // self.ALIGNMENT) * self.ALIGNMENT
                self._handle.seek(offset)
                self._handle.write(data)
                self._placed[tensor.name] = (offset, len(data))
            offset, length = self._placed[tensor.name]
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                tensor.ClearField(field)
            del tensor.external_data[:]
            for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
                tensor.external_data.add(key=key, value=value)
            tensor.data_location = onnx.TensorProto.EXTERNAL

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> SharedWeights:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
