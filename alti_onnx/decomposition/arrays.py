"""The array namespace the decomposition math runs on (issue 27): NumPy on the CPU, CuPy on a GPU, or
any library of the Python array API standard (array-api-strict in the tests, which refuses the
NumPy-only idioms a GPU library lacks).

The math is written once against ``xp = namespace(...)`` of its inputs (NumPy's own namespace, which
implements the standard; ``array_api_compat`` gives CuPy its names). What is not in the standard
lives here: moving arrays to the
host, the block weights in the namespace (converted once per block), and the distance kernel, which
is compiled per place (numba on the CPU, numba-cuda on the GPU).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
from array_api_compat import array_namespace, is_cupy_array, is_numpy_array

#: An array of any namespace (NumPy, CuPy, array-api-strict).
Array = Any


def namespace(*arrays: Array) -> ModuleType:
    """The standard namespace of ``arrays`` (plain Python scalars and None are ignored): NumPy itself for
    NumPy arrays (NumPy 2.1 and later implement the standard in their own namespace, and
    array-api-compat's wrappers cost a third of a short text's layer), array-api-compat's otherwise."""
    for array in arrays:  # the common case first, and fast: a short text's layer asks a dozen times
        if type(array) is not np.ndarray and array is not None and not isinstance(array, (int, float)):
            return array_namespace(*(a for a in arrays if a is not None and not isinstance(a, (int, float))))
    return np


def to_numpy(array: Array) -> np.ndarray:
    """``array`` on the host as a NumPy array: itself when it is one, else one copy (GPU) or a
    zero-copy view through DLPack (a CPU library)."""
    if type(array) is np.ndarray or is_numpy_array(array):
        return array
    if is_cupy_array(array):
        return array.get()
    return np.from_dlpack(array)


def contiguous(array: Array) -> Array:
    """``array`` in C order (a copy only when it is not): what the compiled kernels and BLAS read
    fastest. Libraries without a memory layout (array-api-strict) return it as it is."""
    if type(array) is np.ndarray or is_numpy_array(array):
        return np.ascontiguousarray(array)
    if is_cupy_array(array):
        import cupy

        return cupy.ascontiguousarray(array)
    return array


def dtype_in(xp: ModuleType, dtype: object) -> object:
    """NumPy's ``dtype`` (a type, a string, a dtype) as the namespace's dtype."""
    return getattr(xp, np.dtype(dtype).name)


def block_array(owner: object, name: str, xp: ModuleType, dtype: object, compute: Callable[[], np.ndarray]) -> Array:
    """A weight derived from ``owner`` (an attention block) in ``xp`` and ``dtype``, computed and moved
    once per owner, namespace and dtype: every example and batch reuses it (on a GPU, the copy to the
    device happens once). Entries leave with their owner."""
    key = (id(owner), name, xp.__name__, dtype)  # np.float32 and its dtype are two keys: a copy each, no harm
    cached = _CACHE.get(key)
    if cached is not None and cached[0]() is owner:
        return cached[1]
    value = xp.asarray(np.asarray(compute(), dtype=dtype))
    _CACHE[key] = (weakref.ref(owner), value)
    weakref.finalize(owner, _CACHE.pop, key, None)
    return value


#: (id(owner), name, namespace, dtype) -> (weak reference to the owner, array).
_CACHE: dict[tuple[int, str, str, object], tuple[weakref.ref, Array]] = {}


def manhattan_distances(probs: Array, vectors: Array, residual: Array, target: Array, first_row: int = 0) -> Array:
    """The S*S*D distance pass (``distances.manhattan_distances``) in the namespace of its inputs,
    returned as a new [rows, S_j] array there: the numba kernel on NumPy arrays, the numba-cuda
    kernel on CuPy arrays (on the device, nothing copied), and for any other library the CPU kernel
    on host views of its arrays."""
    xp = namespace(probs, vectors, residual, target)
    rows, columns = probs.shape[1], probs.shape[2]
    if is_cupy_array(probs):
        from .distances_cuda import manhattan_distances_cuda

        out = xp.empty((rows, columns), dtype=target.dtype)
        manhattan_distances_cuda(probs, vectors, residual, target, out, first_row)
        return out
    from .distances import manhattan_distances as on_cpu

    host = [np.ascontiguousarray(to_numpy(a)) for a in (probs, vectors, residual, target)]
    out = np.empty((rows, columns), dtype=host[3].dtype)
    on_cpu(*host, out, first_row)
    return out if is_numpy_array(probs) else xp.asarray(out)


def batch_manhattan_distances(probs: Array, vectors: Array, residual: Array, target: Array,
                              lengths: list[int]) -> Array:
    """``manhattan_distances`` of each example of a right-padded batch ([B, H, S, S], [B, S, H, D],
    [B, S, D], [B, S, D]) on its first ``lengths[b]`` tokens, as a new [B, S, S] array in the inputs'
    namespace: zero past each example's tokens. One compiled call on NumPy arrays; a kernel launch per
    example on CuPy arrays; any other library through host views."""
    xp = namespace(probs, vectors, residual, target)
    size = probs.shape[-1]
    if is_cupy_array(probs):
        out = xp.zeros((probs.shape[0], size, size), dtype=target.dtype)
        for b, n in enumerate(lengths):
            out[b, :n, :n] = manhattan_distances(probs[b, :, :n, :n], vectors[b, :n, ...], residual[b, :n, :],
                                                 target[b, :n, :])
        return out
    from .distances import batch_manhattan_distances as on_cpu

    host = [np.ascontiguousarray(to_numpy(a)) for a in (probs, vectors, residual, target)]
    out = np.zeros((probs.shape[0], size, size), dtype=host[3].dtype)
    on_cpu(*host, out, np.asarray(lengths, dtype=np.int64))
    return out if type(probs) is np.ndarray else xp.asarray(out)
