"""What ``explain(..., logit=...)`` adds to an explanation: the logit of a class or next token (or its
difference from a foil's) as one signed number per input token plus named parts (docs/logit.md)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import TableView

#: Parts the table lists by name (the largest in magnitude); the rest are summed in one line.
SHOWN_PARTS = 6


@dataclass(frozen=True)
class LogitQuery:
    """Which logit to decompose: ``target`` a class (index or label) or a token (id or text), None for
    the prediction; ``foil`` the same for the contrast (target minus foil); ``per_head`` keeps a
    decoder's per-head values; ``position`` the decoder position whose next token is explained
    (default: the last token; a classifier has one logit and no use for it); ``kind`` what the asker meant ("class" or "token"; None: either), so
    that a class asked of a language model is refused rather than read as a token id."""

    target: int | str | None = None
    foil: int | str | None = None
    per_head: bool = False
    position: int | None = None
    kind: str | None = None


@dataclass(frozen=True)
class LogitItem:
    """A class (``index``, ``label``) or a vocabulary token (``index`` = its id, ``label`` = its text)."""

    index: int
    label: str


@dataclass(frozen=True)
class LogitExplanation:
    """The decomposition of one logit (or target-minus-foil difference).

    ``method``: "alti-logit" (decoders: per-layer terms carried through ALTI's rollout) or
    "linearized" (the whole model read linearly at its forward pass: classifiers). ``value`` is the
    model's own logit (difference); ``attribution`` plus the ``parts`` sum to it, up to
    ``reconstruction_error`` (relative to the larger of 1 and the logits' magnitude).
    """

    method: str
    kind: str  #: "class" or "token"
    target: LogitItem
    foil: LogitItem | None
    value: float
    attribution: np.ndarray
    parts: dict[str, float]
    reconstruction_error: float
    position: int | None = None
    per_layer: np.ndarray | None = None
    per_head: np.ndarray | None = None

    def describe(self) -> str:
        """'positive' (class 1), or 'positive' (class 1) minus 'negative' (class 0)."""
        def one(item: LogitItem) -> str:
            return f"{item.label!r} ({self.kind} {item.index})"

        return one(self.target) + ("" if self.foil is None else f" minus {one(self.foil)}")

    def table(self, tokens: list[str]) -> TableView:
        """Each token's signed part of the logit (bars: blue for, red against), then the named parts."""
        peak = float(max(np.abs(self.attribution).max(initial=0.0), 1e-12))
        rows: list[list[str | float]] = [[str(k), token, f"{v:+.4f}", float(v) / peak]
                                         for k, (token, v) in enumerate(zip(tokens, self.attribution))]
        ordered = sorted(self.parts.items(), key=lambda item: -abs(item[1]))
        shown, rest = ordered[:SHOWN_PARTS], ordered[SHOWN_PARTS:]
        parts = ", ".join(f"{name} {value:+.3f}" for name, value in shown)
        if rest:
            parts += f", {len(rest)} more {sum(v for _, v in rest):+.3f}"
        where = "" if self.position is None else f" after position {self.position}"
        return TableView(
            title=f"{'ALTI-Logit' if self.method == 'alti-logit' else 'logit decomposition'} of {self.describe()}{where}",
            columns=["pos", "token", "logit part", ""], rows=rows,
            footer=(f"value {self.value:+.4f} = tokens {self.tokens_total:+.4f} + parts "
                    f"{sum(self.parts.values()):+.4f} ({parts}); self-check: reconstruction error "
                    f"{self.reconstruction_error:.2e}"),
            highlight=self.position,
        )

    @property
    def tokens_total(self) -> float:
        """What the token terms add up to (a decoder's per-layer terms, before their rollout)."""
        return float(self.attribution.sum() if self.per_layer is None else self.per_layer.sum())

    def to_dict(self, per_head: bool = True) -> dict[str, object]:
        """The record's ``logit`` object (docs/records.md)."""
        def item(found: LogitItem | None) -> dict[str, object] | None:
            if found is None:
                return None
            return {"index": found.index, "label": found.label} if self.kind == "class" else \
                {"id": found.index, "token": found.label}

        record: dict[str, object] = {
            "method": self.method, "target": item(self.target), "foil": item(self.foil), "value": float(self.value),
            "attribution": [float(v) for v in self.attribution],
            "parts": {name: float(v) for name, v in self.parts.items()},
            "reconstruction_error": float(self.reconstruction_error),
        }
        if self.position is not None:
            record["position"] = int(self.position)
        if self.per_layer is not None:
            record["per_layer"] = self.per_layer.tolist()
        if per_head and self.per_head is not None:
            record["per_head"] = self.per_head.tolist()
        return record

    @classmethod
    def from_dict(cls, found: dict[str, object]) -> LogitExplanation:
        """The inverse of ``to_dict`` (a saved explanation)."""
        kind = "class" if "label" in (found["target"] or {}) else "token"

        def item(value: dict | None) -> LogitItem | None:
            if value is None:
                return None
            return LogitItem(int(value["index"]), str(value["label"])) if kind == "class" else \
                LogitItem(int(value["id"]), str(value["token"]))

        def array(key: str) -> np.ndarray | None:
            return None if found.get(key) is None else np.asarray(found[key], dtype=np.float64)

        return cls(str(found["method"]), kind, item(found["target"]), item(found.get("foil")), float(found["value"]),
                   np.asarray(found["attribution"], dtype=np.float64), {k: float(v) for k, v in found["parts"].items()},
                   float(found["reconstruction_error"]), found.get("position"), array("per_layer"), array("per_head"))
