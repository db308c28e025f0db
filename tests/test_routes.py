"""The routes to the prediction (issue 26, docs/routes.md): the trace that decomposes only the rows on
a route against the full graph pruned afterwards; every edge against the components of every row
(which tests/test_components.py checks against the float64 reference); the last feed-forward block's
share and the logit lens against the Hugging Face model by hooks; the record, the options, the errors."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alti_onnx.decomposition.components import attention_components, ffn_components
from alti_onnx.decomposition.route_layers import ProbsStore
from alti_onnx.decomposition.routes import prune, route_edges
from alti_onnx.errors import InputError
from alti_onnx.results.routes import RouteExplanation, RouteQuery
from tests.fixture_cases import DECODERS, FIXTURES

TEXT = "the quick brown fox jumps over the lazy dog"


def _full_components(explainer, text: str):
    """Every row's components, the last layer's feed-forward block left out (as the trace does
    without the head: tested on its own below)."""
    batch = explainer.text_encoder.encode([text])
    _, tensors = explainer.session.run(batch)
    attention = [attention_components(b, t.probs[0], t.values[0], t.residual[0], t.output[0])
                 for b, t in zip(explainer.blocks, tensors)]
    ffn = [ffn_components(t.output[0] if b.kind != "parallel" else t.output[0] + t.residual[0],
                          tensors[layer + 1].residual[0]) if b.kind in ("pre", "sandwich", "parallel") else None
           for layer, (b, t) in enumerate(zip(explainer.blocks[:-1], tensors[:-1]))]
    return attention, ffn, tensors


@pytest.fixture(scope="module")
def llama():
    from alti_onnx import Explainer

    with Explainer(FIXTURES / "tiny-llama") as explainer:
        yield explainer


@pytest.mark.parametrize("threshold,renormalize", [(0.0, False), (0.04, False), (0.04, True), (0.15, False)])
def test_trace_equals_the_full_graph_pruned(llama, threshold, renormalize):
    """Only the rows on a route are decomposed, yet the graph is the one every row's components give."""
    attention, ffn, _ = _full_components(llama, TEXT)
    found = llama.routes(TEXT, RouteQuery(threshold, renormalize, lens=0))
    last = found.edges and [e for e in found.edges if e.layer == len(attention) - 1 and e.kind.startswith("ffn")]
    # the last layer's feed-forward shares come from the head: take them from the trace itself
    size = attention[0].residual.shape[0]
    shares = np.zeros((size, 2))
    for edge in last:
        shares[edge.target, 0 if edge.kind == "ffn_residual" else 1] = edge.weight
    if renormalize:  # the trace's are renormalized: the raw shares of the last layer from the unpruned trace
        edges = llama.routes(TEXT, RouteQuery(0.0, lens=0)).edges
    else:
        edges = route_edges(attention, [*ffn, shares])
    want = prune(edges, len(attention), [True] * len(attention), size - 1, threshold, renormalize)
    got_edges, want_edges = sorted(found.edges, key=_key), sorted(want.edges, key=_key)
    assert [_key(e) for e in got_edges] == [_key(e) for e in want_edges]
    np.testing.assert_allclose([e.weight for e in got_edges], [e.weight for e in want_edges], atol=1e-12)
    assert found.graph.nodes == want.nodes and len(want.edges) >= 4
    assert found.position == size - 1
    assert all(e.weight >= threshold for e in found.edges) or renormalize
    assert all(e.kind != "attention" or e.source <= e.target for e in found.edges)  # nothing from a later position


def _key(edge):
    return (edge.layer, edge.kind, -1 if edge.head is None else edge.head, -1 if edge.source is None else edge.source,
            edge.target)


def test_every_edge_weight_is_its_component(llama):
    """At threshold 0 the graph holds every positive component into a route: each edge's weight is
    the component of its row, and each node's incoming weights sum to 1."""
    attention, ffn, _ = _full_components(llama, TEXT)
    found = llama.explain(TEXT, routes=RouteQuery(0.0, lens=0)).routes
    sites = ["ffn"] * len(attention)
    incoming = defaultdict(float)
    for edge in found.edges:
        incoming[edge.ends(sites)[1]] += edge.weight
        if edge.kind == "attention":
            assert edge.weight == pytest.approx(attention[edge.layer].heads[edge.head, edge.target, edge.source],
                                                abs=1e-12)
        elif edge.kind == "attention_residual":
            assert edge.weight == pytest.approx(attention[edge.layer].residual[edge.target], abs=1e-12)
        elif edge.layer < len(ffn):
            column = 1 if edge.kind == "ffn" else 0
            assert edge.weight == pytest.approx(ffn[edge.layer][edge.target, column], abs=1e-12)
    np.testing.assert_allclose(list(incoming.values()), 1.0, atol=1e-9)
    assert len(incoming) > len(attention)  # more than one position is on a route


def test_routes_alone_equal_the_explanations(llama):
    """``Explainer.routes`` (no ALTI) gives what ``explain(..., routes=...)`` gives, and batches too."""
    query = RouteQuery(0.02)
    alone = llama.routes([TEXT, "a dog"], query)
    within = [e.routes for e in llama.explain([TEXT, "a dog"], routes=query)]
    assert [r.to_dict() for r in alone] == [r.to_dict() for r in within]
    single = llama.routes("a dog", query)
    assert single.to_dict() == alone[1].to_dict()  # padding in the batch changes nothing


@pytest.mark.parametrize("arch", DECODERS)
def test_last_ffn_and_the_lens_against_the_reference(arch, tmp_path):
    """The last layer's feed-forward share at the prediction (from the final residual the head gives)
    and the logit lens of every node and head against the Hugging Face model in float64."""
    pytest.importorskip("transformers")
    from alti_onnx import Explainer
    from models.reference import reference_captures
    from models.reference_routes import final_residual, logit_lens
    from models.tiny import build_tiny_hf_model, load_saved

    model = load_saved(build_tiny_hf_model(arch, tmp_path / "hf"))
    folder = FIXTURES / f"tiny-{arch}"
    text = json.loads((folder / "texts.json").read_text())[1]
    with Explainer(folder) as explainer:
        found = explainer.routes(text, RouteQuery(0.0, lens=3))
        ids = explainer.tokenizer.encode(text).ids
    captures, _ = reference_captures(model, ids)
    z = final_residual(model, ids)
    target = len(ids) - 1
    last = len(captures) - 1
    capture = captures[last]
    if explainer.blocks[last].kind in ("pre", "sandwich", "parallel"):
        y = capture.block_output  # the stream after the attention (a parallel block's x + a)
        want = ffn_components(y[target:target + 1], z[target:target + 1])[0]
        got = {e.kind: e.weight for e in found.edges if e.layer == last and e.kind.startswith("ffn")}
        np.testing.assert_allclose([got.get("ffn_residual", 0.0), got.get("ffn", 0.0)], want, atol=1e-5)
    # the lens of the embeddings and of the final stream, from the reference's own vectors
    vectors = {("embedding", None, j): captures[0].x[j] for j in range(len(ids))}
    vectors[found.graph.nodes[-1]] = z[target]
    for node, vector in vectors.items():
        if node not in found.lens:
            continue
        want = logit_lens(model, vector[None])[0]
        for item in found.lens[node]:
            assert item.logit == pytest.approx(want[item.id], abs=1e-4)
        assert [t.id for t in found.lens[node]][:1] == [int(np.argmax(want))]
    assert len(found.heads) == len(captures) * explainer.blocks[0].num_heads


def test_the_lens_of_the_prediction_is_the_models_next_token(llama):
    explanation = llama.explain(TEXT, routes=RouteQuery())
    final = explanation.routes.graph.nodes[-1]
    assert final == ("ffn", explanation.num_layers - 1, len(explanation.tokens) - 1)
    assert explanation.routes.lens[final][0].id == explanation.next_token.index


@pytest.mark.parametrize("arch", ["bert", "roberta", "electra", "xlm-roberta"])
def test_post_ln_feed_forward_shares_against_the_reference(arch, tmp_path):
    """A post-LN encoder's feed-forward shares, read through its second norm (found by structure),
    against the Hugging Face model's y, f and norm by hooks in float64; every layer's ffn and
    ffn_residual edges at threshold 0 sum to 1 per node."""
    pytest.importorskip("transformers")
    from alti_onnx import Explainer
    from models.reference_routes import post_ln_ffn_shares
    from models.tiny import build_tiny_hf_model, load_saved

    model = load_saved(build_tiny_hf_model(arch, tmp_path / "hf"))
    folder = FIXTURES / f"tiny-{arch}"
    text = json.loads((folder / "texts.json").read_text())[1]
    with Explainer(folder) as explainer:
        found = explainer.routes(text, RouteQuery(0.0))
        encoding = explainer.tokenizer.encode(text)
    want = post_ln_ffn_shares(model, encoding.ids, encoding.type_ids)
    checked = 0
    for edge in found.edges:
        if edge.kind in ("ffn", "ffn_residual"):
            expected = want[edge.layer][edge.target, 1 if edge.kind == "ffn" else 0]
            assert edge.weight == pytest.approx(expected, abs=1e-5), edge
            checked += 1
    assert checked >= 2 * len(want) and found.position == 0
    last = len(want) - 1
    assert {n for n in found.graph.nodes if n[1] == last} == {("attention", last, 0), ("ffn", last, 0)}


def test_an_encoder_traces_to_its_first_token_or_a_position():
    from alti_onnx import Explainer

    with Explainer(FIXTURES / "tiny-bert") as explainer:
        first = explainer.routes(TEXT, RouteQuery(0.0))
        assert first.position == 0 and not first.heads and not first.lens  # no language-model head: no lens
        assert {e.kind for e in first.edges} == {"attention", "attention_residual", "ffn", "ffn_residual"}
        other = explainer.routes(TEXT, RouteQuery(0.0, position=-1))
        assert other.position == len(explainer.tokenizer.encode(TEXT).ids) - 1


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(2, 9), min_size=1, max_size=4), st.integers(0, 2 ** 31 - 1), st.data())
def test_the_spilled_store_reads_what_the_held_one_does(sizes, seed, data):
    rng = np.random.default_rng(seed)
    held, spilled = ProbsStore(), ProbsStore(memory_bytes=0)
    layers = [rng.random((3, n, n)).astype(np.float32) for n in sizes]
    for probs in layers:
        held.append(probs)
        spilled.append(probs)
    assert spilled.spilled and not held.spilled
    for layer, probs in enumerate(layers):
        rows = np.array(data.draw(st.lists(st.integers(0, len(probs[0]) - 1), min_size=1, max_size=5)))
        np.testing.assert_array_equal(spilled.rows(layer, rows), probs[:, rows])
        np.testing.assert_array_equal(held.rows(layer, rows), probs[:, rows])
    spilled.close()


def test_the_record_reads_back(llama):
    found = llama.routes(TEXT, RouteQuery(0.05, renormalize=True))
    record = json.loads(json.dumps(found.to_dict(), allow_nan=False))
    assert set(record) == {"threshold", "renormalize", "position", "nodes", "edges", "heads"}
    assert set(record["edges"][0]) == {"layer", "kind", "head", "source", "target", "weight"}
    assert {e["kind"] for e in record["edges"]} <= {"attention", "attention_residual", "ffn", "ffn_residual"}
    assert RouteExplanation.from_dict(record).to_dict() == record
    incoming = defaultdict(float)
    for edge in found.edges:
        incoming[edge.ends(["ffn"] * 2)[1]] += edge.weight
    np.testing.assert_allclose(list(incoming.values()), 1.0, atol=1e-9)  # renormalized


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), True, "0.1"])
def test_a_bad_threshold_is_refused(bad):
    with pytest.raises(InputError, match="threshold"):
        RouteQuery(bad)


def test_a_position_outside_the_text_is_one_line(llama):
    with pytest.raises(InputError, match="outside"):
        llama.routes("a dog", RouteQuery(position=40))


def test_a_mean_pooled_encoder_routes_to_every_position(tmp_path):
    """The prediction of a mean-pooled sentence encoder reads every position: each position's last
    node is a prediction node; a position asked for narrows it to one."""
    from alti_onnx import Explainer
    from tests.test_pooling import sentence_encoder

    with Explainer(sentence_encoder(tmp_path), cache=False) as explainer:
        size = len(explainer.tokenizer.encode(TEXT).ids)
        every = explainer.routes(TEXT, RouteQuery(0.0))
        one = explainer.routes(TEXT, RouteQuery(0.0, position=3))
    assert every.position == "mean" and one.position == 3
    last = len(explainer.blocks) - 1
    assert {e.target for e in every.edges if e.layer == last} == set(range(size))
    assert {e.target for e in one.edges if e.layer == last} == {3}
    assert every.to_dict()["position"] == "mean" and RouteExplanation.from_dict(every.to_dict()).position == "mean"
    assert "every position" in every.table(explainer.tokenizer.encode(TEXT).tokens).title


def test_routes_beside_a_classifiers_logit():
    """--logit and --routes in one run of a post-LN classifier: the routes equal the routes alone,
    whether the logit's session was narrowed before (a logit explained first) or not."""
    from alti_onnx import Explainer
    from alti_onnx.results.logit import LogitQuery

    with Explainer(FIXTURES / "tiny-bert-classifier") as explainer:
        alone = explainer.routes(TEXT, RouteQuery(0.0)).to_dict()
        first = explainer.explain(TEXT, logit=LogitQuery(), routes=RouteQuery(0.0))
        again = explainer.explain(TEXT, logit=LogitQuery(), routes=RouteQuery(0.0))
    with Explainer(FIXTURES / "tiny-bert-classifier") as explainer:
        explainer.explain(TEXT, logit=LogitQuery())  # the logit's session narrowed without the routes' tensors
        later = explainer.explain(TEXT, logit=LogitQuery(), routes=RouteQuery(0.0))
    for explanation in (first, again, later):  # the same graph; weights up to onnxruntime's rounding in other sessions
        found = explanation.routes.to_dict()
        assert [{**e, "weight": 0} for e in found["edges"]] == [{**e, "weight": 0} for e in alone["edges"]]
        np.testing.assert_allclose([e["weight"] for e in found["edges"]], [e["weight"] for e in alone["edges"]],
                                   atol=1e-6)
        assert explanation.logit.reconstruction_error < 1e-4
    assert any(e["kind"] == "ffn" for e in alone["edges"])


def test_the_table_lists_the_heaviest_edges_by_layer(llama):
    from alti_onnx.results import routes as module

    found = llama.routes(TEXT, RouteQuery(0.0))
    view = found.table(llama.tokenizer.encode(TEXT).tokens)
    shown = [row[-1] for row in view.rows]
    components = [e.weight for e in found.edges if e.kind in ("attention", "ffn")]
    assert len(shown) == min(module.TABLE_EDGES, len(components))
    assert min(shown) >= sorted(components, reverse=True)[len(shown) - 1]  # the heaviest
    assert not any("residual" in row[1] for row in view.rows)
    layers = [int(row[0]) for row in view.rows]
    assert layers == sorted(layers, reverse=True)  # top layer first
    assert "the prediction's node promotes" in view.footer


@pytest.mark.parametrize("name", ["bart", "marian", "m2m100", "t5"])
def test_seq2seq_routes_against_the_reference(name, tmp_path):
    """An encoder-decoder's routes: every edge of the decoder's graph (self-attention, cross-attention
    from encoder positions, feed-forward) and of the encoder's graph (to the positions the
    cross-attention edges read) equals the component contributions of the Hugging Face model's blocks
    by hooks in float64; the record reads back."""
    pytest.importorskip("transformers")
    from transformers import AutoModelForSeq2SeqLM

    from alti_onnx import Explainer
    from models.reference_math import component_contributions
    from models.reference_routes import post_ln_shares, seq2seq_ffn_streams
    from models.reference_seq2seq import seq2seq_captures
    from models.seq2seq import build_hf_model

    folder = FIXTURES / f"tiny-{name}-seq2seq"
    texts = json.loads((folder / "texts.json").read_text())
    source, target = texts["sources"][0], texts["targets"][0]
    with Explainer(folder) as explainer:
        found = explainer.explain(source, target, routes=RouteQuery(0.0))
        labels = explainer.text_encoder.token_ids([target])[0]
        ids = explainer.tokenizer.encode(source).ids
    model = AutoModelForSeq2SeqLM.from_pretrained(str(build_hf_model(name, tmp_path / "hf")), attn_implementation="eager")
    encoder, own, cross = seq2seq_captures(model, ids, labels)
    kind = explainer.encoder_blocks[0].kind
    streams = seq2seq_ffn_streams(model, ids, labels, kind)
    routes = found.routes
    assert routes.position == len(labels) - 1 and routes.decoder.graph.crossed
    checked = defaultdict(int)
    for graph, captures in ((routes.decoder.graph, {"attention": own, "cross_attention": cross}),
                            (routes.encoder, {"attention": encoder})):
        for edge in graph.edges:
            base = edge.kind.removesuffix("_residual")
            if base == "ffn":  # the stream after the (cross-)attention y, and after the block
                blocks = captures.get("cross_attention", captures["attention"])
                stream = streams["encoder" if graph is routes.encoder else "decoder"]
                i, layer = edge.target, edge.layer
                y = blocks[layer].block_output[i:i + 1]
                if kind == "post":  # through the layer's second norm, at u = y + f
                    shares = post_ln_shares(y, stream["u"][layer][i:i + 1], *stream["norm"][layer])[0]
                else:  # the next layer's input, or after the last the input of the stack's final norm
                    after = stream["final"] if layer + 1 == len(blocks) else captures["attention"][layer + 1].x
                    shares = ffn_components(y, after[i:i + 1])[0]
                assert edge.weight == pytest.approx(shares[1 if edge.kind == "ffn" else 0], abs=1e-5), edge
                checked[(graph is routes.encoder, edge.kind)] += 1
                continue
            heads, residual = component_contributions(captures[base][edge.layer])
            want = heads[edge.head, edge.target, edge.source] if edge.head is not None else residual[edge.target]
            assert edge.weight == pytest.approx(want, abs=1e-5), (graph is routes.encoder, edge)
            checked[(graph is routes.encoder, edge.kind)] += 1
    assert checked[(False, "cross_attention")] > 0 and checked[(True, "attention")] > 0
    for encoder_side in (False, True):  # every layer's feed-forward block is a node, the last one's too
        layers = {e.layer for e in (routes.encoder if encoder_side else routes.decoder.graph).edges
                  if e.kind.startswith("ffn")}
        assert layers == set(range(len(encoder if encoder_side else own))), (encoder_side, layers)
    assert checked[(False, "ffn")] > 0
    sources = {e.source for e in routes.decoder.edges if e.kind == "cross_attention"}
    last = len(encoder) - 1
    assert {n[2] for n in routes.encoder.nodes if n[1] == last} == sources  # the encoder's graph ends where they read
    record = json.loads(json.dumps(found.to_record(), allow_nan=False))["routes"]
    from alti_onnx.results.routes import Seq2SeqRoutes
    assert Seq2SeqRoutes.from_dict(record).to_dict() == record
    view = routes.table(found.decoder_tokens, found.tokens)
    assert any(row[1].startswith("cross_attention") for row in view.rows) or not sources


def test_routes_follow_a_mean_target_or_refuse_it(llama):
    """--target mean leads the routes to every position (an encoder) or is refused in one line (a
    language model, an encoder-decoder): never traced silently to another position."""
    from alti_onnx import Explainer

    with Explainer(FIXTURES / "tiny-bert-classifier") as explainer:
        found = explainer.routes(TEXT, RouteQuery(0.0, position="mean"))
        size = len(explainer.tokenizer.encode(TEXT).ids)
    assert found.position == "mean" and {e.target for e in found.edges if e.layer == 1} == set(range(size))
    with pytest.raises(InputError, match="one next-token prediction"):
        llama.routes(TEXT, RouteQuery(position="mean"))
    with Explainer(FIXTURES / "tiny-t5-seq2seq") as explainer, pytest.raises(InputError, match="not 'mean'"):
        explainer.explain("a dog", "un chien", routes=RouteQuery(position="mean"))


@pytest.mark.parametrize("given,want", [(-0.0, 0.0), (np.float32(0.25), 0.25), (1, 1.0)])
def test_a_threshold_is_any_real_number_from_0_to_1(given, want):
    query = RouteQuery(given, lens=np.int64(3), position=np.int64(2))
    assert query.threshold == want and str(query.threshold) != "-0.0" and query.lens == 3 and query.position == 2
    with pytest.raises(InputError, match="threshold"):
        RouteQuery(10 ** 400)


def test_a_misread_block_or_nan_after_it_is_an_error_not_a_route(llama, monkeypatch):
    """The routes alone (no ALTI) still check each block their rows are decomposed from; NaN in the
    stream after a feed-forward block is refused, not turned into a node without edges."""
    from alti_onnx.decomposition import route_layers
    from alti_onnx.errors import NonFiniteError, SelfCheckError
    from alti_onnx.layouts.routes import StreamSites
    from alti_onnx.runtime.linear_graph import PostNormSite

    real = route_layers.attention_components

    def misread(block, probs, *args, **kwargs):  # the attention the trace reads is off by 1%
        return real(block, probs * 1.01, *args, **kwargs)

    monkeypatch.setattr(route_layers, "attention_components", misread)
    with pytest.raises(SelfCheckError, match="self-check failed: layer 1's attention"):
        llama.routes(TEXT)
    monkeypatch.undo()
    site = PostNormSite("y", "u", "z", "gamma", None, 1e-5)
    sites = StreamSites({0: (1, site)}, {0: (np.ones(2), None)}, None, 2)
    with pytest.raises(NonFiniteError, match="after a feed-forward block"):
        sites.of_row({"u": np.array([[[1.0, np.nan]]]), "z": np.zeros((1, 1, 2))}, 0, slice(None))


def test_a_post_ln_sum_not_found_is_said(monkeypatch):
    """A post-LN layer whose residual sum and norm are not found keeps its feed-forward block in the
    stream: said once (a ModelWarning), not silently."""
    from alti_onnx import Explainer
    from alti_onnx.errors import ModelWarning
    from alti_onnx.layouts import routes as module

    monkeypatch.setattr(module, "post_norm_site", lambda graph, stream: None)
    with Explainer(FIXTURES / "tiny-bert") as explainer, pytest.warns(ModelWarning, match="not split out"):
        found = explainer.routes(TEXT, RouteQuery(0.0))
    assert not any(e.kind.startswith("ffn") for e in found.edges)
