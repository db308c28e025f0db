"""The HTML report and the PNG figure, without a browser: self-contained, carrying the data, right sizes."""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from alti_onnx import Explainer, Explanation
from alti_onnx.cli.app import app
from alti_onnx.report import decode_matrix, display_token, render_html, report_data, style, write_html

FIXTURES = Path(__file__).parent / "fixtures"
CLASSIFIER = FIXTURES / "tiny-bert-classifier"
DECODERS = [p for p in (FIXTURES / "tiny-gpt2", FIXTURES / "tiny-llama") if (p / "model.onnx").is_file()]
TEXT = "The movie was surprisingly good, with a clever plot."
DATA = re.compile(r'<script type="application/json" id="alti-data">(.*?)</script>', re.S)

runner = CliRunner()


def embedded(page: str) -> dict:
    found = DATA.findall(page)
    assert len(found) == 1
    return json.loads(found[0])


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def synthetic(n: int, layers: int, seed: int = 0, tokens: list[str] | None = None) -> Explanation:
    """A row-stochastic explanation of ``n`` tokens without running a model."""
    rng = np.random.default_rng(seed)
    contributions = rng.random((layers, n, n)) ** 4
    contributions /= contributions.sum(-1, keepdims=True)
    rollout = np.empty_like(contributions)
    rollout[0] = contributions[0]
    for layer in range(1, layers):
        rollout[layer] = contributions[layer] @ rollout[layer - 1]
    return Explanation(
        tokens=tokens or [f"tok{i}" for i in range(n)],
        input_ids=list(range(n)),
        contributions=contributions.astype(np.float32),
        rollout=rollout.astype(np.float32),
        reconstruction_error=np.full(layers, 1e-6),
    )


@pytest.fixture(scope="module", params=[CLASSIFIER, *DECODERS], ids=lambda p: p.name)
def explained(request) -> tuple[Path, Explanation]:
    return request.param, Explainer(request.param).explain(TEXT)


def test_the_report_is_self_contained(explained, tmp_path: Path) -> None:
    model, explanation = explained
    page = write_html(explanation, tmp_path / "report.html", text=TEXT, model=model.name).read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", page), "no network references"
    assert "<link" not in page.lower() and "@import" not in page
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I)
    assert not re.search(r"<(img|iframe|object|embed)\b", page, re.I)
    assert not re.search(r"url\(", page), "no CSS url() either"
    assert page.count("<script") == 2  # the data and the inline script


def test_the_report_carries_the_data(explained) -> None:
    model, explanation = explained
    data = embedded(render_html(explanation, text=TEXT, model=model.name))
    n, layers = len(explanation.tokens), explanation.num_layers
    assert data["tokens"] == explanation.tokens
    assert data["input_ids"] == [int(i) for i in explanation.input_ids]
    assert (data["n"], data["layers"]) == (n, layers)
    assert data["target"] == explanation.default_target % n
    assert len(data["contributions"]) == layers
    for layer in range(layers):
        np.testing.assert_allclose(decode_matrix(data["contributions"][layer], n), explanation.contributions[layer],
                                   rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(decode_matrix(data["rollout"], n), explanation.rollout[-1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(data["reconstruction_error"], explanation.reconstruction_error)
    assert data["heat_stops"] == [list(s) for s in style.HEAT_STOPS]


def test_the_prediction_is_in_the_report(explained) -> None:
    model, explanation = explained
    data = embedded(render_html(explanation))
    if explanation.next_token is not None:
        assert data["architecture"] == "decoder"
        assert data["target"] == len(explanation.tokens) - 1
        assert data["prediction"]["kind"] == "next_token"
        assert data["prediction"]["label"] == explanation.next_token.label
        assert data["prediction"]["index"] == explanation.next_token.index
        assert data["prediction"]["probability"] == pytest.approx(explanation.next_token.probability)
    else:
        assert data["architecture"] == "encoder"
        assert data["prediction"] == {
            "kind": "label", "label": explanation.prediction.label, "index": explanation.prediction.index,
            "probability": pytest.approx(explanation.prediction.probability),
        }
        assert explanation.prediction.label in ("negative", "positive")


def test_a_model_without_prediction_still_renders() -> None:
    explanation = Explainer(FIXTURES / "tiny-bert").explain(TEXT)
    data = embedded(render_html(explanation, target=3))
    assert data["prediction"] is None and data["target"] == 3 and data["architecture"] == "encoder"
    assert embedded(render_html(explanation, target=-1))["target"] == len(explanation.tokens) - 1
    with pytest.raises(IndexError):
        report_data(explanation, target=len(explanation.tokens))


def test_tokens_cannot_break_out_of_the_page() -> None:
    tokens = ["</script><script>alert(1)</script>", "<!--", "a&b", "Ġspace", "▁piece"]
    page = render_html(synthetic(len(tokens), 2, tokens=tokens), title="<b>title</b>", text="</script>")
    assert page.count("</script>") == 2
    assert "<b>title</b>" not in page and "&lt;b&gt;title&lt;/b&gt;" in page
    data = embedded(page)
    assert data["tokens"] == tokens
    assert data["display"][3:5] == ["space", "piece"]


def test_display_token() -> None:
    assert display_token("Ġthe") == "the" and display_token("▁le") == "le"
    assert display_token("Ċ") == "↵" and display_token("Ġ") == "␣" and display_token("##ing") == "##ing"


def test_file_size_at_512_tokens_and_6_layers(tmp_path: Path) -> None:
    """6 contribution matrices + the rollout as base64 float32: 7 x 512 x 512 x 4 x 4/3 bytes, about 9.8 MB."""
    path = write_html(synthetic(512, 6), tmp_path / "long.html")
    size = path.stat().st_size
    assert 9.7e6 < size < 10.0e6, size


def test_cli_writes_the_report_and_the_figure(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    html, png = tmp_path / "report.html", tmp_path / "figure.png"
    result = runner.invoke(app, ["explain", str(CLASSIFIER), "--text", TEXT, "--html", str(html), "--png", str(png)],
                           env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert f"wrote {html}" in result.stdout and f"wrote {png}" in result.stdout
    data = embedded(html.read_text(encoding="utf-8"))
    assert data["model"] == CLASSIFIER.name and data["text"] == TEXT
    assert png_size(png) == (2200, 900)


@pytest.mark.skipif(not DECODERS, reason="no decoder fixture (tests/fixtures/tiny-gpt2 or tiny-llama)")
def test_cli_report_for_a_decoder(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    result = runner.invoke(app, ["explain", str(DECODERS[0]), "--text", TEXT, "--html", str(html), "--target", "2"])
    assert result.exit_code == 0, result.output
    data = embedded(html.read_text(encoding="utf-8"))
    assert data["architecture"] == "decoder" and data["target"] == 2
    assert data["prediction"]["kind"] == "next_token"


def test_cli_report_into_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["explain", str(CLASSIFIER), "--text", TEXT, "--html", str(tmp_path / "no" / "r.html")])
    assert result.exit_code == 2
    assert "cannot write" in result.output and "Traceback" not in result.output


def test_png_without_matplotlib_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = runner.invoke(app, ["explain", str(CLASSIFIER), "--text", TEXT, "--png", str(tmp_path / "f.png")])
    assert result.exit_code == 2
    assert "pip install 'alti-onnx[plot]'" in result.output
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("n", [5, 100])
def test_png_figure_size(tmp_path: Path, n: int) -> None:
    pytest.importorskip("matplotlib")
    from alti_onnx.report import write_png

    path = write_png(synthetic(n, 3), tmp_path / "f.png", size=(6.0, 3.0), dpi=100)
    assert png_size(path) == (600, 300)


def test_style_colors_and_figure_helpers(tmp_path: Path) -> None:
    assert style.heat_color(0) == "#ffffff" and style.heat_color(1) == style.HEAT_STOPS[-1][1]
    assert style.heat_color(-3) == "#ffffff" and style.heat_color(7) == style.HEAT_STOPS[-1][1]
    assert style.text_color_on(0) == style.INK and style.text_color_on(1) == "#ffffff"
    assert style.method_color("ALTI") == style.ACCENT and style.method_color("random") == style.BASELINE
    assert style.method_style("random")["linestyle"] == "--"
    assert style.method_color("Gradient", 1) != style.method_color("IG", 2)
    assert style.css_font(("DejaVu Sans", "sans-serif")) == '"DejaVu Sans", sans-serif'
    pytest.importorskip("matplotlib")
    import matplotlib

    before = dict(matplotlib.rcParams)
    with style.rc():
        fig, axes = style.new_figure(1, 2, size=(4, 2))
        for index, name in enumerate(("ALTI", "random", "Gradient")):
            axes[0].plot([1, 2, 3], [index, 1, 2], label=name, **style.method_style(name, index))
        style.finish_axes(axes[0], title="t", xlabel="x", ylabel="y", legend=True)
        axes[1].imshow(np.eye(3), cmap=style.heat_cmap())
        path = style.save(fig, tmp_path / "styled.png", dpi=50)
    assert png_size(path) == (200, 100)
    assert dict(matplotlib.rcParams) == before, "the style never leaks into the global rcParams"


@pytest.mark.parametrize("name", ["figure", "figure.xyz", "figure.png"])
def test_png_is_written_at_exactly_the_path_given(tmp_path: Path, name: str) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / name
    result = runner.invoke(app, ["explain", str(CLASSIFIER), "--text", TEXT, "--png", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert f"wrote {path}" in result.output.replace("\n", "")


def test_png_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    from tests.cli_helpers import assert_one_line_error, run_cli

    assert_one_line_error(run_cli("explain", CLASSIFIER, "--text", TEXT, "--png", "/dev/full"), "/dev/full")
    assert not Path("/dev/full.png").exists()
