"""User-facing errors: each has a one-line message; the CLI prints it and exits with code 2."""

from __future__ import annotations

from graph_rewrites.errors import GraphRewriteError


class AltiOnnxError(Exception):
    """Base class of errors caused by the user's model, files or input."""


class ModelPathError(AltiOnnxError):
    """The model path does not exist or does not hold a model."""


class MissingTokenizerError(AltiOnnxError):
    """No tokenizer.json was given or found next to the model."""


class InputError(AltiOnnxError):
    """The text cannot be explained: empty, or longer than the model's positions."""


class TokenizerMismatchError(MissingTokenizerError):
    """The tokenizer's ids do not fit the model's token embedding: it belongs to another model."""


class SelfCheckError(AltiOnnxError):
    """The decomposition does not reproduce the model's own block output."""


class NonFiniteError(SelfCheckError):
    """The model produced NaN or Inf for this text: nothing about it can be explained."""


class OutputPathError(AltiOnnxError):
    """An output file (instrumented model, JSON) cannot be written."""


class LayerCountError(AltiOnnxError):
    """config.json's number of layers differs from the attention blocks found in the graph."""


class LinearizationError(AltiOnnxError):
    """The model's output cannot be read as a sum of parts through its graph (an operator with no
    linear reading at the forward pass's point, or one the decomposition does not know)."""


class RuntimeFailure(AltiOnnxError):
    """onnxruntime refused the model or failed while running it."""


#: Everything the CLI turns into a one-line error and exit code 2.
class ModelWarning(UserWarning):
    """Something about the model's files that does not stop an explanation but may surprise (a stale
    special-token id in config.json); the CLI prints it as one 'warning:' line."""


USER_ERRORS: tuple[type[Exception], ...] = (AltiOnnxError, GraphRewriteError)
