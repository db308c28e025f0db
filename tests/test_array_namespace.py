"""The decomposition math written once for every array namespace (issue 27): the same numbers under NumPy
and under array-api-strict, which has none of NumPy's own idioms (no fancy-index assignment, no
``out=``, no einsum, no implicit conversions) and so stands in for CuPy on a machine without a GPU.

Each block's tensors come from the fixture's own run; the NumPy results are themselves held to the
float64 reference by tests/test_reference.py, so agreeing with them within 1e-6 is agreeing with it.
"""

from __future__ import annotations

import itertools

import array_api_strict as strict
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from alti_onnx import Explainer
from alti_onnx.decomposition.alti_plus import combined_rollout, source_share
from alti_onnx.decomposition.arrays import namespace, to_numpy
from alti_onnx.decomposition.contributions import (
    LayerContributions,
    batch_contributions,
    layer_contributions,
    normalize_rows,
    rollout,
)
from alti_onnx.decomposition.logit import alti_logit, capture_layer, token_parts
from alti_onnx.decomposition.self_check import check_layer
from alti_onnx.errors import SelfCheckError
from alti_onnx.runtime.devices import Device
from tests.fixture_cases import FIXTURES

#: One family of each block kind and head layout: post-LN, pre-LN with grouped heads, sandwich, parallel,
#: post-LN without biases, and an encoder read through Keras' export.
FAMILIES = ["bert", "llama", "gemma3", "gpt-neox", "mpnet", "keras-bert", "qwen3"]
WITHIN = 1e-6
TEXTS = ["the quick brown fox jumps over the lazy dog", "a short one"]  # padded in one batch: kept positions differ


def _strict(*arrays: np.ndarray) -> list:
    return [strict.asarray(np.ascontiguousarray(a)) for a in arrays]


def _close(got, want, within: float = WITHIN) -> None:
    np.testing.assert_allclose(to_numpy(got), want, rtol=0, atol=within)


@pytest.fixture(scope="module", params=FAMILIES)
def captured(request):
    """Each block of the fixture and one example's unpadded tensors from its run."""
    with Explainer(FIXTURES / f"tiny-{request.param}") as explainer:
        batch = explainer.text_encoder.encode(TEXTS)
        _, tensors = explainer.session.run(batch)
        keep = np.flatnonzero(batch.attention_mask[1])
        yield explainer.blocks, [t.example(1, keep) for t in tensors]


def test_layer_contributions_are_the_same_in_every_namespace(captured):
    blocks, examples = captured
    for block, arrays in zip(blocks, examples):
        want = layer_contributions(block, *arrays)
        got = layer_contributions(block, *_strict(*arrays))
        assert namespace(got.contributions) is strict  # computed there, not converted at the end
        for name in ("contributions", "norms", "attention"):
            _close(getattr(got, name), getattr(want, name))
        assert abs(got.reconstruction_error - want.reconstruction_error) <= WITHIN
        assert got.output_scale == pytest.approx(want.output_scale, abs=WITHIN)
        assert 0 < np.max(to_numpy(got.contributions))  # a real matrix, not zeros on both sides


def test_float64_math_is_the_same_in_every_namespace(captured):
    blocks, examples = captured
    block, arrays = blocks[-1], examples[-1]
    want = layer_contributions(block, *arrays, dtype=np.float64)
    got = layer_contributions(block, *_strict(*arrays), dtype=np.float64)
    _close(got.contributions, want.contributions, 1e-12)
    _close(got.norms, want.norms, 1e-12)


def test_rollout_and_the_self_check_in_every_namespace(captured):
    blocks, examples = captured
    stack = np.stack([layer_contributions(b, *a, with_norms=False).contributions for b, a in zip(blocks, examples)])
    _close(rollout(strict.asarray(stack)), rollout(stack), 1e-12)
    tokens = [str(k) for k in range(stack.shape[-1])]
    good = LayerContributions(strict.asarray(stack[0]), None, None, 0.0)
    check_layer("layer 0", good, tokens, 1e-5)
    empty = stack[0].copy()
    empty[2] = 0.0
    with pytest.raises(SelfCheckError, match=r"token 2 \('2'\) receives no positive contribution"):
        check_layer("layer 0", LayerContributions(strict.asarray(empty), None, None, 0.0), tokens, 1e-5)
    with pytest.raises(SelfCheckError, match="differs from the model's block output"):
        check_layer("layer 0", LayerContributions(strict.asarray(stack[0]), None, None, 0.5), tokens, 1e-5)


def test_alti_plus_rollout_in_every_namespace():
    """ALTI+'s combination of the encoder's rollout with the decoder's self- and cross-attention
    contributions (its cross-attention contributions: the encoder-decoder test at the end)."""
    with Explainer(FIXTURES / "tiny-marian-seq2seq") as explainer:
        computed = explainer.explain("the cat sat on the mat", "le chat")
    own, cross = list(computed.self_contributions), list(computed.cross_contributions)
    combined = combined_rollout(strict.asarray(computed.encoder_rollout[-1]), _strict(*own), _strict(*cross))
    assert namespace(combined) is strict
    _close(combined, computed.combined, 1e-12)
    _close(source_share(combined, len(computed.tokens)), computed.source_share, 1e-12)
    assert 0 < float(np.min(computed.source_share)) and float(np.max(computed.source_share)) < 1


def test_alti_logit_in_every_namespace():
    with Explainer(FIXTURES / "tiny-gemma3") as explainer:  # sandwich blocks: the norm's scale and bias in the parts
        batch = explainer.text_encoder.encode(["the cat sat on the mat"])
        _, tensors = explainer.session.run(batch)
        blocks = explainer.blocks
    size = batch.input_ids.shape[1]
    position = size - 1
    examples = [t.example(0, slice(0, size)) for t in tensors]
    want_layers = [capture_layer(b, *a, position) for b, a in zip(blocks, examples)]
    got_layers = [capture_layer(b, *_strict(*a), position) for b, a in zip(blocks, examples)]
    for got, want in zip(got_layers, want_layers):
        _close(got.output, want.output, 1e-12)
        assert got.scale == pytest.approx(want.scale, rel=1e-12)
    rng = np.random.default_rng(3)
    gradient = rng.normal(size=blocks[0].hidden_size)
    final = rng.normal(size=blocks[0].hidden_size)
    contributions = [rng.random((size, size)) for _ in blocks]

    def times(vector, layer):
        return vector @ (contributions[layer] if isinstance(vector, np.ndarray) else strict.asarray(contributions[layer]))

    want = alti_logit(blocks, want_layers, gradient, final, 0.25, 1.0, 1.0, times)
    got = alti_logit(blocks, got_layers, strict.asarray(gradient), strict.asarray(final), 0.25, 1.0, 1.0, times)
    _close(got.attribution, want.attribution, 1e-9)
    _close(got.per_head, want.per_head, 1e-9)
    assert got.parts == pytest.approx(want.parts, abs=1e-9)
    assert got.reconstruction_error == pytest.approx(want.reconstruction_error, abs=1e-9)
    _close(token_parts(strict.asarray(examples[0][2]), strict.asarray(examples[0][3])),
           token_parts(examples[0][2], examples[0][3]), 1e-9)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 6)),
                  elements=st.floats(0, 1e6, allow_nan=False)))
def test_normalized_rows_are_the_same_in_every_namespace(matrix):
    got = to_numpy(normalize_rows(strict.asarray(matrix)))
    np.testing.assert_allclose(got, normalize_rows(matrix), rtol=1e-15, atol=0)
    totals = matrix.sum(-1)
    np.testing.assert_allclose(got.sum(-1)[totals > 0], 1.0, rtol=1e-12)
    assert np.all(got[totals == 0] == 0)


@pytest.mark.parametrize("family", ["bert", "llama", "gemma2"])
def test_a_whole_explanation_on_an_array_api_device_equals_numpy(family):
    """The road a GPU takes, on the CPU: IO binding leaves each segment's outputs in OrtValues, the block
    tensors reach the math through DLPack, the math runs in the device's namespace (array-api-strict
    here, CuPy on a GPU), one layer at a time, and the results come back to the host."""
    device = Device("cpu", strict, ["CPUExecutionProvider"], bound_outputs="cpu")
    texts = ["the quick brown fox", "a much longer text than the first one, padded"]
    with Explainer(FIXTURES / f"tiny-{family}") as reference, Explainer(FIXTURES / f"tiny-{family}", device=device) as on_device:
        assert on_device.device is device and on_device.session.device is device
        want = reference.explain(texts, baselines=True)
        got = on_device.explain(texts, baselines=True)
        long_want = reference.explain(texts[1], full=False, targets=[0, -1])
        long_got = on_device.explain(texts[1], full=False, targets=[0, -1])
    for g, w in zip(got, want):
        for name in ("contributions", "rollout", "attention", "norm_based"):
            assert isinstance(getattr(g, name), np.ndarray)
            np.testing.assert_allclose(getattr(g, name), getattr(w, name), rtol=0, atol=WITHIN)
        np.testing.assert_allclose(g.reconstruction_error, w.reconstruction_error, rtol=0, atol=WITHIN)
        assert g.tokens == w.tokens
        for prediction in ("prediction", "next_token"):
            found, wanted = getattr(g, prediction), getattr(w, prediction)
            assert (found is None) == (wanted is None)
            if wanted is not None:
                assert (found.index, found.label) == (wanted.index, wanted.label)
                np.testing.assert_allclose(found.probabilities, wanted.probabilities, rtol=0, atol=1e-6)
        for name, value in w.outputs.items():
            np.testing.assert_allclose(g.outputs[name], value, rtol=0, atol=1e-6)
    for target, row in long_want.attributions.items():
        np.testing.assert_allclose(long_got.attributions[target], row, rtol=0, atol=WITHIN)


def test_an_encoder_decoder_on_an_array_api_device_equals_numpy():
    device = Device("cpu", strict, ["CPUExecutionProvider"])  # the device image's road: a CPU run, one copy each
    with Explainer(FIXTURES / "tiny-bart-seq2seq") as reference, \
            Explainer(FIXTURES / "tiny-bart-seq2seq", device=device) as on_device:
        want = reference.explain("the cat sat", "le chat")
        got = on_device.explain("the cat sat", "le chat")
    for name in ("encoder_contributions", "self_contributions", "cross_contributions", "combined"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=0, atol=WITHIN)


@pytest.mark.parametrize("family", ["bert-classifier", "llama"])
@pytest.mark.parametrize("routes", [False, True])
def test_logit_and_routes_beside_a_device_equal_numpy(family, routes, monkeypatch):
    """The logit decomposition and the routes read their layers on the host; beside them ALTI stays on
    the device (every session of the run hands its block tensors there), and each gives what it gives
    on the CPU."""
    from alti_onnx.layouts import single_graph
    from alti_onnx.results.logit import LogitQuery
    from alti_onnx.results.routes import RouteQuery

    computed_in = []
    real = single_graph.layer_contributions
    monkeypatch.setattr(single_graph, "layer_contributions",
                        lambda block, probs, *a, **k: computed_in.append(namespace(probs)) or real(block, probs, *a, **k))
    device = Device("cpu", strict, ["CPUExecutionProvider"], bound_outputs="cpu")
    text = "the quick brown fox jumps over the lazy dog"
    query = {"logit": LogitQuery(), **({"routes": RouteQuery(threshold=0.0)} if routes else {})}
    with Explainer(FIXTURES / f"tiny-{family}") as reference, Explainer(FIXTURES / f"tiny-{family}", device=device) as on_device:
        want = reference.explain(text, **query)
        computed_in.clear()
        got = on_device.explain(text, **query)
    assert computed_in and all(xp is strict for xp in computed_in)
    np.testing.assert_allclose(got.contributions, want.contributions, rtol=0, atol=WITHIN)
    np.testing.assert_allclose(got.logit.attribution, want.logit.attribution, rtol=0, atol=WITHIN)
    assert got.logit.parts == pytest.approx(want.logit.parts, abs=WITHIN)
    if not routes:
        return
    assert len(got.routes.edges) == len(want.routes.edges) > 0
    for g, w in zip(got.routes.edges, want.routes.edges):
        assert (g.layer, g.kind, g.head, g.source, g.target) == (w.layer, w.kind, w.head, w.source, w.target)
        assert g.weight == pytest.approx(w.weight, abs=WITHIN)


@pytest.mark.parametrize("family", FAMILIES + ["gemma2", "phi", "opt", "t5-encoder"])
def test_a_batchs_layer_at_once_equals_each_example_alone(family):
    """``batch_contributions`` (a right-padded batch's block terms in one pass) against
    ``layer_contributions`` on each unpadded example, every output, in NumPy and array-api-strict."""
    texts = ["the quick brown fox jumps over the lazy dog", "a short one", "the dog", "jumps over the quick fox"]
    with Explainer(FIXTURES / f"tiny-{family}") as explainer:
        batch = explainer.text_encoder.encode(texts)
        _, tensors = explainer.session.run(batch)
        lengths = [int(n) for n in batch.attention_mask.sum(-1)]
        assert len(set(lengths)) > 1 and all(batch.attention_mask[r, :n].all() for r, n in enumerate(lengths))
        for (block, t), norms in itertools.product(zip(explainer.blocks, tensors), (False, True)):
            together = batch_contributions(block, t.probs, t.values, t.residual, t.output, lengths, with_norms=norms)
            strictly = batch_contributions(block, *_strict(t.probs, t.values, t.residual, t.output), lengths,
                                           with_norms=norms)
            for row, n in enumerate(lengths):
                alone = layer_contributions(block, *t.example(row, slice(0, n)), with_norms=norms)
                for got in (together[row], strictly[row]):
                    for name in ("contributions", "norms", "attention") if norms else ("contributions", "attention"):
                        assert to_numpy(getattr(got, name)).shape == (n, n)
                        _close(getattr(got, name), getattr(alone, name))
                    assert norms or got.norms is None
                    assert abs(got.reconstruction_error - alone.reconstruction_error) <= WITHIN
                    assert got.output_scale == pytest.approx(alone.output_scale, abs=WITHIN)
