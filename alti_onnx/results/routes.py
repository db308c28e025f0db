"""What ``explain(..., routes=...)`` adds to an explanation: the routes through heads and feed-forward
blocks that build the prediction (docs/routes.md), and, for language models, what each node and
head promotes (the logit lens)."""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral, Real

from alti_onnx.decomposition.routes import THRESHOLD, Edge, Node, RouteGraph
from alti_onnx.errors import InputError

from .base import TableView
from .record import MEAN

#: Tokens the logit lens lists per node and head, by default.
LENS_TOKENS = 5
#: The most the lens lists (each is one vocabulary-sized row to sort).
MAX_LENS_TOKENS = 50


@dataclass(frozen=True)
class RouteQuery:
    """``threshold``: the smallest edge weight kept (0 keeps every edge); ``renormalize``: each node's
    kept incoming weights rescaled to sum to 1; ``position``: the prediction's position (default:
    the model's default target, the last token of a decoder), or "mean" (every position: a
    mean-pooled prediction); ``lens``: tokens the logit lens lists per node and head (language
    models; 0 for none)."""

    threshold: float = THRESHOLD
    renormalize: bool = False
    position: int | str | None = None
    lens: int = LENS_TOKENS

    def __post_init__(self) -> None:
        threshold = self.threshold
        try:
            usable = not isinstance(threshold, bool) and isinstance(threshold, Real) and 0.0 <= float(threshold) <= 1.0
        except OverflowError:  # an integer too large for a float
            usable = False
        if not usable:  # NaN fails the comparison too
            raise InputError(f"the routes' threshold is a weight from 0 to 1, got {str(threshold)[:40]!r}")
        object.__setattr__(self, "threshold", float(threshold) + 0.0)  # -0.0 is 0
        if isinstance(self.lens, bool) or not isinstance(self.lens, Integral) or not 0 <= self.lens <= MAX_LENS_TOKENS:
            raise InputError(f"the logit lens lists 0 to {MAX_LENS_TOKENS} tokens, got {str(self.lens)[:40]!r}")
        object.__setattr__(self, "lens", int(self.lens))
        position = self.position
        if position is not None and position != MEAN and (isinstance(position, bool) or not isinstance(position, Integral)):
            raise InputError(f"the routes' position is a token position or 'mean', got {str(position)[:40]!r}")
        if position is not None and position != MEAN:
            object.__setattr__(self, "position", int(position))


@dataclass(frozen=True)
class LensToken:
    id: int
    token: str
    logit: float

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "token": self.token, "logit": self.logit}


@dataclass(frozen=True)
class HeadLens:
    """What one head's output at the prediction's position promotes and suppresses."""

    layer: int
    head: int
    promotes: list[LensToken]
    suppresses: list[LensToken]

    def to_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "head": self.head, "promotes": [t.to_dict() for t in self.promotes],
                "suppresses": [t.to_dict() for t in self.suppresses]}


@dataclass(frozen=True)
class RouteExplanation:
    """The pruned route graph of one text to its prediction at ``position``; ``lens`` maps a node
    to the tokens the residual stream there promotes, ``heads`` each head's output at ``position``
    through the same lens (both empty for models without a language-model head)."""

    graph: RouteGraph
    position: int | str  #: a token position, or "mean" (every position: a mean-pooled encoder's prediction)
    renormalize: bool
    lens: dict[Node, list[LensToken]] = field(default_factory=dict)
    heads: list[HeadLens] = field(default_factory=list)

    @property
    def edges(self) -> list[Edge]:
        return self.graph.edges

    def to_dict(self) -> dict[str, object]:
        """The record's ``routes`` object (docs/records.md)."""
        record = self.graph.to_dict()
        nodes = record["nodes"]
        for node, entry in zip(self.graph.nodes, nodes):
            if node in self.lens:
                entry["promotes"] = [t.to_dict() for t in self.lens[node]]
        return {"threshold": record["threshold"], "renormalize": self.renormalize, "position": self.position,
                "nodes": nodes, "edges": record["edges"], "heads": [h.to_dict() for h in self.heads]}

    @classmethod
    def from_dict(cls, found: dict) -> RouteExplanation:
        """The inverse of ``to_dict`` (a saved explanation)."""
        def tokens(items: list) -> list[LensToken]:
            return [LensToken(int(t["id"]), str(t["token"]), float(t["logit"])) for t in items]

        nodes = [(n["site"], n["layer"], int(n["position"])) for n in found["nodes"]]
        edges = [Edge(int(e["layer"]), str(e["kind"]), e["head"], e["source"], int(e["target"]), float(e["weight"]))
                 for e in found["edges"]]
        lens = {node: tokens(n["promotes"]) for node, n in zip(nodes, found["nodes"]) if "promotes" in n}
        heads = [HeadLens(int(h["layer"]), int(h["head"]), tokens(h["promotes"]), tokens(h["suppresses"]))
                 for h in found.get("heads", [])]
        position = found["position"]
        return cls(RouteGraph(float(found["threshold"]), nodes, edges), position if position == "mean" else int(position),
                   bool(found.get("renormalize", False)), lens, heads)

    def table(self, tokens: list[str]) -> TableView:
        """The heaviest head and feed-forward edges on the prediction's routes (the residual edges, the
        stream carrying itself on, are counted, not listed), per layer from the top."""
        components = [e for e in self.edges if e.kind in ("attention", "ffn")]  # the residual edges are the default
        heaviest = sorted(components, key=lambda e: -e.weight)[:TABLE_EDGES]
        ordered = sorted(heaviest, key=lambda e: (-e.layer, -e.weight))
        rows: list[list[str | float]] = [
            [str(e.layer), e.kind + ("" if e.head is None else f" h{e.head}"), _name(tokens, e.source),
             _name(tokens, e.target),
             f"{e.weight:.3f}", e.weight] for e in ordered]
        footer = (f"{len(self.edges)} edges ({len(components)} of heads and feed-forward blocks, the rest residual), "
                  f"{len(self.graph.nodes)} nodes at threshold {self.graph.threshold:g}"
                  f"{' (renormalized)' if self.renormalize else ''}")
        if len(components) > TABLE_EDGES:
            footer += f"; the {TABLE_EDGES} heaviest shown, by layer (the JSON has them all)"
        final = next((n for n in reversed(self.graph.nodes) if n[2] == self.position), None)
        if final in self.lens:
            footer += "; the prediction's node promotes " + ", ".join(repr(t.token) for t in self.lens[final])
        where = "every position (mean)" if self.position == "mean" else \
            f"position {self.position} {tokens[self.position]!r}"
        return TableView(title=f"routes to the prediction at {where}",
                         columns=["layer", "edge", "from", "to", "weight", ""], rows=rows, footer=footer,
                         highlight=None)


def _name(tokens: list[str], position: int | None) -> str:
    """A table's name of an edge end: a position and its token, or a block's own output."""
    return "(its output)" if position is None else f"{position} {tokens[position]!r}"


#: Edges the table lists (the heaviest, top layers first).
TABLE_EDGES = 40


@dataclass(frozen=True)
class Seq2SeqRoutes:
    """An encoder-decoder's routes: the decoder's graph to the prediction at its ``position`` (its
    ``cross_attention`` edges leave from encoder positions), and the encoder's graph to the
    positions those edges read."""

    decoder: RouteExplanation
    encoder: RouteGraph

    @property
    def position(self) -> int | str:
        return self.decoder.position

    def to_dict(self) -> dict[str, object]:
        """The record's ``routes`` object: the decoder's graph, with the encoder's under ``encoder``."""
        encoder = self.encoder.to_dict()
        return {**self.decoder.to_dict(), "encoder": {"nodes": encoder["nodes"], "edges": encoder["edges"]}}

    @classmethod
    def from_dict(cls, found: dict) -> Seq2SeqRoutes:
        decoder = RouteExplanation.from_dict(found)
        decoder = RouteExplanation(RouteGraph(decoder.graph.threshold, decoder.graph.nodes, decoder.graph.edges, True),
                                   decoder.position, decoder.renormalize)
        encoder = RouteExplanation.from_dict({"threshold": found["threshold"], "position": 0, **found["encoder"]})
        return cls(decoder, encoder.graph)

    def table(self, decoder_tokens: list[str], source_tokens: list[str]) -> TableView:
        """The heaviest head and feed-forward edges of both graphs (the decoder's first)."""
        found = [("decoder", e) for e in self.decoder.edges if e.kind in ("attention", "cross_attention", "ffn")]
        found += [("encoder", e) for e in self.encoder.edges if e.kind in ("attention", "ffn")]
        heaviest = sorted(found, key=lambda item: -item[1].weight)[:TABLE_EDGES]
        ordered = sorted(heaviest, key=lambda item: (item[0] == "encoder", -item[1].layer, -item[1].weight))
        rows: list[list[str | float]] = []
        for stack, e in ordered:
            tokens = source_tokens if stack == "encoder" or e.kind == "cross_attention" else decoder_tokens
            target = source_tokens if stack == "encoder" else decoder_tokens
            rows.append([f"{stack} {e.layer}", e.kind + ("" if e.head is None else f" h{e.head}"),
                         _name(tokens, e.source), _name(target, e.target), f"{e.weight:.3f}", e.weight])
        footer = (f"decoder: {len(self.decoder.edges)} edges, encoder: {len(self.encoder.edges)} edges at threshold "
                  f"{self.decoder.graph.threshold:g}{' (renormalized)' if self.decoder.renormalize else ''}")
        if len(found) > TABLE_EDGES:
            footer += f"; the {TABLE_EDGES} heaviest head, cross-attention and feed-forward edges shown"
        return TableView(title=f"routes to the prediction at output position {self.position} "
                               f"{decoder_tokens[self.position]!r}",
                         columns=["layer", "edge", "from", "to", "weight", ""], rows=rows, footer=footer)
