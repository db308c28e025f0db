"""The HTML report of an encoder-decoder explanation (ALTI+): one file, no network.

It shows each target token's source share as a bar and the ALTI+ map after a chosen decoder layer:
rows are the target tokens, columns the source tokens and then the target-prefix (decoder input)
tokens, split by a rule. The data is embedded as JSON (matrices as base64 float32, as in the
encoder report); ``window.altiSeq2seq`` exposes the drawn layer and cell values to tests.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

from alti_onnx.results.seq2seq import Seq2SeqExplanation

from . import style
from ._assets import CSS
from .html import PAGE_END, PAGE_START, display_token, encode_matrix, json_for_script, styled

DATA_FORMAT = 1


def seq2seq_report_data(explanation: Seq2SeqExplanation, model: str | None = None) -> dict[str, Any]:
    """The JSON the report embeds."""
    return {
        "format": DATA_FORMAT,
        "model": model,
        "generated": explanation.generated,
        "source": [display_token(t) for t in explanation.tokens],
        "prefix": [display_token(t) for t in explanation.decoder_tokens],
        "targets": [display_token(t) for t in explanation.target_tokens],
        "layers": int(explanation.combined.shape[0]),
        "source_share": [float(s) for s in explanation.source_share],
        "combined": [encode_matrix(m) for m in explanation.combined],
        "reconstruction_error": [float(e) for e in explanation.reconstruction_error],
        "heat_stops": [[x, *(int(color[k:k + 2], 16) for k in (1, 3, 5))] for x, color in style.HEAT_STOPS],
        "accent": style.ACCENT,
    }


def render_seq2seq_html(explanation: Seq2SeqExplanation, model: str | None = None) -> str:
    data = seq2seq_report_data(explanation, model)
    title = f"ALTI+ explanation · {model}" if model else "ALTI+ explanation"
    parts = {"TITLE": html.escape(title), "CSS": styled(CSS + _EXTRA_CSS), "JS": styled(_JS),
             "DATA": json_for_script(data), "ROUTES": _routes_section(explanation)}
    return re.sub(r"__(TITLE|CSS|JS|DATA|ROUTES)__", lambda m: parts[m[1]], _PAGE)


def _routes_section(explanation: Seq2SeqExplanation) -> str:
    """The routes' section: the decoder's graph to the prediction (cross-attention edges from encoder
    positions, marked e<j>) and the encoder's graph to the positions they read."""
    if explanation.routes is None:
        return ""
    from alti_onnx.decomposition.routes import RouteGraph
    from alti_onnx.results.record import MEAN
    from alti_onnx.results.routes import RouteExplanation

    from .routes_view import routes_html

    routes = explanation.routes
    encoder = RouteExplanation(RouteGraph(routes.encoder.threshold, routes.encoder.nodes, routes.encoder.edges), MEAN,
                               routes.decoder.renormalize)
    return ('<section id="routes-section">\n  <h2>Routes</h2>\n  <p class="muted hint">The decoder\'s routes to the '
            f'prediction at output position {routes.position}: self-attention, cross-attention (from the encoder '
            'positions e<i>j</i>) and feed-forward blocks, layer by layer; then the encoder\'s routes to the positions '
            'the cross-attention reads (highlighted on top). Drag the threshold, hover an edge for its weight.</p>\n'
            '  <h3>decoder</h3>\n  ' + routes_html(routes.decoder, list(explanation.decoder_tokens),
                                                   source_tokens=list(explanation.tokens))
            + '\n  <h3>encoder</h3>\n  ' + routes_html(encoder, list(explanation.tokens)) + "\n</section>")


def write_seq2seq_html(explanation: Seq2SeqExplanation, path: str | Path, model: str | None = None) -> Path:
    path = Path(path)
    path.write_text(render_seq2seq_html(explanation, model), encoding="utf-8")
    return path


_EXTRA_CSS = """
.shares { display: grid; grid-template-columns: max-content 1fr max-content; gap: 2px 10px; align-items: center; }
.shares .track { display: block; height: 12px; background: #f0f2f4; border-radius: 2px; }
.shares .share { display: block; height: 12px; background: __ACCENT__; border-radius: 2px; }
"""

_PAGE = PAGE_START + """
</header>
<section id="share-section">
  <h2>Source share</h2>
  <p class="muted hint">For each target token, how much of the decoder's representation that predicts it comes from the source sentence (the rest comes from the target prefix), after all layers.</p>
  <div id="shares" class="shares"></div>
</section>
<section id="matrix-section">
  <h2>Contributions</h2>
  <p class="muted hint">Row: the target token predicted; columns: the source tokens, then (right of the rule) the decoder's input tokens. Pick the decoder layer the rollout has reached; hover a cell to read its value.</p>
  <div class="controls">
    <label>after decoder layer <select id="layer-select"></select></label>
    <span class="legend"><span>0</span><span class="bar" id="matrix-scale-bar"></span><span id="matrix-scale-max"></span></span>
  </div>
  <div id="heatmap-wrap" class="heatmap-wrap"><canvas id="heatmap"></canvas></div>
</section>
<section id="selfcheck-section">
  <h2>Self-check</h2>
  <p class="muted hint">Largest absolute difference between any attention block's output rebuilt from the decomposition and the model's own, over all blocks (encoder, decoder self- and cross-attention).</p>
  <p id="selfcheck"></p>
</section>
__ROUTES__
<footer class="muted">Generated by alti-onnx. ALTI+: Ferrando et al., 2022, <i>Towards Opening the Black Box of Neural Machine Translation: Source and Target Contributions to the Model's Predictions</i>.</footer>
""" + PAGE_END

_JS = r"""
(function () {
  const data = JSON.parse(document.getElementById('alti-data').textContent);
  const J = data.source.length, T = data.targets.length, W = J + data.prefix.length;
  function decode(text, rows, cols) {
    const bytes = Uint8Array.from(atob(text), c => c.charCodeAt(0));
    const floats = new Float32Array(bytes.buffer);
    const out = [];
    for (let r = 0; r < rows; r++) out.push(Array.from(floats.slice(r * cols, (r + 1) * cols)));
    return out;
  }
  const matrices = data.combined.map(m => decode(m, T, W));
  function heat(v) {
    const stops = data.heat_stops;
    v = Math.max(0, Math.min(1, v));
    for (let k = 1; k < stops.length; k++) {
      if (v <= stops[k][0]) {
        const a = stops[k - 1], b = stops[k], f = (v - a[0]) / Math.max(1e-9, b[0] - a[0]);
        const c = [1, 2, 3].map(i => Math.round(a[i] + f * (b[i] - a[i])));
        return 'rgb(' + c.join(',') + ')';
      }
    }
    const last = stops[stops.length - 1];
    return 'rgb(' + last.slice(1).join(',') + ')';
  }
  document.getElementById('meta').textContent = (data.model ? data.model + ' · ' : '') + J + ' source tokens, ' + T +
    ' target tokens (' + (data.generated ? 'generated' : 'teacher-forced') + '), ' + data.layers + ' decoder layers';
  const shares = document.getElementById('shares');
  data.targets.forEach((token, t) => {
    const label = document.createElement('span'); label.textContent = token; shares.appendChild(label);
    const track = document.createElement('span'); track.className = 'track';
    const bar = document.createElement('span'); bar.className = 'share';
    bar.style.width = (100 * data.source_share[t]).toFixed(2) + '%'; bar.dataset.share = data.source_share[t];
    track.appendChild(bar); shares.appendChild(track);
    const value = document.createElement('span'); value.textContent = data.source_share[t].toFixed(3); shares.appendChild(value);
  });
  const select = document.getElementById('layer-select');
  for (let l = 0; l < data.layers; l++) {
    const option = document.createElement('option'); option.value = l; option.textContent = String(l + 1) + (l === data.layers - 1 ? ' (last)' : '');
    select.appendChild(option);
  }
  select.value = data.layers - 1;
  const canvas = document.getElementById('heatmap'), tooltip = document.getElementById('tooltip');
  const geometry = {left: 0, top: 0, cell: 0};
  function draw() {
    const layer = Number(select.value), m = matrices[layer];
    const peak = Math.max(1e-12, ...m.map(row => Math.max(...row)));
    const width = Math.min(document.getElementById('heatmap-wrap').clientWidth || 900, 1100);
    const left = 110, top = 90, cell = Math.max(6, Math.min(32, Math.floor((width - left - 10) / W)));
    Object.assign(geometry, {left, top, cell, peak, layer});
    const scale = window.devicePixelRatio || 1;
    canvas.style.width = (left + cell * W + 10) + 'px'; canvas.style.height = (top + cell * T + 10) + 'px';
    canvas.width = Math.ceil((left + cell * W + 10) * scale); canvas.height = Math.ceil((top + cell * T + 10) * scale);
    const g = canvas.getContext('2d'); g.setTransform(scale, 0, 0, scale, 0, 0);
    g.fillStyle = '#ffffff'; g.fillRect(0, 0, canvas.width, canvas.height);
    for (let t = 0; t < T; t++) for (let k = 0; k < W; k++) {
      g.fillStyle = heat(m[t][k] / peak); g.fillRect(left + k * cell, top + t * cell, cell, cell);
    }
    g.strokeStyle = '__INK__'; g.lineWidth = 2; g.beginPath();
    g.moveTo(left + J * cell, top - 4); g.lineTo(left + J * cell, top + T * cell + 4); g.stroke();
    g.fillStyle = '__INK__'; g.font = '11px __FONT_SANS__'; g.textAlign = 'right'; g.textBaseline = 'middle';
    data.targets.forEach((token, t) => g.fillText(token, left - 6, top + (t + 0.5) * cell));
    [...data.source, ...data.prefix].forEach((token, k) => {
      g.save(); g.translate(left + (k + 0.5) * cell, top - 6); g.rotate(-Math.PI / 3); g.textAlign = 'left';
      g.fillStyle = k < J ? '__INK__' : '__MUTED__'; g.fillText(token, 0, 0); g.restore();
    });
    document.getElementById('matrix-scale-max').textContent = peak.toFixed(3);
    document.getElementById('matrix-scale-bar').style.background =
      'linear-gradient(to right,' + data.heat_stops.map(s => heat(s[0]) + ' ' + (100 * s[0]) + '%').join(',') + ')';
    canvas.dataset.layer = layer;
  }
  canvas.addEventListener('mousemove', event => {
    const box = canvas.getBoundingClientRect();
    const k = Math.floor((event.clientX - box.left - geometry.left) / geometry.cell);
    const t = Math.floor((event.clientY - box.top - geometry.top) / geometry.cell);
    if (t < 0 || t >= T || k < 0 || k >= W) { tooltip.hidden = true; return; }
    const column = k < J ? 'source ' + data.source[k] : 'prefix ' + data.prefix[k - J];
    tooltip.textContent = data.targets[t] + ' ← ' + column + ': ' + matrices[geometry.layer][t][k].toFixed(4);
    tooltip.style.left = (event.pageX + 12) + 'px'; tooltip.style.top = (event.pageY + 12) + 'px'; tooltip.hidden = false;
  });
  canvas.addEventListener('mouseleave', () => { tooltip.hidden = true; });
  select.addEventListener('change', draw);
  window.addEventListener('resize', draw);
  const worst = Math.max(...data.reconstruction_error);
  document.getElementById('selfcheck').textContent = 'max reconstruction error ' + worst.toExponential(2) + ' over ' +
    data.reconstruction_error.length + ' blocks';
  draw();
  window.altiSeq2seq = {geometry: () => geometry, value: (t, k) => matrices[geometry.layer][t][k], data: data};
  document.body.setAttribute('data-ready', '1');
})();
"""
