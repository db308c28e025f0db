"""What layout ops do to a tensor's axes: enough to tell that a chain of them merges attention heads.

The attention context ``probs @ values`` is ``[B, H, S, dh]``. Exporters merge its heads into
``[B, S, H*dh]`` (or ``[B*S, H*dh]``) with different op sequences: PyTorch a Transpose and a Reshape,
Keras 3 (via tf2onnx) an Unsqueeze, a 5-D Transpose and a Reshape, jax2onnx a Transpose and a
Reshape straight to 2-D. ``Axes`` follows the named factors ``B, H, S, dh`` through Transpose,
Reshape, Squeeze, Unsqueeze and Flatten: a Reshape never reorders elements, so only the factors'
grouping into axes changes, and a Transpose permutes the groups. Factors of size 1 (a static batch
of one) cannot move anything and are left out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: A target dimension: a known size, None (unknown or -1), or COPY (Reshape's 0: keep that axis).
COPY = "copy"
Dim = int | str | None


@dataclass(frozen=True)
class Axes:
    """A tensor's axes, each as the factors it holds in row-major order, e.g. ``(("B",), ("S",), ("H", "dh"))``."""

    groups: tuple[tuple[str, ...], ...]
    sizes: Mapping[str, int | None]

    @classmethod
    def of(cls, factors: Sequence[str], sizes: Mapping[str, int | None]) -> Axes:
        """One axis per factor (a factor of size 1 gives an empty axis)."""
        return cls(tuple(() if sizes.get(f) == 1 else (f,) for f in factors), dict(sizes))

    @property
    def flat(self) -> tuple[str, ...]:
        return tuple(itertools.chain.from_iterable(self.groups))

    def transpose(self, perm: Sequence[int] | None) -> Axes | None:
        perm = list(reversed(range(len(self.groups)))) if perm is None else list(perm)
        if sorted(perm) != list(range(len(self.groups))):
            return None
        return Axes(tuple(self.groups[p] for p in perm), self.sizes)

    def unsqueeze(self, axes: Sequence[int]) -> Axes | None:
        rank = len(self.groups) + len(axes)
        positions = sorted(a % rank for a in axes)
        groups = list(self.groups)
        for position in positions:
            groups.insert(position, ())
        return Axes(tuple(groups), self.sizes)

    def squeeze(self, axes: Sequence[int] | None) -> Axes | None:
        rank = len(self.groups)
        drop = {a % rank for a in axes} if axes is not None else {k for k, g in enumerate(self.groups) if not g}
        if any(self.groups[k] for k in drop):  # squeezing an axis that holds a factor: not a size-1 axis
            return None
        return Axes(tuple(g for k, g in enumerate(self.groups) if k not in drop), self.sizes)

    def flatten(self, axis: int) -> Axes:
        axis %= len(self.groups) + 1
        head = tuple(itertools.chain.from_iterable(self.groups[:axis]))
        tail = tuple(itertools.chain.from_iterable(self.groups[axis:]))
        return Axes((head, tail), self.sizes)

    def reshape(self, target: Sequence[Dim]) -> Axes | None:
        """The grouping after a Reshape to ``target``, or None when it is not determined uniquely.

        The factors keep their order; each target axis takes a consecutive run of them: a known
        size the run whose sizes multiply to it (none for a 1), COPY the same run as the input
        axis, an unknown size a non-empty run.
        """
        target = [(self.groups[k] if k < len(self.groups) else None) if d == COPY else d for k, d in enumerate(target)]
        found = {tuple(p) for p in self._partitions(self.flat, target)}
        return Axes(found.pop(), self.sizes) if len(found) == 1 else None

    def _partitions(self, factors: tuple[str, ...], target: list) -> list[list[tuple[str, ...]]]:
        if not target:
            return [[]] if not factors else []
        dim, rest = target[0], target[1:]
        found = []
        for cut in range(len(factors) + 1):
            run = factors[:cut]
            if self._fits(run, dim):
                found.extend([run, *tail] for tail in self._partitions(factors[cut:], rest))
        return found

    def _fits(self, run: tuple[str, ...], dim) -> bool:
        if isinstance(dim, tuple):  # COPY, resolved to the input axis's factors
            return run == dim
        if dim is None or dim == -1:
            return len(run) > 0
        sizes = [self.sizes.get(f) for f in run]
        return all(s is not None for s in sizes) and math.prod(sizes) == dim

    def describe(self) -> str:
        return "[" + ", ".join("*".join(g) if g else "1" for g in self.groups) + "]"
