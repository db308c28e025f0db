"""The attribution methods compared with ALTI that need no autograd (docs/alti.md, "Baselines").

Each returns one vector per sentence over all its positions (special tokens included; the
metrics ignore their values), read at row 0: the [CLS] position the classifier head reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alti_onnx.decomposition.contributions import rollout
from alti_onnx.results.explanation import Explanation

from .metrics import Predict
from .perturbation import without_tokens

__all__ = [
    "TARGET",
    "alti",
    "logit_decomposition",
    "last_layer_attention",
    "attention_rollout",
    "norm_based",
    "leave_one_out",
    "random_attributions",
]

#: The position whose representation the classifier reads ([CLS]).
TARGET = 0


def alti(e: Explanation) -> np.ndarray:
    """ALTI: the last rollout layer's row for [CLS] (how much each input token makes up its final vector)."""
    return np.asarray(e.rollout[-1, TARGET], dtype=np.float64)


def logit_decomposition(e: Explanation) -> np.ndarray:
    """The predicted class's logit decomposed (docs/logit.md): each token's signed part."""
    if e.logit is None:
        raise ValueError("the explanation holds no logit decomposition")
    return np.asarray(e.logit.attribution, dtype=np.float64)


def last_layer_attention(e: Explanation) -> np.ndarray:
    """Raw attention: the head-averaged attention probabilities of the last layer, row [CLS]."""
    return np.asarray(e.attention[-1, TARGET], dtype=np.float64)


def attention_rollout(e: Explanation) -> np.ndarray:
    """Abnar & Zuidema (2020): rollout of 0.5 * mean_h A + 0.5 * I (rows renormalized), row [CLS]."""
    size = e.attention.shape[-1]
    mixed = 0.5 * np.asarray(e.attention, dtype=np.float64) + 0.5 * np.eye(size)
    mixed /= mixed.sum(-1, keepdims=True)
    return rollout(mixed)[-1, TARGET]


def norm_based(e: Explanation) -> np.ndarray:
    """Kobayashi et al.: ||T'[i,j]||_2 rows normalized per layer (``e.norm_based``), rolled out, row [CLS]."""
    return rollout(np.asarray(e.norm_based, dtype=np.float64))[-1, TARGET]


def leave_one_out(
    predict: Predict,
    input_ids: Sequence[Sequence[int]],
    special: Sequence[Sequence[bool]],
    targets: Sequence[int],
    full_probability: Sequence[float] | np.ndarray,
) -> list[np.ndarray]:
    """Occlusion: a[j] = p(y|x) - p(y|x with token j deleted); 0 for special tokens (never deleted).

    All sentences' one-token deletions go to ``predict`` in one call.
    """
    sequences, owners = [], []
    for n, (ids, mask) in enumerate(zip(input_ids, special, strict=True)):
        for j in np.flatnonzero(~np.asarray(mask, dtype=bool)):
            sequences.append(without_tokens(ids, [j]))
            owners.append((n, int(j)))
    probs = predict(sequences) if sequences else np.zeros((0, 1))
    out = [np.zeros(len(ids), dtype=np.float64) for ids in input_ids]
    for (n, j), p in zip(owners, probs):
        out[n][j] = float(full_probability[n]) - float(p[targets[n]])
    return out


def random_attributions(lengths: Sequence[int], seed: int, draws: int) -> list[list[np.ndarray]]:
    """``draws`` independent uniform random attributions per sentence, reproducible from ``seed``.

    Draw d uses its own generator spawned from ``seed`` (so draws are independent), and the same
    (lengths, seed, draws) always give the same numbers.
    """
    streams = np.random.SeedSequence(seed).spawn(draws)
    result = []
    for stream in streams:
        rng = np.random.default_rng(stream)
        result.append([rng.random(n) for n in lengths])
    return result
