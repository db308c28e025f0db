"""Which tokens the faithfulness metrics delete: ranking, bin sizes and the perturbed id sequences.

Follows docs/alti.md: special tokens ([CLS], [SEP], ...) are never ranked and never deleted; the other
tokens are ranked by attribution (highest first; ties keep the earlier position first, so the
ranking is deterministic) and the top k = ceil(bin * number of non-special tokens) are either
deleted (comprehensiveness) or the only ones kept (sufficiency). Tokens are deleted from the id
sequence, not replaced by a mask token, so the perturbed inputs are shorter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["BINS", "k_for_bin", "rank_tokens", "top_k", "without_tokens", "only_tokens"]

#: Fractions of the non-special tokens removed or kept, as in DeYoung et al. (2020) and the ALTI paper.
BINS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.20, 0.50)


def k_for_bin(fraction: float, n_tokens: int) -> int:
    """ceil(fraction * n_tokens): at least one token for any non-empty sentence.

    Rounded to 9 digits first so that e.g. 0.1 * 30 (3.0000000000000004 in floats) gives 3, not 4.
    """
    return math.ceil(round(fraction * n_tokens, 9))


def rank_tokens(attribution: np.ndarray, special: Sequence[bool]) -> np.ndarray:
    """Positions of the non-special tokens, highest attribution first (stable on ties)."""
    attribution = np.asarray(attribution, dtype=np.float64)
    special = np.asarray(special, dtype=bool)
    if attribution.shape != special.shape:
        raise ValueError(f"attribution has {attribution.shape[0]} positions, special mask {special.shape[0]}")
    candidates = np.flatnonzero(~special)
    order = np.argsort(-attribution[candidates], kind="stable")
    return candidates[order]


def top_k(attribution: np.ndarray, special: Sequence[bool], fraction: float) -> np.ndarray:
    """The positions of the top ``fraction`` of the non-special tokens (sorted by position)."""
    ranked = rank_tokens(attribution, special)
    return np.sort(ranked[: k_for_bin(fraction, len(ranked))])


def without_tokens(input_ids: Sequence[int], positions: Sequence[int]) -> list[int]:
    """``input_ids`` with the tokens at ``positions`` deleted (comprehensiveness input)."""
    drop = set(int(p) for p in positions)
    return [int(t) for i, t in enumerate(input_ids) if i not in drop]


def only_tokens(input_ids: Sequence[int], positions: Sequence[int], special: Sequence[bool]) -> list[int]:
    """Only the special tokens and those at ``positions``, in their order (sufficiency input)."""
    keep = set(int(p) for p in positions)
    return [int(t) for i, (t, s) in enumerate(zip(input_ids, special)) if s or i in keep]
