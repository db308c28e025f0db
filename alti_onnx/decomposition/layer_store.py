"""Each layer's contribution matrix, kept from the forward pass until the rollout of a few rows reads them.

Layers arrive first to last (as the model runs), but the attribution of a target position t is the
row vector e_t C^L C^(L-1) ... C^1, which is carried through the layers last to first, so every
layer's S x S matrix has to wait. L of them do not fit in memory at long lengths (30 layers of 8,192
tokens in float64 are 16 GB): past a budget they go to an unnamed temporary file (gone with the
process, even one killed with SIGKILL) and are read back in blocks of rows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import numpy as np

#: Matrices kept in memory up to this many bytes; beyond, in a temporary file.
MEMORY_BYTES = 1 << 30
#: Bytes read back from the file at a time.
READ_BYTES = 64 << 20


class LayerStore:
    """Append layers in order; ``rollout_rows`` multiplies row vectors through them in reverse."""

    def __init__(self, memory_bytes: int = MEMORY_BYTES):
        self.memory_bytes = memory_bytes
        self._held: list[np.ndarray] = []
        self._file = None
        self._shapes: list[tuple[int, int]] = []
        self._dtype: np.dtype | None = None

    def __len__(self) -> int:
        return len(self._shapes)

    @property
    def spilled(self) -> bool:
        """Whether the layers went to the temporary file."""
        return self._file is not None

    def append(self, matrix: np.ndarray) -> None:
        matrix = np.ascontiguousarray(matrix)
        self._dtype = matrix.dtype
        self._shapes.append(matrix.shape)
        if self._file is None and sum(m.nbytes for m in self._held) + matrix.nbytes > self.memory_bytes:
            self._file = tempfile.TemporaryFile(prefix="alti-onnx-layers-")
            for held in self._held:
                held.tofile(self._file)
            self._held.clear()
        if self._file is not None:
            matrix.tofile(self._file)
        else:
            self._held.append(matrix)

    def rollout_rows(self, positions: Sequence[int]) -> np.ndarray:
        """Rows ``positions`` of C^L ... C^1 (the final rollout), [len(positions), S], float64."""
        if not self._shapes:
            raise ValueError("no layers stored")
        size = self._shapes[0][1]
        rows = np.zeros((len(positions), size))
        rows[np.arange(len(positions)), list(positions)] = 1.0
        return self.rollout_of(rows)

    def rollout_of(self, rows: np.ndarray) -> np.ndarray:
        """Row vectors [n, S] times C^L ... C^1: any weighting of the final rollout's rows (the mean row)."""
        if not self._shapes:
            raise ValueError("no layers stored")
        rows = np.asarray(rows, dtype=np.float64)
        for layer in range(len(self._shapes) - 1, -1, -1):
            rows = self._times_layer(rows, layer)
        return rows

    def times_layer(self, rows: np.ndarray, layer: int) -> np.ndarray:
        """Row vectors [n, S] times layer ``layer``'s matrix C^l."""
        return self._times_layer(np.asarray(rows, dtype=np.float64), layer)

    def _times_layer(self, rows: np.ndarray, layer: int) -> np.ndarray:
        if self._file is None:
            return rows @ self._held[layer]
        height, width = self._shapes[layer]
        itemsize = self._dtype.itemsize
        offset = sum(h * w for h, w in self._shapes[:layer]) * itemsize
        step = max(1, READ_BYTES // (width * itemsize))
        result = np.zeros((len(rows), width))
        for start in range(0, height, step):
            stop = min(start + step, height)
            self._file.seek(offset + start * width * itemsize)
            block = np.fromfile(self._file, dtype=self._dtype, count=(stop - start) * width).reshape(stop - start, width)
            result += rows[:, start:stop] @ block
        return result

    def close(self) -> None:
        self._held.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> LayerStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
