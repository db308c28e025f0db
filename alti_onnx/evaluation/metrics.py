"""Comprehensiveness, sufficiency and AOPC (DeYoung et al. 2020, as the ALTI paper uses them).

For one sentence x with predicted class y and one attribution vector:

    comprehensiveness(k) = p(y|x) - p(y|x without its top-k tokens)   (higher: more faithful)
    sufficiency(k)       = p(y|x) - p(y|only its top-k tokens)        (lower: more faithful)
    AOPC                 = mean over the bins

The model is reached only through ``predict(list of id sequences) -> [N, C] probabilities`` so the
metrics can be tested with a hand-made classifier. All perturbed sequences of all sentences go to
``predict`` in one call, which lets it batch them however it likes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .perturbation import BINS, only_tokens, top_k, without_tokens

__all__ = ["Predict", "FaithfulnessScores", "perturbed_inputs", "faithfulness"]

#: A classifier: token-id sequences (special tokens included, unpadded) -> [N, C] class probabilities.
Predict = Callable[[list[list[int]]], np.ndarray]


@dataclass(frozen=True)
class FaithfulnessScores:
    """Per-sentence scores, [N sentences, B bins] each, and the bins they were taken at."""

    bins: tuple[float, ...]
    comprehensiveness: np.ndarray
    sufficiency: np.ndarray

    @property
    def comprehensiveness_aopc(self) -> np.ndarray:
        """[N] per-sentence AOPC (mean over the bins)."""
        return self.comprehensiveness.mean(axis=1)

    @property
    def sufficiency_aopc(self) -> np.ndarray:
        return self.sufficiency.mean(axis=1)

    def mean(self) -> dict[str, object]:
        """Means over sentences: per bin and AOPC, as plain floats."""
        return {
            "comprehensiveness": [float(v) for v in self.comprehensiveness.mean(0)],
            "sufficiency": [float(v) for v in self.sufficiency.mean(0)],
            "comprehensiveness_aopc": float(self.comprehensiveness_aopc.mean()),
            "sufficiency_aopc": float(self.sufficiency_aopc.mean()),
        }

    @staticmethod
    def average(draws: Sequence["FaithfulnessScores"]) -> "FaithfulnessScores":
        """Element-wise mean of several draws (the random baseline)."""
        return FaithfulnessScores(
            draws[0].bins,
            np.mean([d.comprehensiveness for d in draws], axis=0),
            np.mean([d.sufficiency for d in draws], axis=0),
        )


def perturbed_inputs(
    input_ids: Sequence[int], special: Sequence[bool], attribution: np.ndarray, bins: Sequence[float] = BINS
) -> tuple[list[list[int]], list[list[int]]]:
    """(comprehensiveness inputs, sufficiency inputs), one sequence per bin, for one sentence."""
    removed, kept = [], []
    for fraction in bins:
        positions = top_k(attribution, special, fraction)
        removed.append(without_tokens(input_ids, positions))
        kept.append(only_tokens(input_ids, positions, special))
    return removed, kept


def faithfulness(
    predict: Predict,
    input_ids: Sequence[Sequence[int]],
    special: Sequence[Sequence[bool]],
    attributions: Sequence[np.ndarray],
    targets: Sequence[int],
    full_probability: Sequence[float] | np.ndarray,
    bins: Sequence[float] = BINS,
) -> FaithfulnessScores:
    """Comprehensiveness and sufficiency of ``attributions`` for each sentence at each bin.

    ``targets[n]`` is the class predicted on sentence n and ``full_probability[n]`` its
    probability p(y|x) on the unperturbed sentence (passed in so every method is scored against
    the same number, computed once).
    """
    bins = tuple(float(b) for b in bins)
    sequences: list[list[int]] = []
    for ids, mask, attribution in zip(input_ids, special, attributions, strict=True):
        removed, kept = perturbed_inputs(ids, mask, attribution, bins)
        sequences.extend(removed)
        sequences.extend(kept)
    probs = np.asarray(predict(sequences), dtype=np.float64)
    n, b = len(input_ids), len(bins)
    probs = probs.reshape(n, 2, b, -1)
    target = np.asarray(targets, dtype=np.int64)
    p_target = np.take_along_axis(probs, target[:, None, None, None], axis=3)[..., 0]  # [N, 2, B]
    full = np.asarray(full_probability, dtype=np.float64)[:, None]
    return FaithfulnessScores(bins, full - p_target[:, 0], full - p_target[:, 1])
