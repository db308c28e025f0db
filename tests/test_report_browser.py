"""The HTML report in a real browser: Debian's headless Chromium driven by Selenium through chromedriver.

Skips with the reason when the browser, its driver or selenium is missing (``apt-get install -y chromium
chromium-driver``; ``.ci/run`` installs them and sets ALTI_ONNX_REQUIRE_BROWSER=1, which turns the skip
into a failure). Screenshots go to the test's tmp dir.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from alti_onnx import Explainer
from alti_onnx.report import display_token, write_html
from browser import BrowserUnavailable, find_browser, full_page_screenshot, hover_cell, open_report

FIXTURES = Path(__file__).parent / "fixtures"
TEXT = "The movie was surprisingly good, with a clever plot."
MODELS = [FIXTURES / "tiny-bert-classifier"] + [
    p for p in (FIXTURES / "tiny-gpt2", FIXTURES / "tiny-llama") if (p / "model.onnx").is_file()
]

try:
    find_browser()
    UNAVAILABLE = None
except BrowserUnavailable as exc:
    UNAVAILABLE = str(exc)


@pytest.fixture(scope="module")
def driver():
    if UNAVAILABLE is not None:
        if os.environ.get("ALTI_ONNX_REQUIRE_BROWSER") == "1":
            pytest.fail(f"ALTI_ONNX_REQUIRE_BROWSER=1 but no browser: {UNAVAILABLE}")
        pytest.skip(f"no headless browser: {UNAVAILABLE}")
    from browser import headless_chromium

    with headless_chromium(1100, 900) as d:
        yield d


def canvas_url(driver) -> str:
    return driver.execute_script("return document.getElementById('heatmap').toDataURL()")


def painted_fraction(driver) -> float:
    """Share of the heatmap's plot area that is not white."""
    return driver.execute_script(
        """
        const c = document.getElementById('heatmap'), g = window.altiReport.geometry();
        const s = c.width / parseFloat(c.style.width);
        const img = c.getContext('2d').getImageData(Math.ceil(g.left * s), Math.ceil(g.top * s),
                                                    Math.floor(g.plot * s) - 1, Math.floor(g.plot * s) - 1).data;
        let painted = 0;
        for (let k = 0; k < img.length; k += 4) if (img[k] < 250 || img[k + 1] < 250 || img[k + 2] < 250) painted++;
        return painted / (img.length / 4);
        """
    )


def choose_layer(driver, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "layer-select")).select_by_value(value)


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_report_renders_and_reacts(driver, model: Path, tmp_path: Path) -> None:
    check_report(driver, model, tmp_path)


@pytest.mark.torch
@pytest.mark.slow
def test_report_of_the_default_model(driver, tmp_path: Path) -> None:
    """The sentiment classifier the README's main command explains (built and cached on first use)."""
    pytest.importorskip("torch")
    from models.sentiment import build_sentiment_classifier

    check_report(driver, build_sentiment_classifier(), tmp_path)


def check_report(driver, model: Path, tmp_path: Path) -> None:
    """Tokens, prediction, heatmap per layer, tooltip value and target click, then a screenshot."""
    explanation = Explainer(model).explain(TEXT)
    tokens, n = explanation.tokens, len(explanation.tokens)
    page = write_html(explanation, tmp_path / "report.html", text=TEXT, model=model.name)
    open_report(driver, page)
    assert driver.execute_script("return window.altiReport.data.n") == n

    # the tokens, colored by attribution
    spans = driver.find_elements("css selector", "#tokens .tok")
    assert len(spans) == n
    backgrounds = {s.value_of_css_property("background-color") for s in spans}
    assert len(backgrounds) > 2, "tokens are colored by their attribution"
    assert driver.find_element("css selector", "#tokens .tok.target").get_attribute("data-pos") == str(
        explanation.default_target
    )

    # the prediction at the top
    prediction = driver.find_element("id", "prediction").text
    if explanation.next_token is not None:
        assert prediction.startswith("Next token:") and f"{explanation.next_token.probability:.4f}" in prediction
    else:
        assert prediction.startswith("Prediction: " + explanation.prediction.label)

    # the heatmap is drawn, and the layer selector changes it
    canvas = driver.find_element("id", "heatmap")
    assert canvas.get_attribute("data-layer") == "rollout"
    assert painted_fraction(driver) > 0.3
    urls = {"rollout": canvas_url(driver)}
    for layer in range(explanation.num_layers):
        choose_layer(driver, str(layer))
        assert canvas.get_attribute("data-layer") == str(layer)
        urls[str(layer)] = canvas_url(driver)
        assert painted_fraction(driver) > 0.05
    assert len(set(urls.values())) == len(urls), "each matrix draws a different picture"

    # the value under the pointer (layer 1's contributions)
    choose_layer(driver, "0")
    row, column = min(2, n - 1), min(1, n - 1)
    hover_cell(driver, row, column)
    tooltip = driver.find_element("id", "tooltip")
    assert tooltip.is_displayed()
    text = tooltip.text
    shown = [display_token(t) for t in tokens]
    assert f"“{shown[row]}” [{row}] ← “{shown[column]}” [{column}]" in text
    value = float(re.search(r"\]: ([-0-9.e]+)", text)[1])
    assert value == pytest.approx(float(explanation.contributions[0, row, column]), rel=1e-3, abs=1e-6)
    assert canvas_url(driver) != urls["0"], "the hovered row and column are highlighted"

    # clicking a token makes it the target
    spans[1].click()
    assert driver.execute_script("return window.altiReport.target()") == 1
    assert driver.find_element("id", "attribution-title").text.startswith("Attribution to position 1 ")

    shot = full_page_screenshot(driver, tmp_path / f"{model.name}.png")
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_stays_usable_at_512_tokens(driver, tmp_path: Path) -> None:
    """6 layers x 512 tokens (about 10 MB): loads, switches layers, reads values and zooms within seconds."""
    import time

    from test_report import synthetic

    explanation = synthetic(512, 6, seed=1)
    page = write_html(explanation, tmp_path / "long.html")
    start = time.perf_counter()
    open_report(driver, page)
    loaded = time.perf_counter() - start
    assert len(driver.find_elements("css selector", "#tokens .tok")) == 512
    assert painted_fraction(driver) > 0.3
    before = canvas_url(driver)
    start = time.perf_counter()
    choose_layer(driver, "5")
    switched = time.perf_counter() - start
    assert canvas_url(driver) != before
    assert loaded < 20 and switched < 5, (loaded, switched)
    # labels are thinned on the axes, but every row reads in the tooltip
    point = hover_cell(driver, 300, 200)
    text = driver.find_element("id", "tooltip").text
    found = re.search(r"\[(\d+)\] ← “tok(\d+)” \[(\d+)\]: ([-0-9.e]+)", text)
    assert found, text
    i, j = int(found[1]), int(found[3])
    assert abs(i - 300) <= 1 and abs(j - 200) <= 1, (point, text)  # cells are about 1.5 px wide
    assert float(found[4]) == pytest.approx(float(explanation.contributions[5, i, j]), rel=1e-3, abs=1e-7)
    np.testing.assert_equal(driver.execute_script("return window.altiReport.data.layers"), 6)
    full_page_screenshot(driver, tmp_path / "long.png")
    # zoomed in, the cells are big enough to point at exactly (the heatmap scrolls inside its frame)
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "zoom-select")).select_by_value("4")
    assert driver.execute_script("return window.altiReport.geometry().cell") > 4
    hover_cell(driver, 300, 200)
    text = driver.find_element("id", "tooltip").text
    assert "“tok300” [300] ← “tok200” [200]: " in text, text


def test_seq2seq_report_draws_the_alti_plus_map_and_source_shares(driver, tmp_path):
    """The encoder-decoder report: one bar per target token at its source share, the map after the
    chosen decoder layer (cells read back equal the explanation), a redraw when the layer changes."""
    from alti_onnx.report.seq2seq_html import write_seq2seq_html

    explanation = Explainer(FIXTURES / "tiny-t5-seq2seq", cache=False).explain(
        "a quick brown fox jumps over the lazy dog .", max_new_tokens=6)
    page = write_seq2seq_html(explanation, tmp_path / "seq2seq.html", model="tiny-t5-seq2seq")
    open_report(driver, page)
    shares = driver.execute_script(
        "return Array.from(document.querySelectorAll('#shares .share')).map(b => Number(b.dataset.share))")
    np.testing.assert_allclose(shares, explanation.source_share, atol=1e-6)
    widths = driver.execute_script("return Array.from(document.querySelectorAll('#shares .share'))"
                                   ".map(b => b.getBoundingClientRect().width / b.parentElement.getBoundingClientRect().width)")
    np.testing.assert_allclose(widths, explanation.source_share, atol=0.01)  # drawn at their share of the track
    color = driver.execute_script("return getComputedStyle(document.querySelector('#shares .share')).backgroundColor")
    assert color.replace(" ", "") == "rgb(194,37,92)", color  # the accent, so the bars are seen
    last = len(explanation.combined) - 1
    assert driver.execute_script("return document.getElementById('heatmap').dataset.layer") == str(last)
    for t, k in [(0, 0), (2, 3), (len(explanation.target_tokens) - 1, len(explanation.tokens))]:
        value = driver.execute_script(f"return window.altiSeq2seq.value({t}, {k})")
        assert abs(value - explanation.combined[-1][t, k]) < 1e-6
    before = canvas_url(driver)
    driver.execute_script("const s = document.getElementById('layer-select'); s.value = '0';"
                          "s.dispatchEvent(new Event('change'))")
    assert driver.execute_script("return document.getElementById('heatmap').dataset.layer") == "0"
    assert canvas_url(driver) != before
    value = driver.execute_script("return window.altiSeq2seq.value(1, 1)")
    assert abs(value - explanation.combined[0][1, 1]) < 1e-6
    full_page_screenshot(driver, tmp_path / "seq2seq.png")


def test_words_switch_and_the_highlighted_text(driver, tmp_path):
    """The words view: one chip per word at its summed attribution, the original text highlighted word
    by word (its characters unchanged), and a click on a word targets its last piece."""
    text = "the cats jumped over the lazy dogs ."
    explanation = Explainer(FIXTURES / "tiny-bert", cache=False).explain(text)
    page = write_html(explanation, tmp_path / "words.html", text=text, model="tiny-bert")
    open_report(driver, page)
    driver.execute_script("window.altiReport.setUnit('words')")
    assert driver.execute_script("return [document.getElementById('tokens').hidden, document.getElementById('words').hidden]") == [True, False]
    words = explanation.words()
    chips = driver.execute_script(
        "return Array.from(document.querySelectorAll('#words .word')).map(s => [s.textContent, Number(s.dataset.value)])")
    assert [c[0] for c in chips] == words.texts
    np.testing.assert_allclose([c[1] for c in chips], words.attribution, rtol=1e-3)
    shown = driver.execute_script("return document.getElementById('text-view').textContent")
    assert shown == text
    marks = driver.execute_script("return Array.from(document.querySelectorAll('#text-view mark')).map(m => m.textContent)")
    assert marks == [w.text for w in words.words if w.end > w.start]
    cats = words.texts.index("cats")
    driver.execute_script(f"document.querySelectorAll('#words .word')[{cats}].click()")
    assert driver.execute_script("return window.altiReport.target()") == words.words[cats].positions[-1]
    driver.execute_script("window.altiReport.setUnit('tokens')")
    assert driver.execute_script("return document.getElementById('tokens').hidden") is False
