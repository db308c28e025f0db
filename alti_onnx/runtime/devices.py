"""Where the model runs and where its decomposition is computed: ``device="cpu"|"cuda"|"auto"`` (issue 27).

- ``cpu``: onnxruntime's CPU provider, the math in NumPy; nothing here touches the arrays.
- ``cuda``: the math in CuPy, the distance pass as a numba-cuda kernel. With onnxruntime's CUDA
  provider (onnxruntime-gpu) the segments run on the GPU and leave their outputs there (IO binding):
  the block tensors reach CuPy through DLPack, never through the host. Without it (an onnxruntime
  CPU build beside CuPy) the forward runs on the CPU and each block tensor is copied to the GPU once.
- ``auto``: ``cuda`` where CuPy finds a GPU, else ``cpu``; onnxruntime's provider as
  ``default_providers`` picks it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from alti_onnx.errors import InputError, RuntimeFailure

T = TypeVar("T")

DEVICES = ("auto", "cpu", "cuda")


def default_providers() -> list[str]:
    """CUDA when onnxruntime has it and the machine has an NVIDIA driver, else CPU."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available and os.path.exists("/proc/driver/nvidia/version"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass(frozen=True)
class Device:
    """``name`` as the user gave it resolved ("cpu" or "cuda"); ``xp`` the array namespace the math runs
    in; ``providers`` onnxruntime's; ``bound_outputs`` where IO binding leaves each segment's outputs
    ("cuda", "cpu"), or None for plain ``session.run`` (NumPy outputs)."""

    name: str
    xp: ModuleType
    providers: list[str]
    bound_outputs: str | None = None

    @property
    def on_host(self) -> bool:
        """Whether the math's arrays are the run's NumPy arrays (nothing to move)."""
        return self.xp is np and self.bound_outputs is None

    def to_math(self, value: Any) -> Any:
        """A tensor of the run (NumPy, or an OrtValue from IO binding) as an array of ``xp``: a DLPack
        view where it already lies on the device the math uses, else one copy."""
        if self.xp is np:
            return value if isinstance(value, np.ndarray) else np.from_dlpack(value)
        if isinstance(value, np.ndarray) or _on_cpu(value):
            return self.xp.asarray(value if isinstance(value, np.ndarray) else np.from_dlpack(value))
        return self.xp.from_dlpack(value)


def on_device(compute: Callable[[], T]) -> T:
    """``compute()``, with what the GPU's libraries raise (CuPy's out-of-memory and CUDA errors, numba-cuda's
    launch and compile errors, an NVRTC or PTX mismatch) as one RuntimeFailure line; our own errors pass."""
    try:
        return compute()
    except Exception as exc:  # noqa: BLE001 - sorted by where the exception type comes from
        if type(exc).__module__.split(".")[0] not in ("cupy", "cupy_backends", "numba", "cuda"):
            raise
        text = str(exc).strip().splitlines()
        raise RuntimeFailure(f"the GPU failed ({type(exc).__name__}): {text[0] if text else 'no message'}; "
                             "--device cpu runs the same math on the CPU") from None


def host(value: Any) -> np.ndarray:
    """A tensor of the run as a NumPy array: itself, a view of an OrtValue on the CPU, or one copy
    from the GPU."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, ort.OrtValue):
        return np.from_dlpack(value) if _on_cpu(value) else value.numpy()
    from alti_onnx.decomposition.arrays import to_numpy

    return to_numpy(value)


def _on_cpu(value: Any) -> bool:
    return isinstance(value, ort.OrtValue) and value.device_name().lower() == "cpu"


def resolve_device(device: str | Device | None = "auto", providers: list[str] | None = None) -> Device:
    """The ``Device`` for what the caller asked (a name, or a ``Device`` itself); ``providers``, when
    given, are onnxruntime's whatever the device. ``cuda`` where no GPU is usable is one InputError line."""
    if isinstance(device, Device):
        return device if providers is None else Device(device.name, device.xp, list(providers), device.bound_outputs)
    name = "auto" if device is None else device
    if name not in DEVICES:
        raise InputError(f"the device must be one of {', '.join(DEVICES)}, got {name!r}")
    cupy, why = _cupy()
    if name == "cpu" or (name == "auto" and cupy is None):
        chosen = list(providers) if providers else (["CPUExecutionProvider"] if name == "cpu" else default_providers())
        return Device("cpu", np, chosen)
    if cupy is None:
        raise InputError(f"--device cuda (device='cuda') needs a CUDA GPU, and none is usable here: {why}; "
                         "use --device cpu or auto")
    chosen = list(providers) if providers else default_providers()
    on_gpu = chosen[0] == "CUDAExecutionProvider"
    return Device("cuda", cupy, chosen, "cuda" if on_gpu else None)


def _cupy() -> tuple[ModuleType | None, str]:
    """CuPy and numba-cuda where both see a GPU, else None and why not (in words)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return None, "numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1)"
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed (pip install cupy-cuda12x or cupy-cuda13x)"
    except Exception as exc:  # noqa: BLE001 - a broken CUDA install raises many types
        return None, f"CuPy does not load ({_first_line(exc)})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        return None, f"CuPy finds no GPU ({_first_line(exc)})"
    if count == 0:
        return None, "CuPy finds no GPU"
    try:  # one small computation each: a missing NVRTC or a PTX the driver refuses shows here, not mid-run
        if float((cupy.arange(4, dtype=cupy.float64) * 2).sum()) != 12.0:
            return None, "CuPy computes wrong sums"
    except Exception as exc:  # noqa: BLE001
        return None, f"CuPy cannot compute ({_first_line(exc)})"
    try:
        from numba import cuda

        if not cuda.is_available():
            return None, "numba-cuda finds no GPU"
        from alti_onnx.decomposition.distances_cuda import manhattan_distances_cuda

        out = np.zeros((1, 1), dtype=np.float32)
        ones = np.ones((1, 1, 1), dtype=np.float32)
        manhattan_distances_cuda(ones, ones, np.zeros((1, 1), np.float32), np.full((1, 1), 3, np.float32), out, 0)
        if out[0, 0] != 2.0:
            return None, "numba-cuda's distance kernel computes wrong numbers"
    except Exception as exc:  # noqa: BLE001
        return None, f"numba-cuda cannot run the distance kernel ({_first_line(exc)})"
    return cupy, ""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
