"""Comprehensiveness, sufficiency and AOPC (DeYoung et al. 2020, as the ALTI paper uses them).

For one sentence x with predicted class y and one attribution vector:

    comprehensiveness(k) = p(y|x) - p(y|x without its top-k tokens)   (higher: more faithful)
    sufficiency(k)       = p(y|x) - p(y|only its top-k tokens)        (lower: more faithful)
    AOPC                 = mean over the bins

``protocol="paper"`` follows the ALTI authors' ``aupc.py`` instead: the curve of p(y) over k = 0 and
the five bins, made monotone (comprehensiveness by a running minimum from the full sentence,
sufficiency by a running maximum from the specials alone), and each score the sum over the five
bins of p(y|x) minus the curve, divided by 6.

The model is reached only through ``predict(list of id sequences) -> [N, C] probabilities`` so the
metrics can be tested with a hand-made classifier. All perturbed sequences of all sentences go to
``predict`` in one call, which lets it batch them however it likes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .perturbation import BINS, only_tokens, top_k, without_tokens

__all__ = ["Predict", "FaithfulnessScores", "perturbed_inputs", "faithfulness", "PROTOCOLS"]

#: The two ways of turning the perturbation curves into one number (module docstring).
PROTOCOLS = ("deyoung", "paper")

#: A classifier: token-id sequences (special tokens included, unpadded) -> [N, C] class probabilities.
Predict = Callable[[list[list[int]]], np.ndarray]


@dataclass(frozen=True)
class FaithfulnessScores:
    """Per-sentence scores, [N sentences, B bins] each, and the bins they were taken at."""

    bins: tuple[float, ...]
    comprehensiveness: np.ndarray
    sufficiency: np.ndarray
    #: [N] p(y|x) minus p(y) of the specials alone (k = 0 of the sufficiency curve), for the paper protocol
    empty: np.ndarray | None = None
    protocol: str = "deyoung"
    #: per-sentence (comprehensiveness, sufficiency) scores already averaged over draws (``average``)
    averaged: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def comprehensiveness_aopc(self) -> np.ndarray:
        """[N] per-sentence AOPC: the mean over the bins, or the paper protocol's score."""
        if self.averaged is not None:
            return self.averaged[0]
        if self.protocol == "paper":  # k = 0 deletes nothing: no drop
            return _paper_score(np.zeros(len(self.comprehensiveness)), self.comprehensiveness, np.maximum)
        return self.comprehensiveness.mean(axis=1)

    @property
    def sufficiency_aopc(self) -> np.ndarray:
        if self.averaged is not None:
            return self.averaged[1]
        if self.protocol == "paper":
            if self.empty is None:
                raise ValueError("the paper protocol needs p(y) of the specials alone (faithfulness(..., protocol='paper'))")
            return _paper_score(self.empty, self.sufficiency, np.minimum)
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
        """Element-wise mean of several draws (the random baseline). The paper protocol is not linear
        in the curve: the mean of its scores is taken through ``aopc_draws``."""
        averaged = None
        if draws[0].protocol == "paper":
            averaged = (np.mean([d.comprehensiveness_aopc for d in draws], axis=0),
                        np.mean([d.sufficiency_aopc for d in draws], axis=0))
        return FaithfulnessScores(
            draws[0].bins,
            np.mean([d.comprehensiveness for d in draws], axis=0),
            np.mean([d.sufficiency for d in draws], axis=0),
            draws[0].empty, draws[0].protocol, averaged,
        )


def _paper_score(first: np.ndarray, drops: np.ndarray, monotone) -> np.ndarray:
    """aupc.py's score from the drops d = p(y|x) - p(y) at k = 0 (``first``) and the bins: the curve of
    p(y) made monotone is the drops made monotone the other way (a running minimum of p(y) is a
    running maximum of d), then summed over the bins and divided by their number plus one."""
    curve = monotone.accumulate(np.column_stack([first, drops]), axis=1)
    return curve[:, 1:].sum(1) / (drops.shape[1] + 1)


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
    protocol: str = "deyoung",
) -> FaithfulnessScores:
    """Comprehensiveness and sufficiency of ``attributions`` for each sentence at each bin.

    ``targets[n]`` is the class predicted on sentence n and ``full_probability[n]`` its
    probability p(y|x) on the unperturbed sentence (passed in so every method is scored against
    the same number, computed once). ``protocol``: see the module docstring.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    bins = tuple(float(b) for b in bins)
    target = np.asarray(targets, dtype=np.int64)
    full = np.asarray(full_probability, dtype=np.float64)
    empty = None
    if protocol == "paper":
        alone = [only_tokens(ids, [], mask) for ids, mask in zip(input_ids, special, strict=True)]
        empty = full - np.asarray(predict(alone), dtype=np.float64)[np.arange(len(alone)), target]
    sequences: list[list[int]] = []
    for ids, mask, attribution in zip(input_ids, special, attributions, strict=True):
        removed, kept = perturbed_inputs(ids, mask, attribution, bins)
        sequences.extend(removed)
        sequences.extend(kept)
    probs = np.asarray(predict(sequences), dtype=np.float64)
    n, b = len(input_ids), len(bins)
    probs = probs.reshape(n, 2, b, -1)
    p_target = np.take_along_axis(probs, target[:, None, None, None], axis=3)[..., 0]  # [N, 2, B]
    return FaithfulnessScores(bins, full[:, None] - p_target[:, 0], full[:, None] - p_target[:, 1], empty, protocol)
