"""What notebooks use: the inline view (``Explanation._repr_html_``, rendered in the headless browser)
and ``save``/``load`` round trips."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from alti_onnx import Explainer
from alti_onnx.results.explanation import Explanation
from browser import BrowserUnavailable, find_browser, full_page_screenshot
from tests.fixture_cases import FIXTURES

TEXT = "the cats jumped over the lazy dogs ."


def _same(a: Explanation, b: Explanation) -> None:
    for name in ("contributions", "rollout", "attention", "norm_based", "reconstruction_error"):
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None), name
        if left is not None:
            assert np.array_equal(left, right), name
    assert a.tokens == b.tokens and a.input_ids == b.input_ids and a.default_target == b.default_target
    assert a.offsets == b.offsets and a.word_ids == b.word_ids and a.text == b.text
    assert set(a.outputs) == set(b.outputs) and all(np.array_equal(a.outputs[k], b.outputs[k]) for k in a.outputs)
    for name in ("prediction", "next_token"):
        left, right = getattr(a, name), getattr(b, name)
        assert (left is None) == (right is None)
        if left is not None:
            assert (left.index, left.label, left.probability) == (right.index, right.label, right.probability)
            assert np.array_equal(left.probabilities, right.probabilities)


@pytest.mark.parametrize("case", ["classifier", "decoder", "target-only", "baselines"])
def test_save_and_load_give_back_the_same_explanation(case, tmp_path):
    folder = FIXTURES / ("tiny-gpt2" if case == "decoder" else "tiny-bert-classifier")
    explainer = Explainer(folder, cache=False)
    if case == "target-only":
        explanation = explainer.explain(TEXT, full=False, targets=[0, 2, "mean"])
    else:
        explanation = explainer.explain(TEXT, baselines=case == "baselines")
    path = explanation.save(tmp_path / "saved.alti")  # any name: nothing is appended to it
    loaded = Explanation.load(path)
    _same(explanation, loaded)
    for target in ([0, 2, "mean"] if case == "target-only" else [None, 1, "mean"]):
        assert np.array_equal(loaded.attribution(target), explanation.attribution(target))
    assert loaded.words().texts == explanation.words().texts


def test_load_refuses_what_save_did_not_write(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved explanation"):
        Explanation.load(tmp_path / "other.npz")


def test_inline_view_is_static_and_colors_words_by_attribution():
    explanation = Explainer(FIXTURES / "tiny-bert-classifier", cache=False).explain(TEXT)
    page = explanation._repr_html_()
    assert "<script" not in page and "http" not in page  # notebooks show it as is, offline
    values = [float(v) for v in re.findall(r'data-attribution="([^"]+)"', page)]
    words = explanation.words()
    np.testing.assert_allclose(values, words.attribution, rtol=1e-5)
    assert "prediction: <b>positive</b>" in page or "prediction: <b>negative</b>" in page
    assert page.count("<td ") == len(explanation.tokens) ** 2  # the rollout heatmap


try:
    find_browser()
    UNAVAILABLE = None
except BrowserUnavailable as exc:
    UNAVAILABLE = str(exc)


def test_inline_view_renders_in_a_browser(tmp_path):
    if UNAVAILABLE is not None:
        if os.environ.get("ALTI_ONNX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ALTI_ONNX_REQUIRE_BROWSER=1 but no browser: {UNAVAILABLE}")
        pytest.skip(f"no headless browser: {UNAVAILABLE}")
    from browser import headless_chromium

    explanation = Explainer(FIXTURES / "tiny-bert-classifier", cache=False).explain(TEXT)
    page = tmp_path / "cell.html"
    page.write_text("<!DOCTYPE html><meta charset='utf-8'><body>" + explanation._repr_html_() + "</body>")
    with headless_chromium(950, 500) as driver:
        driver.get(page.resolve().as_uri())
        chips = driver.execute_script(
            "return Array.from(document.querySelectorAll('.alti-chip')).map(c => "
            "[c.textContent, getComputedStyle(c).backgroundColor, c.getBoundingClientRect().width])")
        assert [c[0] for c in chips] == explanation.words().texts
        assert all(width > 0 for _, _, width in chips)
        strongest = int(np.argmax(explanation.words().attribution))
        assert chips[strongest][1].replace(" ", "") == "rgb(92,10,63)"  # the top of the heat scale
        cells = driver.execute_script("return document.querySelectorAll('.alti-heatmap td').length")
        assert cells == len(explanation.tokens) ** 2
        full_page_screenshot(driver, tmp_path / "cell.png")


@pytest.mark.parametrize("damage, words", [
    (lambda arrays: arrays.update(rollout=np.full_like(arrays["rollout"], np.nan)), "NaN or Infinity"),
    (lambda arrays: arrays.update(contributions=arrays["contributions"][:, :1]), "saved contributions is"),
    (lambda arrays: arrays.update(rollout=np.ones((arrays["rollout"].shape[0], 8, 8))), "saved rollout is"),
    (lambda arrays: arrays.pop("reconstruction_error"), "lacks or mistypes"),
])
def test_load_refuses_a_saved_explanation_that_does_not_fit_itself(tmp_path, damage, words):
    explanation = Explainer(FIXTURES / "tiny-bert-classifier", cache=False).explain(TEXT)
    path = explanation.save(tmp_path / "saved.npz")
    with np.load(path) as saved:
        arrays = {name: saved[name] for name in saved.files}
    damage(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(ValueError, match=words):
        Explanation.load(path)


def test_load_refuses_word_ids_or_targets_that_do_not_fit_the_tokens(tmp_path):
    import json as _json

    explanation = Explainer(FIXTURES / "tiny-bert-classifier", cache=False).explain(TEXT)
    for change, words in ((lambda meta: meta.update(word_ids=meta["word_ids"][:2]), "word_ids"),
                          (lambda meta: meta.update(default_target=99), "not a position")):
        path = explanation.save(tmp_path / "saved.npz")
        with np.load(path) as saved:
            arrays = {name: saved[name] for name in saved.files}
        meta = _json.loads(arrays["meta"].tobytes().decode("utf-8"))
        change(meta)
        arrays["meta"] = np.frombuffer(_json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        with open(path, "wb") as handle:
            np.savez(handle, **arrays)
        with pytest.raises(ValueError, match=words):
            Explanation.load(path)
