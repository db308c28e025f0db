"""Invariants of the ALTI core (hypothesis) and a naive, loop-by-loop check of its arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alti_onnx import Explainer, SelfCheckError
from alti_onnx.decomposition.contributions import layer_contributions, rollout
from graph_rewrites import AttentionBlock

FIXTURES = Path(__file__).parent / "fixtures"


#: Block kinds (docs/alti.md) as drawn: the kind, and whether its norm is an RMSNorm.
KINDS = {"post": ("post", False), "pre": ("pre", False), "sandwich": ("sandwich", True),
         "sandwich-layer-norm": ("sandwich", False), "parallel": ("parallel", False)}


def random_block(rng, heads, kv_heads, head_size, placement, with_bias=True):
    width = heads * head_size
    kind, rms = KINDS[placement]
    normed = kind in ("post", "sandwich")
    return AttentionBlock(
        layer=0,
        num_heads=heads,
        head_size=head_size,
        kind=kind,
        probs="p", values="v", residual="x", output="y",
        norm_input="u" if kind == "post" else None,
        out_proj_weight=rng.normal(size=(width, width)),
        out_proj_bias=rng.normal(size=width) if with_bias else None,
        norm_weight=rng.uniform(0.5, 1.5, width) if normed else None,
        norm_bias=(np.zeros(width) if rms else rng.normal(0, 0.1, width)) if normed else None,
        norm_epsilon=1e-5 if normed else None,
        norm_rms=rms,
    )


def random_inputs(rng, block, kv_heads, seq, causal):
    scores = rng.normal(size=(block.num_heads, seq, seq)) * 2
    if causal:
        scores = np.where(np.tril(np.ones((seq, seq), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    values = rng.normal(size=(kv_heads, seq, block.head_size))
    residual = rng.normal(size=(seq, block.hidden_size)) * 3
    return probs, values, residual


def naive_alti(block, probs, values, residual):
    """docs/alti.md written out with explicit loops over i, j and h: the slow, obvious version."""
    heads, seq, _ = probs.shape
    group = heads // values.shape[0]
    d = block.head_size
    bias = np.zeros(block.hidden_size) if block.out_proj_bias is None else block.out_proj_bias
    T = np.zeros((seq, seq, block.hidden_size))
    for i in range(seq):
        for j in range(seq):
            for h in range(heads):
                T[i, j] += probs[h, i, j] * values[h // group, j] @ block.out_proj_weight[h * d:(h + 1) * d]
            if i == j:
                T[i, j] += residual[j]
    u = T.sum(1) + bias
    if block.kind == "post":  # y = LN(x + a)
        sigma = np.sqrt(u.var(-1) + block.norm_epsilon)
        Tp = block.norm_weight * (T - T.mean(-1, keepdims=True)) / sigma[:, None, None]
        y = Tp.sum(1) + block.norm_weight * (bias - bias.mean()) / sigma[:, None] + block.norm_bias
    elif block.kind == "sandwich":  # y = x + n(a): the norm scales the attention terms only
        X = np.zeros_like(T)
        X[np.arange(seq), np.arange(seq)] = residual
        A = T - X
        a = u - residual
        centre = (lambda t: t) if block.norm_rms else (lambda t: t - t.mean(-1, keepdims=True))
        s = np.sqrt((np.square(a).mean(-1) if block.norm_rms else a.var(-1)) + block.norm_epsilon)
        Tp = block.norm_weight * centre(A) / s[:, None, None] + X
        y = Tp.sum(1) + block.norm_weight * centre(bias) / s[:, None] + block.norm_bias
    else:  # pre and parallel: y = x + a
        Tp, y = T, u
    c = np.maximum(0, np.abs(y).sum(-1)[:, None] - np.abs(y[:, None] - Tp).sum(-1))
    norms = np.linalg.norm(Tp, axis=-1)
    return _rows_to_one(c), _rows_to_one(norms), y


def exposed_output(block, y, residual):
    """What the block's graph exposes: y itself, or a parallel block's attention output y - x."""
    return y - residual if block.kind == "parallel" else y


def _rows_to_one(matrix):
    totals = matrix.sum(-1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


shapes = st.tuples(
    st.sampled_from([(1, 1), (2, 2), (4, 2), (4, 1)]),  # (heads, kv heads)
    st.integers(1, 4),  # head size
    st.integers(1, 9),  # sequence length
    st.sampled_from(sorted(KINDS)),
    st.booleans(),  # causal
    st.integers(0, 2**31 - 1),
)


def random_case(shape):
    """A random block and its inputs for one drawn shape; also whether the attention is causal."""
    (heads, kv_heads), head_size, seq, placement, causal, seed = shape
    rng = np.random.default_rng(seed)
    block = random_block(rng, heads, kv_heads, head_size, placement)
    return (block, *random_inputs(rng, block, kv_heads, seq, causal), causal)


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_core_equals_naive_loops(shape):
    block, probs, values, residual, causal = random_case(shape)
    want, want_norms, y = naive_alti(block, probs, values, residual)
    y = exposed_output(block, y, residual)
    got = layer_contributions(block, probs, values, residual, y, dtype=np.float64)
    np.testing.assert_allclose(got.contributions, want, atol=1e-10)
    np.testing.assert_allclose(got.norms, want_norms, atol=1e-10)
    # The default float32 pass: c = ||y|| - ||y - T'|| cancels, so on these random, tiny-width
    # (D down to 1) blocks float32 rounding reaches ~1e-4; real models meet 1e-4 against the
    # reference (tests/test_fixtures.py, test_minilm.py).
    fast = layer_contributions(block, probs, values, residual, y)
    np.testing.assert_allclose(fast.contributions, want, atol=1e-3)
    assert got.reconstruction_error < 1e-10


@settings(max_examples=60, deadline=None)
@given(shapes)
def test_rows_sum_to_one_no_negatives(shape):
    block, probs, values, residual, causal = random_case(shape)
    y = np.zeros_like(residual)
    whole = layer_contributions(block, probs, values, residual, y, dtype=np.float64).contributions
    assert np.all(whole >= 0)
    sums = whole.sum(-1)
    assert np.all(np.isclose(sums, 1.0) | (sums == 0.0))
    if causal:
        assert np.all(np.triu(whole, k=1) == 0.0)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_rollout_is_the_product_and_stays_row_stochastic(layers, seq, seed):
    rng = np.random.default_rng(seed)
    stack = rng.uniform(size=(layers, seq, seq))
    stack /= stack.sum(-1, keepdims=True)
    rolled = rollout(stack)
    expected = stack[0]
    for layer in range(1, layers):
        expected = stack[layer] @ expected
    np.testing.assert_allclose(rolled[-1], expected, atol=1e-12)
    np.testing.assert_allclose(rolled.sum(-1), 1.0, atol=1e-12)


@pytest.fixture(scope="module", params=["bert", "modernbert", "bloom", "gemma3", "gpt-neox"])
def tiny_model(request):
    """One fixture per block kind and layout: post-LN, pre-LN with local attention, heads folded into
    the batch (ALiBi), sandwich, parallel."""
    folder = FIXTURES / f"tiny-{request.param}"
    words = sorted({w for t in json.loads((folder / "texts.json").read_text()) for w in t.lower().split() if w.isalpha()})
    return Explainer(folder), words


@settings(max_examples=15, deadline=None)
@given(st.data())
def test_padding_changes_nothing(tiny_model, data):
    explainer, words = tiny_model
    texts = data.draw(st.lists(st.lists(st.sampled_from(words), min_size=1, max_size=20).map(" ".join), min_size=2, max_size=4))
    try:
        alone_each = [explainer.explain(text) for text in texts]
    except SelfCheckError as exc:
        # Random weights can leave a token with no positive contribution (a degenerate block, e.g.
        # 'that lazy' in tiny-gemma3's first layer): padded into a batch, it must fail the same way.
        with pytest.raises(SelfCheckError, match="receives no positive contribution"):
            explainer.explain(texts)
        assert "receives no positive contribution" in str(exc)
        return
    batched = explainer.explain(texts)
    for in_batch, alone in zip(batched, alone_each):
        assert alone.input_ids == in_batch.input_ids
        np.testing.assert_allclose(in_batch.contributions, alone.contributions, atol=1e-6)
        np.testing.assert_allclose(in_batch.rollout, alone.rollout, atol=1e-6)
        np.testing.assert_allclose(in_batch.rollout.sum(-1), 1.0, atol=1e-9)
        assert np.all(in_batch.contributions >= 0)


def test_a_degenerate_token_fails_alone_and_padded_alike():
    """Hypothesis found it: in tiny-gemma3's first layer, 'lazy' after 'that' has every transformed
    vector at least as far from its block output as the output is from zero (random weights)."""
    explainer = Explainer(FIXTURES / "tiny-gemma3")
    for texts in ("that lazy", ["a", "that lazy"]):
        with pytest.raises(SelfCheckError, match=r"layer 0, token 2 \('lazy'\) receives no positive contribution"):
            explainer.explain(texts)
    assert explainer.explain("a lazy").contributions.sum(-1).min() > 0  # the same token elsewhere is fine
