"""The routes to the prediction (``Explanation.routes``) drawn as a graph: an inline SVG drawn here (so it
reads without a script, in a notebook too) and, in the report, a small script for the threshold slider,
the edge tooltips and the node panel.

Rows are the residual stream's sites from the embeddings (bottom) up through each layer's attention
and, where the model has them, feed-forward blocks; columns are the token positions. Every element
belongs to one ``.alti-routes`` container, which carries its own data: a page may hold several.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from alti_onnx.decomposition.routes import Edge, Node
from alti_onnx.results.routes import RouteExplanation

from . import style
from .html import display_token, json_for_script

#: The grid's spacing in pixels: between rows, between token columns, the row labels' margin.
ROW, COLUMN, LEFT, TOP, BOTTOM = 56, 64, 100, 14, 44
#: A deep model's rows (more than ``TALL_ROWS``) are closer, with the token labels on top too.
TALL_ROWS, TALL_ROW, LABELS_ON_TOP = 13, 36, 24
#: Node radius; the prediction's node is drawn larger.
RADIUS, PREDICTION_RADIUS = 6, 8
#: Edge colors by kind: heads, the feed-forward blocks, the residual connections.
ATTENTION_COLOR, FFN_COLOR, RESIDUAL_COLOR = style.CYCLE[0], style.CYCLE[1], style.BASELINE
#: Characters of a token label on the axis (the whole token is in its title).
LABEL_CHARACTERS = 8


def routes_html(routes: RouteExplanation, tokens: list[str], interactive: bool = True,
                source_tokens: list[str] | None = None) -> str:
    """The route graph of ``routes`` over ``tokens``; ``interactive=False`` leaves out the script, the
    slider and the panel (a notebook runs no script of an output), keeping the edges' hover titles."""
    if not routes.edges:
        return (f'<div class="alti-routes alti-routes-empty" style="font-size:13px;color:{style.MUTED}">No edge of weight '
                f'{routes.graph.threshold:g} or more lies on a route to the prediction: nothing to draw (a lower '
                'threshold keeps more).</div>')
    grid = _Grid.of(routes)
    svg = _svg(routes, tokens, grid, titles=not interactive, source_tokens=source_tokens)
    if not interactive:
        facts = (f"{len(routes.edges)} edges and {len(routes.graph.nodes)} nodes at threshold "
                 f"{routes.graph.threshold:g}{' (renormalized)' if routes.renormalize else ''}")
        return (f'<div class="alti-routes" style="font-size:12px;color:{style.MUTED}">routes to the prediction: '
                f'{html.escape(facts)}<div style="overflow-x:auto">{svg}</div></div>')
    data = {"routes": routes.to_dict(), "tokens": [display_token(t) for t in tokens],
            "prediction": [_key(node) for node in grid.prediction]}
    threshold = routes.graph.threshold
    return (f'<div class="alti-routes"><style>{_CSS}</style>'
            f'<div class="alti-routes-controls"><label>threshold <input type="range" class="alti-routes-threshold" '
            f'min="{threshold!r}" max="1" step="0.01" value="{threshold!r}"></label> '
            f'<span class="alti-routes-value">{threshold:.2f}</span> · <span class="alti-routes-count">'
            f'{len(routes.edges)} of {len(routes.edges)} edges</span>{_LEGEND}</div>'
            f'<div class="alti-routes-body"><div class="alti-routes-graph">{svg}</div>'
            '<div class="alti-routes-panel" aria-live="polite"><p class="alti-routes-muted">Click a node to read '
            'what the stream there promotes.</p></div></div>'
            '<div class="alti-routes-tip" role="tooltip" hidden></div>'
            f'<script type="application/json" class="alti-routes-data">{json_for_script(data)}</script>'
            f"<script>{_JS}</script></div>")


@dataclass(frozen=True)
class _Grid:
    """Where each node sits: the layers drawn, each layer's sites (attention, an encoder-decoder's
    cross-attention, feed-forward), the prediction's nodes."""

    layers: int
    per_layer: tuple[str, ...]
    prediction: tuple[Node, ...]
    crossed: bool = False
    #: each layer's last site (a layer whose feed-forward block is no node ends at its attention)
    last_sites: tuple[str, ...] = ()

    @classmethod
    def of(cls, routes: RouteExplanation) -> _Grid:
        nodes = routes.graph.nodes
        layers = 1 + max((edge.layer for edge in routes.edges), default=0)
        crossed = routes.graph.crossed
        per_layer = ("attention",) + (("cross_attention",) if crossed else ()) + \
            (("ffn",) if any(site == "ffn" for site, _, _ in nodes) else ())
        with_ffn = {edge.layer for edge in routes.edges if edge.kind in ("ffn", "ffn_residual")}
        last_sites = tuple("ffn" if layer in with_ffn else "cross_attention" if crossed else "attention"
                           for layer in range(layers))
        top = (last_sites[-1], layers - 1)
        prediction = tuple(node for node in nodes if node[:2] == top
                           and (routes.position == "mean" or node[2] == routes.position))
        return cls(layers, per_layer, prediction, crossed, last_sites)

    @property
    def ffn(self) -> bool:
        return "ffn" in self.per_layer

    @property
    def rows(self) -> int:
        return 1 + self.layers * len(self.per_layer)

    @property
    def sites(self) -> list[str]:
        """Each layer's last site (what ``Edge.ends`` asks)."""
        return list(self.last_sites) or [self.per_layer[-1]] * self.layers

    def row(self, site: str, layer: int | None) -> int:
        if layer is None:
            return 0
        return 1 + layer * len(self.per_layer) + self.per_layer.index(site)

    def label(self, row: int) -> str:
        if row == 0:
            return "embeddings"
        site = self.per_layer[(row - 1) % len(self.per_layer)]
        return f"layer {(row - 1) // len(self.per_layer)} " + SITE_LABELS[site]

    def point(self, node: Node) -> tuple[float, float]:
        site, layer, position = node
        return LEFT + (position + 0.5) * COLUMN, self.y(self.row(site, layer))

    @property
    def tall(self) -> bool:
        return self.rows > TALL_ROWS

    @property
    def step(self) -> int:
        """Pixels between rows."""
        return TALL_ROW if self.tall else ROW

    def y(self, row: int) -> float:
        return TOP + (LABELS_ON_TOP if self.tall else 0) + (self.rows - 1 - row) * self.step


def _svg(routes: RouteExplanation, tokens: list[str], grid: _Grid, titles: bool,
         source_tokens: list[str] | None = None) -> str:
    width, height = LEFT + len(tokens) * COLUMN + 24, grid.y(0) + BOTTOM
    font = html.escape(style.css_font(style.FONT_SANS))
    parts = [f'<svg class="alti-routes-svg" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="{font}" font-size="11" role="img" '
             f'aria-label="routes to the prediction">']
    for row in range(grid.rows):  # row rules and labels
        y = grid.y(row)
        label = grid.label(row)
        parts.append(f'<line x1="{LEFT}" x2="{width - 8}" y1="{y}" y2="{y}" stroke="{style.GRID}" stroke-width="0.5"/>'
                     f'<text x="{LEFT - 8}" y="{y + 4}" text-anchor="end" fill="{style.MUTED}">{label}</text>')
    for position, token in enumerate(tokens):
        shown = display_token(token)
        short = html.escape(shown if len(shown) <= LABEL_CHARACTERS else shown[:LABEL_CHARACTERS - 1] + "…")
        x = LEFT + (position + 0.5) * COLUMN
        parts.append(f'<text class="alti-route-token" x="{x:g}" y="{grid.y(0) + 26:g}" text-anchor="middle" '
                     f'fill="{style.INK}" xml:space="preserve"><title>{position}: {html.escape(shown)}</title>{short}'
                     "</text>")
        if grid.tall:  # a deep graph is read from the top too
            parts.append(f'<text class="alti-route-token-top" x="{x:g}" y="{TOP + 4}" text-anchor="middle" '
                         f'fill="{style.INK}" xml:space="preserve">{short}</text>')
    order = {"attention_residual": 0, "cross_attention_residual": 0, "ffn_residual": 0, "attention": 1,
             "cross_attention": 1, "ffn": 2}
    for index, edge in sorted(enumerate(routes.edges), key=lambda item: order[item[1].kind]):
        parts.append(_edge(index, edge, grid, tokens, titles, source_tokens))
    prediction = set(grid.prediction)
    for node in routes.graph.nodes:
        x, y = grid.point(node)
        final = node in prediction
        tip = _describe(node, tokens) + (" (the prediction's node)" if final else "")
        parts.append(f'<circle class="alti-route-node{" alti-route-prediction" if final else ""}" '
                     f'data-node="{_key(node)}" data-desc="{html.escape(tip)}" cx="{x:g}" cy="{y:g}" '
                     f'r="{PREDICTION_RADIUS if final else RADIUS}" fill="{style.ACCENT if final else "#ffffff"}" '
                     f'stroke="{style.INK}" stroke-width="{2 if final else 1.25}" tabindex="0">'
                     + (f"<title>{html.escape(tip)}</title>" if titles else "") + "</circle>")
    parts.append("</svg>")
    return "".join(parts)


def _edge(index: int, edge: Edge, grid: _Grid, tokens: list[str], titles: bool,
          source_tokens: list[str] | None = None) -> str:
    """One edge: a group holding its visible stroke, a wider transparent one to point at, and for a
    feed-forward edge the block's marker it starts from."""
    source, target = edge.ends(grid.sites, grid.crossed)
    x2, y2 = grid.point(target)
    marker = ""
    if source is None:  # a feed-forward block's own output, or an encoder position: from a marker beside the node
        cross = edge.kind == "cross_attention"
        mx, my = x2 + (-20 - 6 * ((edge.head or 0) % 4) if cross else 20), y2 + grid.step / 2
        color = ATTENTION_COLOR if cross else FFN_COLOR
        text = html.escape(f"e{edge.source}") if cross else "FFN"
        marker = (f'<rect x="{mx - 12:g}" y="{my - 6:g}" width="24" height="12" rx="2" fill="#ffffff" '
                  f'stroke="{color}"/><text x="{mx:g}" y="{my + 3:g}" text-anchor="middle" font-size="8" '
                  f'fill="{style.INK}">{text}</text>')
        path = f"M{mx:g} {my - 6:g} L{x2 + (-1 if cross else 1) * RADIUS * 0.7:g} {y2 + RADIUS * 0.7:g}"
    else:
        x1, y1 = grid.point(source)
        if edge.kind not in ("attention", "cross_attention"):
            path, color = f"M{x1:g} {y1:g} L{x2:g} {y2:g}", RESIDUAL_COLOR
        elif edge.source == edge.target:  # a head reading its own position: a bow beside the residual
            bow = 14 + 3 * (edge.head % 6)
            path, color = f"M{x1:g} {y1:g} C{x1 + bow:g} {y1 - grid.step / 3:g} {x2 + bow:g} {y2 + grid.step / 3:g} {x2:g} {y2:g}", \
                ATTENTION_COLOR
        else:  # heads between the same positions fanned out a little
            middle, spread = (y1 + y2) / 2, 3 * ((edge.head or 0) % 6 - 2.5)
            path, color = (f"M{x1:g} {y1:g} C{x1 + spread:g} {middle:g} {x2 + spread:g} {middle:g} {x2:g} {y2:g}",
                           ATTENTION_COLOR)
    tip = _edge_tip(edge, tokens, source_tokens)
    width = max(0.75, 8 * edge.weight)
    return (f'<g class="alti-route-edge alti-route-{edge.kind.replace("_", "-")}" data-index="{index}" '
            f'data-weight="{edge.weight!r}" data-from="{"" if source is None else _key(source)}" '
            f'data-to="{_key(target)}" data-tip="{html.escape(tip)}">'
            + (f"<title>{html.escape(tip)}</title>" if titles else "")
            + f'<path d="{path}" fill="none" stroke="{color}" stroke-width="{width:.2f}" stroke-opacity="0.8" '
            f'stroke-linecap="round"/><path class="alti-route-hit" d="{path}" fill="none" stroke="transparent" '
            f'stroke-width="{max(width, 9):.2f}"/>{marker}</g>')


def _edge_tip(edge: Edge, tokens: list[str], source_tokens: list[str] | None = None) -> str:
    """The edge in words: layer, kind, head, from which token to which, weight."""
    head = "" if edge.head is None else f" · head {edge.head}"
    if edge.kind == "cross_attention":
        source = "the encoder's " + (f"position {edge.source}" if source_tokens is None
                                     else _token(edge.source, source_tokens))
    else:
        source = "the feed-forward block" if edge.source is None else _token(edge.source, tokens)
    return f"layer {edge.layer} · {edge.kind}{head}\n{source} → {_token(edge.target, tokens)}\nweight {edge.weight:.4f}"


def _describe(node: Node, tokens: list[str]) -> str:
    site, layer, position = node
    if site == "embedding":
        return f"the embedding of {_token(position, tokens)}"
    block = {"attention": "attention", "cross_attention": "cross-attention"}.get(site, "feed-forward block")
    return f"the stream at {_token(position, tokens)} after layer {layer}'s {block}"


#: How a row's site is labelled on the axis.
SITE_LABELS = {"attention": "attn", "cross_attention": "cross", "ffn": "ffn"}


def _token(position: int, tokens: list[str]) -> str:
    return f"“{display_token(tokens[position])}” [{position}]"


def _key(node: Node) -> str:
    """A node as one string (its SVG element's ``data-node``, the edges' ``data-from``/``data-to``)."""
    site, layer, position = node
    return f"{site}:{'' if layer is None else layer}:{position}"


_LEGEND = (f' <span class="alti-routes-legend"><i style="background:{ATTENTION_COLOR}"></i>heads '
           f'<i style="background:{RESIDUAL_COLOR}"></i>residual <i style="background:{FFN_COLOR}"></i>feed-forward'
           "</span>")

_CSS = f"""
.alti-routes {{ position: relative; font-size: 13px; }}
.alti-routes-controls {{ display: flex; flex-wrap: wrap; gap: 6px 12px; align-items: center; margin: 4px 0 8px; }}
.alti-routes-value {{ font-family: {style.css_font(style.FONT_MONO)}; }}
.alti-routes-legend i {{ display: inline-block; width: 14px; height: 3px; margin: 0 4px 3px 8px; vertical-align: middle; }}
.alti-routes-body {{ display: flex; gap: 12px; align-items: flex-start; }}
.alti-routes-graph {{ flex: 1 1 auto; overflow-x: auto; min-width: 0; }}
.alti-routes-panel {{ flex: 0 0 240px; border-left: 1px solid {style.GRID}; padding-left: 10px; font-size: 12px;
  max-height: 480px; overflow-y: auto; }}
.alti-routes-head {{ margin: 0 0 6px; }}
.alti-routes-panel h4 {{ margin: 0 0 4px; font-size: 13px; }}
.alti-routes-panel ul {{ margin: 2px 0 8px; padding-left: 16px; }}
.alti-routes-muted {{ color: {style.MUTED}; }}
.alti-route-edge {{ cursor: default; }}
.alti-route-edge:hover path:first-of-type {{ stroke-opacity: 1; }}
.alti-route-node {{ cursor: pointer; outline: none; }}
.alti-route-node.alti-route-selected {{ stroke: {style.ACCENT}; stroke-width: 3; }}
.alti-routes-tip {{ position: absolute; z-index: 10; pointer-events: none; background: {style.INK}; color: #fff;
  padding: 5px 8px; border-radius: 4px; font-size: 12px; white-space: pre-line; max-width: 360px; }}
"""

#: The script of one section: it sets up every ``.alti-routes`` not set up yet (the page may hold several).
_JS = r"""
(function () {
  "use strict";
  document.querySelectorAll(".alti-routes:not([data-ready])").forEach(function (root) {
    var data = JSON.parse(root.querySelector(".alti-routes-data").textContent), routes = data.routes;
    var edges = Array.prototype.slice.call(root.querySelectorAll(".alti-route-edge"));
    var nodes = Array.prototype.slice.call(root.querySelectorAll(".alti-route-node"));
    var slider = root.querySelector(".alti-routes-threshold"), tip = root.querySelector(".alti-routes-tip");
    var panel = root.querySelector(".alti-routes-panel"), svg = root.querySelector("svg");
    var byKey = {};
    routes.nodes.forEach(function (n) { byKey[n.site + ":" + (n.layer === null ? "" : n.layer) + ":" + n.position] = n; });

    function apply() {
      var t = Number(slider.value), linked = {}, shown = 0;
      edges.forEach(function (e) {
        var on = Number(e.dataset.weight) >= t;
        e.style.display = on ? "" : "none";
        if (on) { shown++; linked[e.dataset.to] = true; if (e.dataset.from) linked[e.dataset.from] = true; }
      });
      nodes.forEach(function (n) { n.style.display = linked[n.dataset.node] ? "" : "none"; });
      root.querySelector(".alti-routes-value").textContent = t.toFixed(2);
      root.querySelector(".alti-routes-count").textContent = shown + " of " + edges.length + " edges";
    }
    slider.addEventListener("input", apply);

    svg.addEventListener("mousemove", function (ev) {
      var edge = ev.target.closest && ev.target.closest(".alti-route-edge");
      if (!edge) { tip.hidden = true; return; }
      var box = root.getBoundingClientRect();
      tip.textContent = edge.dataset.tip;
      tip.hidden = false;
      tip.style.left = (ev.clientX - box.left + 14) + "px";
      tip.style.top = (ev.clientY - box.top + 14) + "px";
    });
    svg.addEventListener("mouseleave", function () { tip.hidden = true; });

    function add(parent, tag, text) {
      var child = document.createElement(tag);
      if (text !== undefined) child.textContent = text;
      parent.appendChild(child);
      return child;
    }
    function list(parent, title, tokens) {
      add(parent, "div", title);
      var ul = add(parent, "ul");
      tokens.forEach(function (t) { add(ul, "li", JSON.stringify(t.token) + " " + t.logit.toFixed(3)); });
    }
    function words(tokens) { return tokens.map(function (t) { return JSON.stringify(t.token); }).join(" "); }
    function select(circle) {
      nodes.forEach(function (n) { n.classList.remove("alti-route-selected"); });
      circle.classList.add("alti-route-selected");
      var node = byKey[circle.dataset.node];
      panel.textContent = "";
      add(panel, "h4", circle.dataset.desc);
      if (node.promotes) list(panel, "promotes", node.promotes);
      else add(panel, "p", "no logit lens (the model has no language-model head)").className = "alti-routes-muted";
      var heads = node.layer === null || (routes.position !== "mean" && node.position !== routes.position) ? [] :
        routes.heads.filter(function (h) { return h.layer === node.layer; });
      if (heads.length) add(panel, "h4", "layer " + node.layer + "'s heads at the prediction");
      heads.forEach(function (h) {
        var line = add(panel, "div");
        line.className = "alti-routes-head";
        add(line, "b", "head " + h.head);
        add(line, "div", "+ " + words(h.promotes));
        add(line, "div", "\u2212 " + words(h.suppresses)).className = "alti-routes-muted";
      });
    }
    svg.addEventListener("click", function (ev) {
      var circle = ev.target.closest && ev.target.closest(".alti-route-node");
      if (circle) select(circle);
    });
    svg.addEventListener("keydown", function (ev) {
      if ((ev.key === "Enter" || ev.key === " ") && ev.target.classList.contains("alti-route-node")) {
        ev.preventDefault();
        select(ev.target);
      }
    });
    apply();
    root.setAttribute("data-ready", "1");
  });
})();
"""
