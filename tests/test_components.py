"""Component contributions (issue 26's first step, alti_onnx/decomposition/components.py) against the
definitions written out with loops, on random blocks of every kind (hypothesis), and against the
float64 reference on the Hugging Face model of every fixture family."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from alti_onnx.decomposition.components import attention_components, ffn_components
from tests.fixture_cases import DECODERS, ENCODERS, FIXTURES
from tests.test_properties import exposed_output, naive_alti, random_case, shapes


def naive_components(block, probs, values, residual):
    """Each (head, source) term and the residual, read through the block's norm as ALTI reads them,
    and each one's proximity to the block's output, normalized over all parts of a row."""
    heads, seq, _ = probs.shape
    group = heads // values.shape[0]
    d = block.head_size
    bias = np.zeros(block.hidden_size) if block.out_proj_bias is None else block.out_proj_bias
    terms = np.zeros((heads, seq, seq, block.hidden_size))
    for h in range(heads):
        for i in range(seq):
            for j in range(seq):
                terms[h, i, j] = probs[h, i, j] * values[h // group, j] @ block.out_proj_weight[h * d:(h + 1) * d]
    attention = terms.sum((0, 2)) + bias
    centre = (lambda t: t) if block.norm_rms else (lambda t: t - t.mean(-1, keepdims=True))
    if block.kind == "post":  # y = LN(x + a): every part centred, scaled by gamma / sigma(x + a)
        sigma = np.sqrt(centre(residual + attention).var(-1) + block.norm_epsilon)
        mapped = block.norm_weight * centre(terms) / sigma[None, :, None, None]
        own = block.norm_weight * centre(residual) / sigma[:, None]
        y = mapped.sum((0, 2)) + own + block.norm_weight * centre(bias) / sigma[:, None] + block.norm_bias
    elif block.kind == "sandwich":  # y = x + n(a): the attention terms through the norm, the residual as it is
        s = np.sqrt((np.square(attention).mean(-1) if block.norm_rms else attention.var(-1)) + block.norm_epsilon)
        mapped = block.norm_weight * centre(terms) / s[None, :, None, None]
        own = residual
        y = residual + mapped.sum((0, 2)) + block.norm_weight * centre(bias) / s[:, None] + block.norm_bias
    else:
        mapped, own, y = terms, residual, residual + attention
    norm_y = np.abs(y).sum(-1)
    c = np.zeros((seq, heads * seq + 1))
    for i in range(seq):
        for h in range(heads):
            for j in range(seq):
                if probs[h, i, j] != 0:
                    c[i, h * seq + j] = max(0.0, norm_y[i] - np.abs(y[i] - mapped[h, i, j]).sum())
        c[i, -1] = max(0.0, norm_y[i] - np.abs(y[i] - own[i]).sum())
    totals = c.sum(-1, keepdims=True)
    c = np.divide(c, totals, out=np.zeros_like(c), where=totals > 0)
    return c[:, :-1].reshape(seq, heads, seq).transpose(1, 0, 2), c[:, -1], y


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_attention_components_equal_naive_loops(shape):
    block, probs, values, residual, causal = random_case(shape)
    want_heads, want_residual, y = naive_components(block, probs, values, residual)
    np.testing.assert_allclose(y, naive_alti(block, probs, values, residual)[2], atol=1e-9)  # the same whole as ALTI
    got = attention_components(block, probs, values, residual, exposed_output(block, y, residual))
    np.testing.assert_allclose(got.heads, want_heads, atol=1e-9)
    np.testing.assert_allclose(got.residual, want_residual, atol=1e-9)
    totals = got.heads.sum((0, 2)) + got.residual
    np.testing.assert_allclose(totals[totals > 0], 1.0, atol=1e-12)  # every row's shares sum to 1
    if causal:  # no edge from a later position
        assert not np.any(np.triu(got.heads.sum(0), k=1))


def test_ffn_components_by_hand():
    stream = np.array([[1.0, 0.0], [2.0, -2.0]])
    after = np.array([[3.0, 0.0], [2.0, -2.0]])  # the FFN adds (2, 0) to the first, nothing to the second
    shares = ffn_components(stream, after)
    # first row: whole (3, 0): stream 3 - 2 = 1, output 3 - 1 = 2 -> 1/3, 2/3; second: all the stream
    np.testing.assert_allclose(shares, [[1 / 3, 2 / 3], [1.0, 0.0]])


@pytest.mark.torch
@pytest.mark.parametrize("arch", ENCODERS + DECODERS)
def test_components_match_the_reference(arch, tmp_path):
    """Every fixture family: the attention components from the ONNX model's block tensors against
    models.reference_math.component_contributions on the Hugging Face model's float64 captures; and,
    for pre-LN and sandwich blocks, the feed-forward shares from consecutive layers' inputs."""
    pytest.importorskip("transformers")
    import json

    from alti_onnx import Explainer
    from models.reference import reference_captures
    from models.reference_math import component_contributions
    from models.tiny import build_tiny_hf_model, load_saved

    model = load_saved(build_tiny_hf_model(arch, tmp_path / "hf"))
    folder = FIXTURES / f"tiny-{arch}"
    text = json.loads((folder / "texts.json").read_text())[1]
    with Explainer(folder) as explainer:
        batch = explainer.text_encoder.encode([text])
        _, tensors = explainer.session.run(batch)
        encoding = explainer.tokenizer.encode(text)
        captures, _ = reference_captures(model, encoding.ids, token_type_ids=np.asarray(encoding.type_ids))
        for layer, (block, found, capture) in enumerate(zip(explainer.blocks, tensors, captures)):
            got = attention_components(block, found.probs[0], found.values[0], found.residual[0], found.output[0])
            want_heads, want_residual = component_contributions(capture)
            np.testing.assert_allclose(got.heads, want_heads, atol=1e-5, err_msg=f"layer {layer}")
            np.testing.assert_allclose(got.residual, want_residual, atol=1e-5, err_msg=f"layer {layer}")
            if block.kind in ("pre", "sandwich") and layer + 1 < len(captures):
                shares = ffn_components(found.output[0], tensors[layer + 1].residual[0])
                want = ffn_components(capture.block_output, captures[layer + 1].x)
                np.testing.assert_allclose(shares, want, atol=1e-5, err_msg=f"layer {layer}")


@pytest.fixture(scope="module")
def llama_routes():
    """The tiny Llama's components for one text: every layer's attention, the feed-forward shares of
    all but the last layer (whose output the stream does not hand over)."""
    from alti_onnx import Explainer

    with Explainer(FIXTURES / "tiny-llama") as explainer:
        batch = explainer.text_encoder.encode(["the quick brown fox jumps over the lazy dog"])
        _, tensors = explainer.session.run(batch)
        attention = [attention_components(b, t.probs[0], t.values[0], t.residual[0], t.output[0])
                     for b, t in zip(explainer.blocks, tensors)]
        ffn = [ffn_components(t.output[0], tensors[layer + 1].residual[0]) for layer, t in enumerate(tensors[:-1])]
    return attention, ffn + [None]


def test_route_graph_weights_and_pruning(llama_routes):
    from collections import defaultdict

    from alti_onnx.decomposition.routes import prune, route_edges

    attention, ffn = llama_routes
    layers, size = len(attention), attention[0].residual.shape[0]
    has_ffn = [shares is not None for shares in ffn]
    sites = ["ffn" if f else "attention" for f in has_ffn]
    edges = route_edges(attention, ffn)
    incoming = defaultdict(float)
    for edge in edges:
        incoming[edge.ends(sites)[1]] += edge.weight
        assert edge.kind != "attention" or edge.source <= edge.target  # causal: nothing from a later position
    np.testing.assert_allclose(list(incoming.values()), 1.0, atol=1e-9)  # every node's incoming weights
    target = size - 1
    final = (sites[-1], layers - 1, target)
    for threshold, renormalize in ((0.0, False), (0.04, False), (0.04, True), (0.2, True)):
        graph = prune(edges, layers, has_ffn, target, threshold, renormalize)
        kept = [edge.ends(sites) for edge in graph.edges]
        assert all(edge.weight >= threshold for edge in graph.edges) or renormalize
        into = defaultdict(list)
        for source, node in kept:
            into[node].append(source)
        reached, stack = {final}, [final]  # every kept edge leads on to the prediction's node
        while stack:
            for source in into[stack.pop()]:
                if source is not None and source not in reached:
                    reached.add(source)
                    stack.append(source)
        assert all(node in reached for _, node in kept)
        assert all(source is None or source in reached for source, _ in kept)
        if renormalize:
            totals = defaultdict(float)
            for edge, (_, node) in zip(graph.edges, kept):
                totals[node] += edge.weight
            assert all(total <= 1.0 + 1e-9 for total in totals.values())
        if threshold == 0.0:  # nothing pruned but what cannot reach the prediction
            assert final in graph.nodes and ("embedding", None, 0) in graph.nodes
            assert {e.target for e in graph.edges if e.layer == layers - 1} == {target}
        record = graph.to_dict()
        assert record["threshold"] == threshold and len(record["edges"]) == len(graph.edges)
        assert set(record["edges"][0]) == {"layer", "kind", "head", "source", "target", "weight"}
