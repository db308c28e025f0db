"""onnxruntime sessions over the instrumented model: run once, get outputs and block tensors."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from graph_rewrites import AttentionBlock, instrument

from .errors import RuntimeFailure
from .model_inputs import ModelInputs
from .text_inputs import Batch


def default_providers() -> list[str]:
    """CUDA when onnxruntime has it and the machine has an NVIDIA driver, else CPU."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and os.path.exists("/proc/driver/nvidia/version"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options() -> ort.SessionOptions:
    """How every onnxruntime session of the package runs a model."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: failures reach the user as one RuntimeFailure line
    # onnxruntime's workers otherwise spin after each run, taking the cores NumPy needs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Weight-only int8 (DequantizeLinear -> MatMul) is fused into MatMulNBits, by default computing with
    # int8-rounded activations (accuracy level 4): the model would no longer be the float function its
    # graph states, and the decomposition would miss by ~1e-3. Level 1 keeps the fusion, in float32.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return options


@dataclass(frozen=True)
class BlockTensors:
    """One block's run-time tensors for a batch (float arrays straight from onnxruntime)."""

    probs: np.ndarray
    values: np.ndarray
    residual: np.ndarray
    output: np.ndarray


def block_tensors(probs: np.ndarray, values: np.ndarray, residual: np.ndarray, output: np.ndarray) -> BlockTensors:
    """One block's tensors, widened to at least float32, with heads on their own axis: a block that
    folds its heads into the batch axis ([B*H, S, S], [B*H_kv, S, dh]) is read as [B, H, S, S], [B, H_kv, S, dh]."""
    batch = residual.shape[0]
    if probs.ndim == 3:
        probs = probs.reshape(batch, -1, *probs.shape[1:])
    if values.ndim == 3:
        values = values.reshape(batch, -1, *values.shape[1:])
    return BlockTensors(_widen(probs), _widen(values), _widen(residual), _widen(output))


class InstrumentedSession:
    """An onnxruntime session whose outputs include every block's intermediates."""

    def __init__(
        self,
        model: onnx.ModelProto,
        blocks: list[AttentionBlock],
        providers: list[str] | None = None,
        input_map: dict[str, str] | None = None,
    ):
        self.blocks = blocks
        self.original_outputs = [o.name for o in model.graph.output]
        self.cache_inputs = _cache_inputs(model)
        self.inputs = ModelInputs(model, input_map, skip=self.cache_inputs)
        instrumented = instrument(model, blocks)
        self.output_names = [o.name for o in instrumented.graph.output]
        providers = providers or default_providers()
        known = ort.get_all_providers()
        unknown = [p for p in providers if (p[0] if isinstance(p, tuple) else p) not in known]
        if unknown:
            raise RuntimeFailure(
                f"unknown onnxruntime provider {unknown[0]!r}; this onnxruntime has {', '.join(ort.get_available_providers())}"
            )
        try:
            self.session = ort.InferenceSession(instrumented.SerializeToString(), session_options(), providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise RuntimeFailure(f"onnxruntime could not load the model: {_first_line(exc)}") from None

    def run(self, batch: Batch) -> tuple[dict[str, np.ndarray], list[BlockTensors]]:
        """The model's own outputs by name, and each block's tensors in layer order."""
        feeds = self.inputs.feeds(batch)
        feeds.update(self.empty_cache(len(batch.input_ids)))
        try:
            results = self.session.run(self.output_names, feeds)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeFailure(f"onnxruntime failed to run the model: {_first_line(exc)}") from None
        by_name = dict(zip(self.output_names, results))
        outputs = {name: by_name[name] for name in self.original_outputs}
        tensors = [block_tensors(*(by_name[name] for name in b.tensor_names())) for b in self.blocks]
        return outputs, tensors


    def empty_cache(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zero-length past keys/values for a KV-cache export, so it runs on the full sequence."""
        return {
            name: np.zeros((batch_size, heads, 0, head_size), dtype=dtype)
            for name, (heads, head_size, dtype) in self.cache_inputs.items()
        }


#: ONNX element types a KV cache is stored in.
_FLOAT_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.DOUBLE: np.float64}


def _cache_inputs(model: onnx.ModelProto) -> dict[str, tuple[int, int, type]]:
    """Graph inputs that are a KV cache: float [batch, heads, past_length, head_size], fixed heads and size.

    Recognised by type and shape, not name: token inputs are integer, and a float rank-4 input of
    a text model can only be past keys or values.
    """
    found = {}
    for value in model.graph.input:
        tensor = value.type.tensor_type
        dims = list(tensor.shape.dim) if tensor.HasField("shape") else []
        if tensor.elem_type not in _FLOAT_TYPES or len(dims) != 4:
            continue
        if not (dims[1].HasField("dim_value") and dims[3].HasField("dim_value")):
            raise RuntimeFailure(
                f"input {value.name!r} looks like a KV cache with unknown head count or size; export the model "
                "without past (alti-onnx export HF_DIR OUT --task text-generation)"
            )
        found[value.name] = (dims[1].dim_value, dims[3].dim_value, _FLOAT_TYPES[tensor.elem_type])
    return found


def _widen(array: np.ndarray) -> np.ndarray:
    """Half-precision block tensors are read as they ran and computed on in float32."""
    return array.astype(np.float32) if array.dtype in (np.float16,) else array


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
