"""What the model predicts, read from its ``logits`` output: a sequence classifier's class, or a
causal language model's next token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from alti_onnx.errors import NonFiniteError


@dataclass(frozen=True)
class Prediction:
    """The predicted class (or next token): its index (token id), label (token text) and softmax probability."""

    index: int
    label: str
    probability: float
    probabilities: np.ndarray


def class_labels(config: dict) -> list[str] | None:
    """Labels by class index from config.json's id2label, or None when there are none."""
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        return None
    return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


def _finite_logits(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if not np.all(np.isfinite(logits)):
        raise NonFiniteError("the model's logits hold NaN or Inf: there is no prediction to explain")
    return logits


def classify(outputs: dict[str, np.ndarray], labels: list[str] | None) -> Prediction | None:
    """The prediction of a model with a [C] ``logits`` output for one example; None otherwise."""
    logits = outputs.get("logits")
    if logits is None or np.ndim(logits) != 1:
        return None
    probabilities = softmax(_finite_logits(logits))
    index = int(probabilities.argmax())
    label = labels[index] if labels and index < len(labels) else str(index)
    return Prediction(index, label, float(probabilities[index]), probabilities)


def next_token(outputs: dict[str, np.ndarray], position: int, decode: Callable[[int], str]) -> Prediction | None:
    """The most likely token after ``position`` for one example of a [S, V] ``logits`` output; None otherwise."""
    logits = outputs.get("logits")
    if logits is None or np.ndim(logits) != 2:
        return None
    probabilities = softmax(_finite_logits(logits[position]))
    index = int(probabilities.argmax())
    return Prediction(index, decode(index), float(probabilities[index]), probabilities)
