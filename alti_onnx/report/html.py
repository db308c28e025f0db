"""A self-contained HTML report of one explanation: one file, no network (inline CSS, JS and data).

The data travels as JSON in ``<script type="application/json" id="alti-data">``; the matrices in it
are little-endian float32 encoded in base64 (exact to float32 and about half the size of 5-digit
decimals): every layer's contribution matrix and the rollout after the last layer.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from alti_onnx.results.explanation import Explanation
from alti_onnx.results.words import group_words

from . import style
from ._assets import CSS, JS

#: Version of the embedded JSON layout (``data["format"]``).
DATA_FORMAT = 1
#: How the matrices are encoded in the embedded JSON.
MATRIX_ENCODING = "base64-float32-le"


def encode_matrix(matrix: np.ndarray) -> str:
    """A matrix as base64 of its little-endian float32 bytes, row-major."""
    return base64.b64encode(np.ascontiguousarray(matrix, dtype="<f4").tobytes()).decode("ascii")


def decode_matrix(text: str, size: int) -> np.ndarray:
    """The inverse of :func:`encode_matrix` for a ``size`` x ``size`` matrix."""
    return np.frombuffer(base64.b64decode(text), dtype="<f4").reshape(size, size)


def display_token(token: str) -> str:
    """A token as shown on a chip or an axis: without the byte-level / sentencepiece space marks."""
    shown = token.replace("Ġ", " ").replace("▁", " ").replace("Ċ", "↵").replace("\n", "↵").strip()
    return shown or "␣"


def report_data(
    explanation: Explanation, text: str | None = None, model: str | None = None, target: int | None = None
) -> dict[str, Any]:
    """The JSON the report embeds (also what the browser test and the unit tests read back)."""
    target = explanation.default_target if target is None else target
    if target == "mean":
        raise ValueError("the report draws one position's attribution (and lets the reader pick others): "
                         "give target=N for a mean-pooled model")
    n = len(explanation.tokens)
    if not -n <= target < n:
        raise IndexError(f"target position {target} is outside the {n} tokens")
    target %= n
    decoder = explanation.next_token is not None or _is_causal(explanation.contributions)
    prediction: dict[str, Any] | None = None
    if explanation.next_token is not None:
        p = explanation.next_token
        prediction = {"kind": "next_token", "label": p.label, "index": p.index, "probability": p.probability}
    elif explanation.prediction is not None:
        p = explanation.prediction
        prediction = {"kind": "label", "label": p.label, "index": p.index, "probability": p.probability}
    return {
        "format": DATA_FORMAT,
        "model": model,
        "text": explanation.text if explanation.text is not None else text,  # the words' spans index it
        "architecture": "decoder" if decoder else "encoder",
        "tokens": list(explanation.tokens),
        "display": [display_token(t) for t in explanation.tokens],
        "input_ids": [int(i) for i in explanation.input_ids],
        "n": n,
        "layers": explanation.num_layers,
        "target": int(target),
        "prediction": prediction,
        "reconstruction_error": [float(e) for e in explanation.reconstruction_error],
        "encoding": MATRIX_ENCODING,
        "contributions": [encode_matrix(m) for m in explanation.contributions],
        "rollout": encode_matrix(explanation.rollout[-1]),
        "heat_stops": [list(stop) for stop in style.HEAT_STOPS],
        "accent": style.ACCENT,
        "words": _words(explanation),
        "logit": None if explanation.logit is None else explanation.logit.to_dict(per_head=False),
    }


def _words(explanation: Explanation) -> list[dict[str, Any]] | None:
    """The explanation's words (text, character span, token positions), when its tokenizer said where they are."""
    if explanation.word_ids is None or explanation.offsets is None:
        return None
    return [{"text": w.text, "start": w.start, "end": w.end, "positions": list(w.positions)}
            for w in group_words(explanation.tokens, explanation.word_ids, explanation.offsets, explanation.text)]


def _is_causal(contributions: np.ndarray) -> bool:
    n = contributions.shape[-1]
    return n > 1 and not np.any(np.triu(contributions[-1], 1))


def json_for_script(payload: dict[str, Any]) -> str:
    """JSON that cannot close its <script> element or open a comment."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def styled(source: str) -> str:
    """Fill the style placeholders (__INK__, __FONT_SANS__, ...) of the inline CSS or JS."""
    values = {
        "INK": style.INK, "MUTED": style.MUTED, "GRID": style.GRID, "ACCENT": style.ACCENT,
        "FONT_SANS": style.css_font(style.FONT_SANS), "FONT_MONO": style.css_font(style.FONT_MONO),
    }
    return re.sub(r"__(INK|MUTED|GRID|ACCENT|FONT_SANS|FONT_MONO)__", lambda m: values[m[1]], source)


def render_html(
    explanation: Explanation,
    text: str | None = None,
    model: str | None = None,
    target: int | None = None,
    title: str | None = None,
) -> str:
    """The report as one HTML string (no external resources)."""
    data = report_data(explanation, text=text, model=model, target=target)
    title = title or (f"ALTI explanation · {model}" if model else "ALTI explanation")
    parts = {"TITLE": html.escape(title), "CSS": styled(CSS), "JS": styled(JS), "DATA": json_for_script(data),
             "LOGIT": _logit_section(explanation), "ROUTES": _routes_section(explanation)}
    return re.sub(r"__(TITLE|CSS|JS|DATA|LOGIT|ROUTES)__", lambda m: parts[m[1]], _PAGE)


def _logit_section(explanation: Explanation) -> str:
    """The logit decomposition's section (static HTML), when the explanation has one."""
    if explanation.logit is None:
        return ""
    from .logit_view import logit_html

    return ('<section id="logit-section">\n  <h2>Logit decomposition</h2>\n  <p class="muted hint">The logit of '
            'the class or next token (minus the foil\'s) as one signed part per token and the named parts: blue for, '
            'red against.</p>\n  ' + logit_html(explanation.logit, list(explanation.tokens)) + "\n</section>")


def _routes_section(explanation: Explanation) -> str:
    """The routes' section (an inline SVG and its own small script), when the explanation has them."""
    if explanation.routes is None:
        return ""
    from .routes_view import routes_html

    return ('<section id="routes-section">\n  <h2>Routes</h2>\n  <p class="muted hint">The routes through heads and '
            'feed-forward blocks that build the prediction, layer by layer from the embeddings up; drag the threshold '
            'to keep only heavier edges, hover an edge for its weight, click a node for what it promotes.</p>\n  '
            + routes_html(explanation.routes, list(explanation.tokens)) + "\n</section>")


def write_html(
    explanation: Explanation,
    path: str | Path,
    text: str | None = None,
    model: str | None = None,
    target: int | None = None,
    title: str | None = None,
) -> Path:
    """Write the report to ``path`` (UTF-8) and return the path."""
    path = Path(path)
    path.write_text(render_html(explanation, text=text, model=model, target=target, title=title), encoding="utf-8")
    return path


#: The start of every report page: the head with the inline style, and the title with its meta line.
PAGE_START = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="alti-onnx">
<title>__TITLE__</title>
<style>__CSS__</style>
</head>
<body>
<main id="report">
<header>
  <h1>__TITLE__</h1>
  <p id="meta" class="muted"></p>"""

#: The end of every report page: the tooltip, the embedded data and the script that draws the page.
PAGE_END = """
</main>
<div id="tooltip" class="tooltip" role="tooltip" hidden></div>
<script type="application/json" id="alti-data">__DATA__</script>
<script>__JS__</script>
</body>
</html>
"""

_PAGE = PAGE_START + """
  <p id="prediction" class="prediction"></p>
</header>
<section id="attribution-section">
  <h2 id="attribution-title">Attribution</h2>
  <p class="muted hint">Each token colored by how much it contributes to the target after all layers (the rollout row of the target). Click a token to make it the target.</p>
  <p id="unit-control" class="controls"><label>show <select id="unit-select"><option value="tokens">tokens</option><option value="words">words</option></select></label></p>
  <div id="tokens" class="tokens" role="list"></div>
  <div id="words" class="tokens" role="list" hidden></div>
  <p id="text-view" class="text-view"></p>
  <div class="legend"><span id="token-scale-min">0</span><span class="bar" id="token-scale-bar"></span><span id="token-scale-max"></span></div>
</section>
__LOGIT__
__ROUTES__
<section id="matrix-section">
  <h2>Contributions</h2>
  <p class="muted hint">Row <i>i</i> receives from column <i>j</i>. Pick a layer's contribution matrix or the rollout (all layers combined); hover a cell to read its value.</p>
  <div class="controls">
    <label>matrix <select id="layer-select"></select></label>
    <label>color scale <select id="scale-select"><option value="linear">linear</option><option value="sqrt">square root</option></select></label>
    <label>zoom <select id="zoom-select"><option value="1">fit</option></select></label>
    <span class="legend"><span>0</span><span class="bar" id="matrix-scale-bar"></span><span id="matrix-scale-max"></span></span>
  </div>
  <div id="heatmap-wrap" class="heatmap-wrap"><canvas id="heatmap" data-layer="" data-checksum=""></canvas></div>
</section>
<section id="selfcheck-section">
  <h2 id="selfcheck-title">Self-check</h2>
  <p class="muted hint">Per layer, the largest absolute difference between the attention block's output rebuilt from the decomposition and the model's own.</p>
  <table id="selfcheck"></table>
</section>
<footer class="muted">Generated by alti-onnx. ALTI: Ferrando et al., 2022, <i>Measuring the Mixing of Contextual Information in the Transformer</i>.</footer>
""" + PAGE_END


