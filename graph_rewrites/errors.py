"""Errors raised while loading, analysing or rewriting an ONNX graph.

Each carries a one-line message meant for the person who supplied the graph.
"""

from __future__ import annotations


class GraphRewriteError(Exception):
    """Base class: something about the supplied ONNX model prevents the rewrite."""


class ModelLoadError(GraphRewriteError):
    """The file is missing, is not ONNX, is truncated, or its external data is missing."""


class PatternNotFoundError(GraphRewriteError):
    """No attention block matched; the message names the pattern step that failed and where."""

    def __init__(self, step: str, where: str, detail: str):
        self.step = step
        self.where = where
        self.detail = detail
        super().__init__(f"no attention block found: step '{step}' failed at {where}: {detail}")


class QuantizedWeightsError(GraphRewriteError):
    """A weight the decomposition needs is stored quantized (int8/uint8), not as floats."""


class KVCacheExportError(GraphRewriteError):
    """A merged decoder export whose attention sits in If branches (KV cache or not): not explainable."""


class UnmatchedAttentionError(GraphRewriteError):
    """A Softmax looks like attention but does not complete the block pattern: explaining the
    blocks that did match would silently leave a layer out, so the model is refused."""

    def __init__(self, step: str, where: str, detail: str, matched: int, missed: int):
        self.step, self.where, self.detail = step, where, detail
        others = f"{missed - 1} more like it, " if missed > 1 else ""
        super().__init__(
            f"{where} looks like attention but is not a block the explanation can read: step '{step}' failed: "
            f"{detail} ({others}{matched} block(s) matched; explaining those alone would leave layers out)"
        )
