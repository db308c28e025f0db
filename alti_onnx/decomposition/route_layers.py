"""One example's layers as ``routes.trace`` reads them: each layer's block tensors kept from the
forward pass until the trace, from the last layer down, asks for the rows it needs.

The attention probabilities are the bulk (H x S x S a layer: 1.1 GB for SmolLM2's 30 layers at
1,024 tokens); past a budget they go to an unnamed temporary file (gone with the process) and only
the rows the trace asks for are read back, so the routes of a long prompt cost little more memory
than its forward pass.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np

from alti_onnx.errors import SelfCheckError
from graph_rewrites import AttentionBlock

from .block_kinds import kind_of
from .components import AttentionComponents, attention_components, ffn_components, post_norm_ffn_components

#: Attention probabilities kept in memory up to this many bytes per example; beyond, in a temporary file.
MEMORY_BYTES = 256 << 20
#: Block kinds whose stream holds the feed-forward block's input and output (x^{l+1} = y + f).
FFN_KINDS = frozenset({"pre", "sandwich", "parallel"})


class ProbsStore:
    """Each layer's attention [H, S, S], appended in order, read back by receiving rows."""

    def __init__(self, memory_bytes: int = MEMORY_BYTES):
        self.memory_bytes = memory_bytes
        self._held: list[np.ndarray | None] = []  # as the run gave them (no copy when contiguous)
        self._offsets: list[int] = []
        self._shapes: list[tuple[int, int, int]] = []
        self._file = None
        self._held_bytes = 0

    def append(self, probs: np.ndarray) -> None:
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        self._shapes.append(probs.shape)
        if self._file is None and self._held_bytes + probs.nbytes > self.memory_bytes:
            self._file = tempfile.TemporaryFile(prefix="alti-onnx-routes-")
        if self._file is None:
            self._held.append(probs)
            self._offsets.append(-1)
            self._held_bytes += probs.nbytes
        else:
            self._offsets.append(self._file.seek(0, os.SEEK_END))
            self._file.write(probs.data)  # the array's own buffer: no copy
            self._held.append(None)

    def rows(self, layer: int, rows: np.ndarray) -> np.ndarray:
        """[H, R, S]: the attention of the receiving positions ``rows`` in ``layer``."""
        rows = np.asarray(rows, dtype=np.intp)
        held = self._held[layer]
        if held is not None:
            return held[:, rows]
        heads, size, sources = self._shapes[layer]
        self._file.flush()
        start = self._offsets[layer]
        if len(rows) * 8 > size:  # many rows: the layer in one read
            return self._read(start, heads * size * sources).reshape(heads, size, sources)[:, rows]
        out = np.empty((heads, len(rows), sources), dtype=np.float32)
        row_bytes = sources * 4
        for h in range(heads):
            for k, row in enumerate(rows.tolist()):
                out[h, k] = self._read(start + (h * size + row) * row_bytes, sources)
        return out

    def _read(self, offset: int, count: int) -> np.ndarray:
        """``count`` float32 values from the file at ``offset`` (a read returns at most about 2 GB)."""
        out = np.empty(count, dtype=np.float32)
        view, done = memoryview(out).cast("B"), 0
        while done < len(view):
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise OSError("the routes' temporary file ended early")
            done += got
        return out

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class PostNorm:
    """A post-LN layer's feed-forward sum u = y + f ([S, D], one example) and the norm after it."""

    total: np.ndarray
    scale: np.ndarray
    bias: np.ndarray | None
    epsilon: float


class BlockRoutes:
    """One layer of one example (unpadded): a ``routes.RouteLayer``. ``next_input`` is the stream
    after the layer (the next layer's input), at every position or, for the last layer, at the
    positions ``next_positions`` only (the decoder's head gives the final residual there); None
    where the feed-forward block is not split out. A post-LN layer's needs ``post_norm`` too."""

    def __init__(self, block: AttentionBlock, store: ProbsStore, layer: int, values: np.ndarray,
                 residual: np.ndarray, output: np.ndarray, next_input: np.ndarray | None = None,
                 next_positions: np.ndarray | None = None, post_norm: PostNorm | None = None):
        self.block, self.store, self.layer = block, store, layer
        self.values, self.residual, self.output = values, residual, output
        self.next_input, self.next_positions = next_input, next_positions
        self.post_norm = post_norm
        split = block.kind in FFN_KINDS or (block.kind == "post" and post_norm is not None)
        self.has_ffn = split and next_input is not None

    def stream_after_attention(self, rows: np.ndarray) -> np.ndarray:
        """y at ``rows``: the stream after the attention block (for a parallel block, x + a)."""
        return kind_of(self.block).model_output(self.block, np.asarray(self.output[rows], dtype=np.float64),
                                                np.asarray(self.residual[rows], dtype=np.float64))

    def stream_after(self, rows: np.ndarray) -> np.ndarray:
        """The stream after the whole layer at ``rows`` (requires ``next_input`` there)."""
        if self.next_positions is None:
            return np.asarray(self.next_input[rows], dtype=np.float64)
        where = {int(p): k for k, p in enumerate(self.next_positions)}
        missing = [int(r) for r in rows if int(r) not in where]
        if missing:
            raise ValueError(f"the stream after layer {self.layer} is known at {list(where)} only, not {missing}")
        return np.asarray(self.next_input[[where[int(r)] for r in rows]], dtype=np.float64)

    #: the self-check's tolerance (relative to max(1, |y|)), or None for no check: set by the caller
    tolerance: float | None = None

    def attention(self, rows: np.ndarray) -> AttentionComponents:
        return self.checked(attention_components(self.block, self.store.rows(self.layer, rows), self.values,
                                                 self.residual[rows], self.output[rows]), "attention")

    def checked(self, found: AttentionComponents, what: str) -> AttentionComponents:
        """``found``, once its parts rebuild the model's block output within the tolerance (as ALTI's
        self-check: the routes alone run no ALTI to check the blocks)."""
        limit = None if self.tolerance is None else self.tolerance * max(1.0, found.output_scale)
        if limit is not None and not found.reconstruction_error <= limit:
            raise SelfCheckError(f"self-check failed: layer {self.layer}'s {what} rebuilt from its parts differs from "
                                 f"the model's block output by {found.reconstruction_error:.3g} (tolerance "
                                 f"{limit:.3g}): the graph is not what the block description says")
        return found

    def ffn(self, rows: np.ndarray) -> np.ndarray:
        if self.post_norm is not None:
            norm = self.post_norm
            return post_norm_ffn_components(self.stream_after_attention(rows), norm.total[rows], norm.scale, norm.bias,
                                            norm.epsilon)
        return ffn_components(self.stream_after_attention(rows), self.stream_after(rows))


class DecoderLayerRoutes(BlockRoutes):
    """A decoder layer of an encoder-decoder: its self-attention (``BlockRoutes``), then a
    cross-attention over the encoder's positions (``cross_block``, its attention kept in
    ``cross_store``), whose output is the feed-forward block's input."""

    def __init__(self, routes: BlockRoutes, cross_block: AttentionBlock, cross_store: ProbsStore,
                 values: np.ndarray, residual: np.ndarray, output: np.ndarray):
        super().__init__(routes.block, routes.store, routes.layer, routes.values, routes.residual, routes.output,
                         routes.next_input, routes.next_positions, routes.post_norm)
        self.cross_block, self.cross_store = cross_block, cross_store
        self.cross_values, self.cross_residual, self.cross_output = values, residual, output
        if cross_block.kind not in FFN_KINDS and routes.post_norm is None:
            self.has_ffn = False

    def cross(self, rows: np.ndarray) -> AttentionComponents:
        return self.checked(attention_components(self.cross_block, self.cross_store.rows(self.layer, rows),
                                                 self.cross_values, self.cross_residual[rows], self.cross_output[rows]),
                            "cross-attention")

    def stream_after_attention(self, rows: np.ndarray) -> np.ndarray:
        """The stream after the layer's attention blocks, which its feed-forward block reads: the
        cross-attention's output."""
        return kind_of(self.cross_block).model_output(
            self.cross_block, np.asarray(self.cross_output[rows], dtype=np.float64),
            np.asarray(self.cross_residual[rows], dtype=np.float64))
