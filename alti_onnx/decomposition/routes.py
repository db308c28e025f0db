"""The route graph of one example (issue 26, second step): the layers' component contributions
(``components``) as a graph of the residual stream, pruned to the routes that reach the prediction.

Nodes are the stream at each position after each layer's attention and after its feed-forward
block, and the embeddings; edges carry the component contributions:

- ``attention`` (one per source position and head): the stream before layer l at j -> after its
  attention at i;
- ``attention_residual``: before layer l at i -> after its attention at i;
- ``ffn`` (source None: the block's own output) and ``ffn_residual``: after the attention at i ->
  after the feed-forward block at i.

An encoder-decoder's decoder graph (``crossed``) has a cross-attention node between the two:
``cross_attention`` (one per encoder position j and head; the encoder is an input of this graph) and
``cross_attention_residual``: after the self-attention at i -> after the cross-attention at i, from
which ``ffn_residual`` then leaves.

Before pruning, each node's incoming weights sum to 1 (or 0 where nothing reaches it). Pruning keeps
the edges of weight ``threshold`` or more (optionally renormalizing each node's incoming weights),
then only those on a route from the inputs to the prediction's node.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .components import AttentionComponents

#: The anchor's default threshold (Ferrando & Voita, 2024).
THRESHOLD = 0.04
#: A node: (site, layer, position); site "embedding" (layer None), "attention" or "ffn".
Node = tuple[str, "int | None", int]


@dataclass(frozen=True)
class Edge:
    layer: int
    kind: str
    head: int | None
    source: int | None
    target: int
    weight: float

    def to_dict(self) -> dict[str, object]:
        return {"layer": self.layer, "kind": self.kind, "head": self.head, "source": self.source,
                "target": self.target, "weight": self.weight}

    def ends(self, sites: list[str], crossed: bool = False) -> tuple[Node | None, Node]:
        """The edge's source and target nodes, given each layer's last site (``_stream_site``) and
        whether the layers hold a cross-attention (a decoder's); None: an input of the graph."""
        if self.kind in ("ffn", "ffn_residual"):
            target = ("ffn", self.layer, self.target)
            middle = "cross_attention" if crossed else "attention"
            return (None if self.kind == "ffn" else (middle, self.layer, self.target)), target
        if self.kind in ("cross_attention", "cross_attention_residual"):
            target = ("cross_attention", self.layer, self.target)
            return (None if self.kind == "cross_attention" else ("attention", self.layer, self.target)), target
        before = _before(self.layer, sites)
        return (before[0], before[1], self.source), ("attention", self.layer, self.target)


@dataclass(frozen=True)
class RouteGraph:
    threshold: float
    nodes: list[Node]
    edges: list[Edge]
    #: a decoder's graph whose layers hold a cross-attention node (``Edge.ends``)
    crossed: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"threshold": self.threshold,
                "nodes": [{"site": site, "layer": layer, "position": position} for site, layer, position in self.nodes],
                "edges": [edge.to_dict() for edge in self.edges]}


def route_edges(attention: Sequence[AttentionComponents], ffn: Sequence[np.ndarray | None]) -> list[Edge]:
    """Every edge of positive weight: per layer its attention components, and its feed-forward shares
    ([S, 2]: the stream, the block's output) where ``ffn[l]`` is given."""
    edges = []
    for layer, found in enumerate(attention):
        heads, rows, columns = np.nonzero(found.heads)
        edges += [Edge(layer, "attention", int(h), int(j), int(i), float(found.heads[h, i, j]))
                  for h, i, j in zip(heads, rows, columns)]
        edges += [Edge(layer, "attention_residual", None, int(i), int(i), float(w))
                  for i, w in enumerate(found.residual) if w > 0]
        shares = ffn[layer] if layer < len(ffn) else None
        if shares is not None:
            for i, (stream, output) in enumerate(shares):
                if stream > 0:
                    edges.append(Edge(layer, "ffn_residual", None, i, i, float(stream)))
                if output > 0:
                    edges.append(Edge(layer, "ffn", None, None, i, float(output)))
    return edges


class RouteLayer(Protocol):
    """What ``trace`` asks of one layer: its components for some receiving positions."""

    #: whether the stream after this layer's feed-forward block is a node (else the layer ends at its attention)
    has_ffn: bool

    def attention(self, rows: np.ndarray) -> AttentionComponents:
        """The attention components of the positions ``rows`` (heads [H, R, S], residual [R])."""

    def ffn(self, rows: np.ndarray) -> np.ndarray:
        """[R, 2]: the shares of the stream and of the feed-forward block's output at ``rows``."""


class CrossRouteLayer(RouteLayer, Protocol):
    """A decoder layer of an encoder-decoder: a cross-attention between its attention and feed-forward block."""

    def cross(self, rows: np.ndarray) -> AttentionComponents:
        """The cross-attention components of the positions ``rows`` (heads [H, R, J] over the encoder's J)."""


def trace(layers: Sequence[RouteLayer], target: int | Sequence[int], threshold: float = THRESHOLD,
          renormalize: bool = False) -> RouteGraph:
    """The pruned route graph, computing only the rows that can reach the prediction: from the last
    layer down, the components of the positions whose node an edge of weight ``threshold`` or more
    already reaches. The same graph as ``prune(route_edges(every row))``, since a node's incoming
    weights (and their renormalization) depend on its own row alone; at a threshold above 0 it
    costs a few rows per layer instead of S. Layers with a ``cross`` method (an encoder-decoder's
    decoder) add cross-attention nodes, whose encoder sources are inputs of this graph."""
    has_ffn = [layer.has_ffn for layer in layers]
    crossed = bool(layers) and all(hasattr(layer, "cross") for layer in layers)
    edges: list[Edge] = []
    needed = set(_targets(target))  # positions whose stream node after the current layer is on a route
    for number in reversed(range(len(layers))):
        layer = layers[number]
        if has_ffn[number]:
            rows = np.array(sorted(needed), dtype=np.intp)
            needed = set()
            for i, (stream, output) in zip(rows.tolist(), layer.ffn(rows)):
                if output > 0 and output >= threshold:
                    edges.append(Edge(number, "ffn", None, None, i, float(output)))
                if stream > 0 and stream >= threshold:
                    edges.append(Edge(number, "ffn_residual", None, i, i, float(stream)))
                    needed.add(i)
        if crossed and needed:
            rows = np.array(sorted(needed), dtype=np.intp)
            edges += _attention_edges(number, "cross_attention", layer.cross(rows), rows, threshold)
            needed = {e.target for e in edges if e.layer == number and e.kind == "cross_attention_residual"}
        rows = np.array(sorted(needed), dtype=np.intp)
        if not len(rows):
            break
        found = _attention_edges(number, "attention", layer.attention(rows), rows, threshold)
        edges += found
        needed = {e.source for e in found}
    return prune(edges, len(layers), has_ffn, target, threshold, renormalize, crossed)


def _attention_edges(layer: int, kind: str, found: AttentionComponents, rows: np.ndarray,
                     threshold: float) -> list[Edge]:
    """The edges of weight ``threshold`` or more (and above 0) of an attention's components at ``rows``."""
    heads, at, sources = np.nonzero((found.heads > 0) & (found.heads >= threshold))
    edges = [Edge(layer, kind, int(h), int(j), int(rows[r]), float(found.heads[h, r, j]))
             for h, r, j in zip(heads, at, sources)]
    edges += [Edge(layer, f"{kind}_residual", None, i, i, float(weight))
              for i, weight in zip(rows.tolist(), found.residual) if weight > 0 and weight >= threshold]
    return edges


def prune(edges: Sequence[Edge], layers: int, has_ffn: Sequence[bool], target: int | Sequence[int],
          threshold: float = THRESHOLD, renormalize: bool = False, crossed: bool = False) -> RouteGraph:
    """The edges of weight ``threshold`` or more (renormalized per node on request) that lie on a
    route from the inputs to the prediction's node: the stream at ``target`` after the last layer
    (several positions: a mean-pooled encoder's prediction reads them all)."""
    sites = [_stream_site(layer, has_ffn, crossed) for layer in range(layers)]
    kept = [edge for edge in edges if edge.weight >= threshold]
    if renormalize:
        totals: dict[Node, float] = defaultdict(float)
        for edge in kept:
            totals[edge.ends(sites, crossed)[1]] += edge.weight
        kept = [Edge(e.layer, e.kind, e.head, e.source, e.target, e.weight / totals[e.ends(sites, crossed)[1]])
                for e in kept]
    finals: list[Node] = [(sites[-1], layers - 1, t) for t in _targets(target)]
    ends = [edge.ends(sites, crossed) for edge in kept]
    into: dict[Node, list[Node | None]] = defaultdict(list)
    out_of: dict[Node, list[Node]] = defaultdict(list)
    for source, node in ends:
        into[node].append(source)
        if source is not None:
            out_of[source].append(node)
    reaches_final = _closure(finals, lambda node: [s for s in into[node] if s is not None])
    starts = [source for source, _ in ends if source is not None and source[0] == "embedding"]
    starts += [node for source, node in ends if source is None]  # a feed-forward block's output, the encoder
    from_inputs = _closure(starts, lambda node: out_of[node])
    on_route = [edge for edge, (source, node) in zip(kept, ends)
                if node in reaches_final and node in from_inputs and (source is None or source in from_inputs)]
    nodes = sorted({node for edge in on_route for node in edge.ends(sites, crossed) if node is not None}, key=_order)
    return RouteGraph(threshold, nodes, on_route, crossed)


def _targets(target: int | Sequence[int]) -> list[int]:
    return [int(target)] if isinstance(target, (int, np.integer)) else [int(t) for t in target]


def _order(node: Node) -> tuple[int, int, int]:
    site, layer, position = node
    return (-1 if layer is None else layer, ("embedding", "attention", "cross_attention", "ffn").index(site), position)


def _stream_site(layer: int, has_ffn: Sequence[bool], crossed: bool = False) -> str:
    """The site of the stream after ``layer``: its feed-forward block's, or its (cross-)attention's."""
    if layer < len(has_ffn) and has_ffn[layer]:
        return "ffn"
    return "cross_attention" if crossed else "attention"


def _before(layer: int, sites: list[str]) -> tuple[str, int | None]:
    """The stream before ``layer``: after the previous layer, or the embeddings."""
    return ("embedding", None) if layer == 0 else (sites[layer - 1], layer - 1)


def _closure(starts: list[Node], step) -> set[Node]:
    seen, stack = set(starts), list(starts)
    while stack:
        for nxt in step(stack.pop()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen
