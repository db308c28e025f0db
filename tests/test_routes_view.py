"""The routes' view (report.routes_view): one SVG element per node and edge of the route graph, placed
on its row and column, the data embedded exactly, tokens escaped; in a browser, the threshold slider,
the edge tooltips and the node panel."""

from __future__ import annotations

import json
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import hover_route_edge, require_browser, show_routes

from alti_onnx import Explainer
from alti_onnx.report import display_token, render_html
from alti_onnx.report.routes_view import ATTENTION_COLOR, COLUMN, FFN_COLOR, LEFT, RESIDUAL_COLOR, ROW, routes_html
from alti_onnx.results.logit import LogitQuery
from alti_onnx.results.routes import RouteQuery

FIXTURES = Path(__file__).parent / "fixtures"
TEXT = "the quick brown fox jumps"
VOID = {"meta", "input", "br", "img", "hr", "link"}


class Elements(HTMLParser):
    """Every element of a page: its tag, attributes and the text inside it (entities decoded)."""

    def __init__(self, page: str):
        super().__init__()
        self.found: list[dict] = []
        self.open: list[dict] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "text": "", **{k: v for k, v in attrs}}
        self.found.append(element)
        if tag not in VOID:
            self.open.append(element)

    def handle_startendtag(self, tag, attrs):
        self.found.append({"tag": tag, "text": "", **{k: v for k, v in attrs}})

    def handle_endtag(self, tag):
        while self.open:
            if self.open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self.open:
            element["text"] += data

    def having(self, tag: str, cls: str) -> list[dict]:
        return [e for e in self.found if e["tag"] == tag and cls in e.get("class", "").split()]


@pytest.fixture(scope="module")
def llama():
    with Explainer(FIXTURES / "tiny-llama") as explainer:
        yield explainer.explain(TEXT, routes=RouteQuery(threshold=0.04), logit=LogitQuery())


@pytest.fixture(scope="module")
def classifier():
    with Explainer(FIXTURES / "tiny-bert-classifier") as explainer:
        yield explainer.explain(TEXT, routes=RouteQuery(threshold=0.04))


@pytest.mark.parametrize("which", ["llama", "classifier"])
def test_the_report_draws_every_node_and_edge_where_it_belongs(which, request):
    explanation = request.getfixturevalue(which)
    record = explanation.routes.to_dict()
    page = render_html(explanation, text=TEXT, model=which)
    elements = Elements(page)
    section = [e for e in elements.found if e.get("id") == "routes-section"]
    assert len(section) == 1 and section[0]["text"].lstrip().startswith("Routes")
    assert page.index("logit-section" if explanation.logit is not None else "attribution-section") \
        < page.index('id="routes-section"') < page.index('id="matrix-section"')

    nodes, edges = elements.having("circle", "alti-route-node"), elements.having("g", "alti-route-edge")
    assert len(nodes) == len(record["nodes"]) and len(edges) == len(record["edges"]) > 0
    # nodes: one per route node, at its token's column, rows rising from the embeddings
    keys = [f"{n['site']}:{'' if n['layer'] is None else n['layer']}:{n['position']}" for n in record["nodes"]]
    assert [n["data-node"] for n in nodes] == keys
    ffn = any(n["site"] == "ffn" for n in record["nodes"])
    assert ffn == any(e["kind"].startswith("ffn") for e in record["edges"])
    rows = 1 + (1 + max(e["layer"] for e in record["edges"])) * (2 if ffn else 1)
    for node, circle in zip(record["nodes"], nodes):
        row = 0 if node["layer"] is None else 1 + node["layer"] * (2 if ffn else 1) + (node["site"] == "ffn")
        assert float(circle["cx"]) == LEFT + (node["position"] + 0.5) * COLUMN
        assert float(circle["cy"]) == 14 + (rows - 1 - row) * ROW
    # the prediction's node: the stream after the last layer at the routes' position, highlighted
    predicted = elements.having("circle", "alti-route-prediction")
    top = max(n["layer"] for n in record["nodes"] if n["layer"] is not None)
    assert [p["data-node"] for p in predicted] == [f"{'ffn' if ffn else 'attention'}:{top}:{record['position']}"]

    # edges: the record's, in its order by data-index, with their weight, ends, colour and width
    by_index = {int(e["data-index"]): e for e in edges}
    assert sorted(by_index) == list(range(len(record["edges"])))
    colors = {"attention": ATTENTION_COLOR, "ffn": FFN_COLOR, "attention_residual": RESIDUAL_COLOR,
              "ffn_residual": RESIDUAL_COLOR}
    paths = [e for e in elements.found if e["tag"] == "path" and "alti-route-hit" not in e.get("class", "")]
    strokes = {p["d"]: p for p in paths}
    for index, edge in enumerate(record["edges"]):
        drawn = by_index[index]
        assert float(drawn["data-weight"]) == edge["weight"]
        assert drawn["data-to"] == f"{'ffn' if edge['kind'].startswith('ffn') else 'attention'}:{edge['layer']}:" \
                                   f"{edge['target']}"
        if edge["kind"] == "ffn":
            assert drawn["data-from"] == ""
        elif edge["kind"] == "ffn_residual":
            assert drawn["data-from"] == f"attention:{edge['layer']}:{edge['target']}"
        else:
            before = "embedding:" if edge["layer"] == 0 else f"{'ffn' if ffn else 'attention'}:{edge['layer'] - 1}"
            assert drawn["data-from"] == f"{before}:{edge['source']}"
        head = "" if edge["head"] is None else f" · head {edge['head']}"
        source = "the feed-forward block" if edge["source"] is None else \
            f"“{display_token(explanation.tokens[edge['source']])}” [{edge['source']}]"
        assert drawn["data-tip"] == (f"layer {edge['layer']} · {edge['kind']}{head}\n{source} → "
                                     f"“{display_token(explanation.tokens[edge['target']])}” [{edge['target']}]\n"
                                     f"weight {edge['weight']:.4f}")
    for index, edge in enumerate(record["edges"]):  # the visible stroke of each edge group, in page order
        group = elements.found.index(by_index[index])
        stroke = next(e for e in elements.found[group + 1:] if e["tag"] == "path")
        assert stroke["stroke"] == colors[edge["kind"]]
        assert float(stroke["stroke-width"]) == pytest.approx(max(0.75, 8 * edge["weight"]), abs=0.005)
        assert stroke["d"] in strokes
    markers = [e for e in elements.found if e["tag"] == "text" and e["text"] == "FFN"]
    assert len(markers) == sum(e["kind"] == "ffn" for e in record["edges"])

    # the data, embedded exactly
    data = json.loads(elements.having("script", "alti-routes-data")[0]["text"])
    assert data == {"routes": record, "tokens": [display_token(t) for t in explanation.tokens],
                    "prediction": [p["data-node"] for p in predicted]}
    if which == "llama":
        assert data["routes"]["heads"] and all("promotes" in n for n in data["routes"]["nodes"])
    labels = elements.having("text", "alti-route-token")
    assert [label["text"].split(": ", 1)[1][:len(display_token(t))] for label, t in zip(labels, explanation.tokens)] \
        == [display_token(t) for t in explanation.tokens]


def test_a_report_without_routes_has_no_section(classifier):
    page = render_html(replace(classifier, routes=None), text=TEXT)
    assert "routes-section" not in page and "__ROUTES__" not in page and "alti-routes" not in page


def test_tokens_are_escaped_and_cannot_close_the_script(llama):
    tokens = list(llama.tokens)
    tokens[1], tokens[2] = "</script><b>", '"><img src=x onerror=alert(1)>'
    page = render_html(replace(llama, tokens=tokens), text=TEXT)
    elements = Elements(page)
    assert not [e for e in elements.found if e["tag"] in ("b", "img")]
    assert len([e for e in elements.found if e["tag"] == "script"]) == 4  # the report's two, the routes' two
    data = json.loads(elements.having("script", "alti-routes-data")[0]["text"])
    assert data["tokens"][1:3] == [display_token(tokens[1]), display_token(tokens[2])]
    assert data["routes"] == llama.routes.to_dict()
    titles = [label["text"] for label in elements.having("text", "alti-route-token")]
    assert titles[1].startswith("1: </script><b>") and titles[2].startswith('2: "><img src=x onerror=alert(1)>')
    tips = {int(e["data-index"]): e["data-tip"] for e in elements.having("g", "alti-route-edge")}
    from_one = [k for k, e in enumerate(llama.routes.edges) if e.source == 1]
    assert from_one and all("\n“</script><b>” [1] → " in tips[k] for k in from_one)


def test_a_graph_without_feed_forward_nodes_and_a_mean_prediction():
    """Layers that end at their attention (one row each) and a mean-pooled prediction (every final node)."""
    from alti_onnx.results.routes import RouteExplanation

    found = {"threshold": 0.1, "renormalize": True, "position": "mean", "heads": [],
             "nodes": [{"site": "embedding", "layer": None, "position": 0}, {"site": "embedding", "layer": None, "position": 1},
                       {"site": "attention", "layer": 0, "position": 0}, {"site": "attention", "layer": 0, "position": 1},
                       {"site": "attention", "layer": 1, "position": 0}, {"site": "attention", "layer": 1, "position": 1}],
             "edges": [{"layer": 0, "kind": "attention", "head": 1, "source": 1, "target": 0, "weight": 0.6},
                       {"layer": 0, "kind": "attention_residual", "head": None, "source": 1, "target": 1, "weight": 1.0},
                       {"layer": 0, "kind": "attention", "head": 0, "source": 0, "target": 0, "weight": 0.4},
                       {"layer": 1, "kind": "attention", "head": 0, "source": 0, "target": 1, "weight": 0.3},
                       {"layer": 1, "kind": "attention_residual", "head": None, "source": 1, "target": 1, "weight": 0.7},
                       {"layer": 1, "kind": "attention", "head": 1, "source": 1, "target": 0, "weight": 1.0}]}
    routes = RouteExplanation.from_dict(found)
    elements = Elements(routes_html(routes, ["a", "b"]))
    circles = {c["data-node"]: c for c in elements.having("circle", "alti-route-node")}
    assert [float(circles[k]["cy"]) for k in ("embedding::0", "attention:0:0", "attention:1:0")] == [14 + 2 * ROW,
                                                                                                  14 + ROW, 14]
    assert sorted(c["data-node"] for c in elements.having("circle", "alti-route-prediction")) == \
        ["attention:1:0", "attention:1:1"]
    edges = elements.having("g", "alti-route-edge")
    assert [e["data-from"] for e in edges if e["data-to"] == "attention:1:0"] == ["attention:0:1"]
    data = json.loads(elements.having("script", "alti-routes-data")[0]["text"])
    assert data["routes"] == found | {"nodes": found["nodes"]}
    assert not [e for e in elements.found if e["tag"] == "text" and e["text"] == "FFN"]


def test_a_deep_graph_is_drawn_closer_with_the_tokens_on_top_too():
    """7 layers with feed-forward rows (15 rows): 36 px apart, the token labels above the graph as well."""
    from alti_onnx.report.routes_view import TALL_ROW, TOP
    from alti_onnx.results.routes import RouteExplanation

    nodes = [{"site": "embedding", "layer": None, "position": 0}]
    edges = []
    for layer in range(7):
        nodes += [{"site": "attention", "layer": layer, "position": 0}, {"site": "ffn", "layer": layer, "position": 0}]
        edges += [{"layer": layer, "kind": "attention_residual", "head": None, "source": 0, "target": 0, "weight": 1.0},
                  {"layer": layer, "kind": "ffn_residual", "head": None, "source": 0, "target": 0, "weight": 0.9},
                  {"layer": layer, "kind": "ffn", "head": None, "source": None, "target": 0, "weight": 0.1}]
    routes = RouteExplanation.from_dict({"threshold": 0.04, "renormalize": False, "position": 0, "nodes": nodes,
                                         "edges": edges, "heads": []})
    elements = Elements(routes_html(routes, ["<s>", "a&b"]))
    ys = {c["data-node"]: float(c["cy"]) for c in elements.having("circle", "alti-route-node")}
    assert ys["ffn:6:0"] == TOP + 24 and ys["embedding::0"] == TOP + 24 + 14 * TALL_ROW
    assert ys["attention:3:0"] - ys["ffn:3:0"] == TALL_ROW
    assert [t["text"] for t in elements.having("text", "alti-route-token-top")] == ["<s>", "a&b"]
    assert [e["data-node"] for e in elements.having("circle", "alti-route-prediction")] == ["ffn:6:0"]
    assert len(elements.having("g", "alti-route-edge")) == 21


def test_no_edge_degrades_to_a_line(llama):
    with Explainer(FIXTURES / "tiny-llama") as explainer:
        empty = explainer.explain(TEXT, routes=RouteQuery(threshold=1.0))
    assert empty.routes.edges == []
    shown = routes_html(empty.routes, list(empty.tokens))
    assert "<svg" not in shown and "<script" not in shown and "No edge of weight 1 or more" in shown
    assert "routes-section" in render_html(empty, text=TEXT)


def test_the_notebook_view_draws_the_routes_without_a_script(llama):
    shown = llama._repr_html_()
    elements = Elements(shown)
    assert "<script" not in shown and "<style" not in shown
    assert len(elements.having("circle", "alti-route-node")) == len(llama.routes.graph.nodes)
    edges = elements.having("g", "alti-route-edge")
    assert len(edges) == len(llama.routes.edges)
    titles = [e for e in elements.found if e["tag"] == "title"]
    assert {t["text"] for t in titles} >= {e["data-tip"] for e in edges}  # hover titles stand in for the tooltip


# ---- in a browser ----

@pytest.fixture(scope="module")
def driver():
    require_browser()
    from browser import headless_chromium

    with headless_chromium(1100, 900) as d:
        yield d


def visible(driver, selector: str) -> int:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".filter(e => getComputedStyle(e).display !== 'none').length", selector)


def set_threshold(driver, value: float) -> None:
    driver.execute_script("const s = document.querySelector('.alti-routes-threshold'); s.value = arguments[0];"
                          "s.dispatchEvent(new Event('input'))", str(value))


def test_the_routes_react_in_a_browser(driver, llama, tmp_path):
    """The slider hides the lighter edges and the nodes they leave alone, an edge's tooltip names it,
    and a click on the prediction's node lists what it and the last layer's heads promote."""
    from browser import open_report

    record = llama.routes.to_dict()
    page = tmp_path / "routes.html"
    page.write_text(render_html(llama, text=TEXT, model="tiny-llama"), encoding="utf-8")
    driver.set_window_size(1100, 900)
    open_report(driver, page)
    assert driver.execute_script("return document.querySelector('.alti-routes').dataset.ready") == "1"
    assert visible(driver, ".alti-route-edge") == len(record["edges"])
    assert visible(driver, ".alti-route-node") == len(record["nodes"])

    set_threshold(driver, 0.5)
    heavy = [e for e in llama.routes.edges if e.weight >= 0.5]
    assert 0 < len(heavy) < len(record["edges"])
    assert visible(driver, ".alti-route-edge") == len(heavy)
    sites = ["ffn"] * (1 + max(e.layer for e in llama.routes.edges))
    linked = {node for e in heavy for node in e.ends(sites) if node is not None}
    assert visible(driver, ".alti-route-node") == len(linked)
    assert driver.find_element("css selector", ".alti-routes-count").text == \
        f"{len(heavy)} of {len(record['edges'])} edges"
    set_threshold(driver, record["threshold"])
    assert visible(driver, ".alti-route-edge") == len(record["edges"])

    # the tooltip of an attention edge (the heaviest one the pointer can reach)
    ordered = sorted((k for k, e in enumerate(llama.routes.edges) if e.kind == "attention" and e.source != e.target),
                     key=lambda k: -llama.routes.edges[k].weight)
    index = next(k for k in ordered if hover_route_edge(driver, k))
    edge = llama.routes.edges[index]
    tip = driver.find_element("css selector", ".alti-routes-tip")
    assert tip.is_displayed()
    shown = [display_token(t) for t in llama.tokens]
    assert tip.text.splitlines() == [f"layer {edge.layer} · attention · head {edge.head}",
                                     f"“{shown[edge.source]}” [{edge.source}] → “{shown[edge.target]}” [{edge.target}]",
                                     f"weight {edge.weight:.4f}"]

    # the prediction's node: its description, what it promotes, and the last layer's heads
    driver.find_element("css selector", ".alti-route-prediction").click()
    panel = driver.find_element("css selector", ".alti-routes-panel").text
    final = next(n for n in record["nodes"] if n["site"] == "ffn" and n["layer"] == len(sites) - 1
                 and n["position"] == record["position"])
    assert panel.startswith(f"the stream at “{shown[final['position']]}” [{final['position']}] after layer "
                            f"{final['layer']}'s feed-forward block (the prediction's node)")
    for token in final["promotes"]:
        assert f"{json.dumps(token['token'])} {token['logit']:.3f}" in panel
    heads = [h for h in record["heads"] if h["layer"] == final["layer"]]
    assert heads and panel.count("head ") == len(heads)
    for head in heads:
        assert "+ " + " ".join(json.dumps(t["token"]) for t in head["promotes"]) in panel
        assert "− " + " ".join(json.dumps(t["token"]) for t in head["suppresses"]) in panel

    # an embedding's node: its own lens, no heads
    driver.execute_script("document.querySelector('.alti-route-node[data-node=\"embedding::0\"]')"
                          ".dispatchEvent(new MouseEvent('click', {bubbles: true}))")
    panel = driver.find_element("css selector", ".alti-routes-panel").text
    assert panel.startswith(f"the embedding of “{shown[0]}” [0]") and "head " not in panel

    # a picture of the section (python tests/browser.py MODEL --routes makes the docs' one)
    shown_tip = show_routes(driver, llama.routes.edges, 1100)
    assert shown_tip is not None and tip.is_displayed()
    assert driver.execute_script("return window.innerWidth") == 1100
    shot = tmp_path / "report-routes.png"
    driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@pytest.fixture(scope="module")
def seq2seq():
    with Explainer(FIXTURES / "tiny-t5-seq2seq") as explainer:
        yield explainer.explain("the quick brown fox", "a dog runs", routes=RouteQuery(threshold=0.04))


def test_an_encoder_decoders_routes_are_two_graphs(seq2seq):
    """The ALTI+ report draws the decoder's graph (its cross-attention edges from markers naming the
    encoder position) and the encoder's graph: one element per node and edge of each."""
    from alti_onnx.report.seq2seq_html import render_seq2seq_html

    routes = seq2seq.routes
    page = Elements(render_seq2seq_html(seq2seq, "tiny-t5-seq2seq"))
    graphs = page.having("svg", "alti-routes-svg")
    assert len(graphs) == 2
    edges = page.having("g", "alti-route-edge")
    assert len(edges) == len(routes.decoder.edges) + len(routes.encoder.edges)
    assert len(page.having("circle", "alti-route-node")) == len(routes.decoder.graph.nodes) + len(routes.encoder.nodes)
    cross = [e for e in edges if "alti-route-cross-attention" in e["class"].split()]
    assert len(cross) == sum(e.kind == "cross_attention" for e in routes.decoder.edges) > 0
    assert all("the encoder's" in e["data-tip"] for e in cross)
    rows = {e["text"].strip() for e in page.found if e["tag"] == "text" and e["text"].strip().startswith("layer")}
    assert {"layer 0 attn", "layer 0 cross", "layer 0 ffn"} <= rows


def test_the_seq2seq_routes_react_in_a_browser(driver, seq2seq, tmp_path):
    from browser import open_report

    from alti_onnx.report.seq2seq_html import render_seq2seq_html

    page = tmp_path / "seq2seq.html"
    page.write_text(render_seq2seq_html(seq2seq, "tiny-t5-seq2seq"), encoding="utf-8")
    open_report(driver, page)
    total = len(seq2seq.routes.decoder.edges) + len(seq2seq.routes.encoder.edges)
    assert visible(driver, ".alti-route-edge") == total
    driver.execute_script("const s = document.querySelectorAll('.alti-routes-threshold')[0]; s.value = 0.3;"
                          "s.dispatchEvent(new Event('input'))")  # the decoder's slider leaves the encoder's graph
    heavy = sum(e.weight >= 0.3 for e in seq2seq.routes.decoder.edges)
    assert visible(driver, ".alti-route-edge") == heavy + len(seq2seq.routes.encoder.edges)


def test_a_last_layer_without_a_feed_forward_node_keeps_its_prediction():
    """A layer whose feed-forward block is no node (here: the last layer of a graph built by hand)
    ends at its attention: the prediction's node is found there and every edge joins drawn nodes."""
    from alti_onnx.decomposition.routes import Edge, RouteGraph
    from alti_onnx.report.routes_view import _Grid
    from alti_onnx.results.routes import RouteExplanation

    edges = [Edge(0, "attention", 0, 0, 1, 0.5), Edge(0, "attention_residual", None, 1, 1, 0.5),
             Edge(0, "ffn", None, None, 1, 0.3), Edge(0, "ffn_residual", None, 1, 1, 0.7),
             Edge(1, "attention", 1, 0, 1, 0.4), Edge(1, "attention_residual", None, 1, 1, 0.6)]
    nodes = [("embedding", None, 0), ("embedding", None, 1), ("attention", 0, 1), ("ffn", 0, 1), ("attention", 1, 1)]
    routes = RouteExplanation(RouteGraph(0.04, nodes, edges), 1, False)
    grid = _Grid.of(routes)
    assert grid.prediction == (("attention", 1, 1),) and grid.sites == ["ffn", "attention"]
    assert {node for e in edges for node in e.ends(grid.sites) if node is not None} <= set(nodes) | {("ffn", 0, 0)}
    page = Elements(routes_html(routes, ["a", "b"]))
    assert len(page.having("circle", "alti-route-prediction")) == 1
