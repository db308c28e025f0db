"""What a sequence classifier predicts, read from its ``logits`` output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Prediction:
    """The predicted class: its index, its label and its softmax probability."""

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


def classify(outputs: dict[str, np.ndarray], labels: list[str] | None) -> Prediction | None:
    """The prediction of a model with a [C] ``logits`` output for one example; None otherwise."""
    logits = outputs.get("logits")
    if logits is None or np.ndim(logits) != 1:
        return None
    probabilities = softmax(np.asarray(logits, dtype=np.float64))
    index = int(probabilities.argmax())
    label = labels[index] if labels and index < len(labels) else str(index)
    return Prediction(index, label, float(probabilities[index]), probabilities)
