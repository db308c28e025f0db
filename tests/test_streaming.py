"""Layer-streamed explanations: target-only results, bounded row blocks, layers kept on disk.

The target-only path (``full=False``) never stacks L x S x S: its attributions must equal the rows
of the full rollout on every fixture, alone and padded; the row-blocked contributions must equal
the one-block ones; layers spilled to a temporary file must give what layers kept in memory give.
"""

from __future__ import annotations

import numpy as np
import pytest
from fixture_cases import DECODERS, ENCODERS, FIXTURES, load_expected
from hypothesis import given, settings
from hypothesis import strategies as st

from alti_onnx import Explainer
from alti_onnx.decomposition.contributions import layer_contributions, row_blocks
from alti_onnx.decomposition.layer_store import LayerStore


@pytest.fixture(scope="module", params=ENCODERS + DECODERS)
def fixture(request):
    texts, _ = load_expected(request.param)
    return Explainer(FIXTURES / f"tiny-{request.param}"), texts


def test_target_only_equals_the_full_rollout_rows(fixture):
    explainer, texts = fixture
    full = explainer.explain(texts)
    only = explainer.explain(texts, full=False)
    chosen = explainer.explain(texts, full=False, targets=[0, -1, 1, 1])
    for whole, one, several in zip(full, only, chosen):
        assert one.contributions is None and one.rollout is None and not one.full
        np.testing.assert_allclose(one.attribution(), whole.attribution(), rtol=0, atol=1e-14)
        for position in (0, -1, 1, len(whole.tokens) - 1):
            np.testing.assert_allclose(several.attribution(position), whole.rollout[-1, position], rtol=0, atol=1e-14)
        np.testing.assert_array_equal(one.reconstruction_error, whole.reconstruction_error)
        assert one.tokens == whole.tokens and repr(one.prediction) == repr(whole.prediction)
        assert repr(one.next_token) == repr(whole.next_token)
        with pytest.raises(IndexError, match="was not computed"):
            one.attribution(1)
        assert set(one.to_record(full=True)) == {"record_version", "layout", "tokens", "input_ids", "target",
                                                 "attribution", "reconstruction_error"} | (
            {"next_token"} if whole.next_token is not None else set()) | (
            {"prediction"} if whole.prediction is not None else set())


def test_target_only_of_each_text_alone_equals_it_padded(fixture):
    explainer, texts = fixture
    for text, padded in zip(texts, explainer.explain(texts, full=False)):
        np.testing.assert_allclose(explainer.explain(text, full=False).attribution(), padded.attribution(), atol=1e-6)


def test_layers_spilled_to_disk_give_the_rows_kept_in_memory():
    rng = np.random.default_rng(0)
    layers = [rng.random((37, 37)) for _ in range(5)]
    kept, spilled = LayerStore(), LayerStore(memory_bytes=3 * 37 * 37 * 8)  # the fourth layer spills
    for matrix in layers:
        kept.append(matrix)
        spilled.append(matrix)
    assert spilled.spilled and not kept.spilled and len(spilled) == 5
    expected = np.eye(37)[[0, 36, 5]]
    for matrix in reversed(layers):
        expected = expected @ matrix
    np.testing.assert_allclose(kept.rollout_rows([0, 36, 5]), expected, rtol=1e-13)
    np.testing.assert_allclose(spilled.rollout_rows([0, 36, 5]), expected, rtol=1e-13)
    import alti_onnx.decomposition.layer_store as store

    small_reads = LayerStore(memory_bytes=0)
    for matrix in layers:
        small_reads.append(matrix)
    old, store.READ_BYTES = store.READ_BYTES, 3 * 37 * 8  # three rows a read: blocks that do not divide 37
    try:
        np.testing.assert_allclose(small_reads.rollout_rows([0, 36, 5]), expected, rtol=1e-13)
    finally:
        store.READ_BYTES = old
    spilled.close()
    assert not spilled.spilled


@settings(max_examples=30, deadline=None)
@given(seq_len=st.integers(0, 300), per_row=st.integers(1, 1 << 22), parts=st.integers(1, 8))
def test_row_blocks_cover_every_row_once_in_bounded_multiples_of_four(seq_len, per_row, parts):
    blocks = row_blocks(seq_len, per_row, parts)
    assert [r for start, stop in blocks for r in range(start, stop)] == list(range(seq_len))
    sizes = [stop - start for start, stop in blocks]
    assert all(size % 4 == 0 for size in sizes[:-1])
    if seq_len >= 4 * parts:
        assert len(blocks) >= parts
    import alti_onnx.decomposition.contributions as contributions

    assert all(size * per_row <= max(contributions.BLOCK_BYTES, 4 * per_row) for size in sizes)


@pytest.mark.parametrize("arch", ["bert", "llama", "gemma3", "gpt-neox"])
def test_row_blocked_contributions_equal_one_block(arch, monkeypatch):
    """Blocks of 4 rows (the smallest) against the whole S x S at once: the same numbers."""
    import alti_onnx.decomposition.contributions as contributions

    explainer = Explainer(FIXTURES / f"tiny-{arch}")
    batch = explainer.text_encoder.encode(["the quick brown fox jumps over the lazy dog near the river"])
    _, tensors = explainer.session.run(batch)
    for block, t in zip(explainer.blocks, tensors):
        args = (block, t.probs[0], t.values[0], t.residual[0], t.output[0])
        whole = layer_contributions(*args)
        monkeypatch.setattr(contributions, "BLOCK_BYTES", 1)
        blocked = layer_contributions(*args, parts=3)
        monkeypatch.undo()
        for name in ("contributions", "attention"):
            np.testing.assert_allclose(getattr(blocked, name), getattr(whole, name), rtol=0, atol=1e-12, err_msg=name)
        # the norm-based baseline's Gram products are float32 BLAS calls of other shapes: rounding differs
        np.testing.assert_allclose(blocked.norms, whole.norms, rtol=1e-6, atol=1e-7)
        assert blocked.reconstruction_error == pytest.approx(whole.reconstruction_error, abs=1e-12)
