"""The report's inline stylesheet and script (kept as Python strings so packaging needs no data files).

The placeholders ``__FONT_SANS__``, ``__INK__``, ... in CSS are filled from :mod:`alti_onnx.report.style`.
The script reads the JSON in ``#alti-data`` and exposes ``window.altiReport`` for tests.
"""

CSS = r"""
:root { --ink: __INK__; --muted: __MUTED__; --grid: __GRID__; --accent: __ACCENT__; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f8fa; color: var(--ink); font-family: __FONT_SANS__; font-size: 15px; line-height: 1.45; }
main { max-width: 1000px; margin: 0 auto; padding: 20px 28px 32px; background: #fff; min-height: 100vh; }
h1 { font-size: 22px; margin: 4px 0 2px; }
h2 { font-size: 16px; margin: 22px 0 4px; padding-top: 12px; border-top: 1px solid var(--grid); }
.muted { color: var(--muted); }
.hint { font-size: 13px; margin: 0 0 8px; }
#meta { margin: 0 0 8px; font-size: 13px; }
.prediction { margin: 6px 0 0; font-size: 17px; }
.prediction .label { font-weight: 700; color: var(--accent); }
.prediction .prob { font-family: __FONT_MONO__; }
.prediction .probbar { display: inline-block; vertical-align: middle; width: 120px; height: 8px; margin-left: 8px; background: #eee; border-radius: 4px; overflow: hidden; }
.prediction .probbar > span { display: block; height: 100%; background: var(--accent); }
.tokens { display: flex; flex-wrap: wrap; gap: 3px 2px; max-height: 42vh; overflow: auto; padding: 6px 0; }
.tokens[hidden], .controls[hidden] { display: none; }
.text-view { line-height: 1.9; margin: 6px 0; max-height: 30vh; overflow: auto; white-space: pre-wrap; }
.text-view mark { padding: 1px 0; border-radius: 2px; }
.tok { display: inline-block; padding: 1px 5px; border-radius: 3px; border: 1px solid rgba(0,0,0,0.06); cursor: pointer; white-space: pre; font-size: 15px; }
.tok:hover, .tok:focus { outline: 1px solid var(--ink); }
.tok.target { outline: 2px solid var(--ink); outline-offset: 1px; font-weight: 700; }
.legend { display: inline-flex; align-items: center; gap: 6px; font-size: 12px; color: var(--muted); font-family: __FONT_MONO__; }
.legend .bar { display: inline-block; width: 140px; height: 10px; border: 1px solid var(--grid); }
.controls { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; margin: 6px 0 10px; font-size: 13px; }
.controls select { font: inherit; padding: 2px 4px; }
.heatmap-wrap { overflow: auto; max-height: 88vh; max-width: 100%; }
#heatmap { display: block; cursor: crosshair; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 2px 12px 2px 0; text-align: left; border-bottom: 1px solid var(--grid); }
#selfcheck th { font-weight: 600; color: var(--muted); }
#selfcheck tr:nth-child(2n) td, #selfcheck tr:nth-child(2n) th { padding-bottom: 8px; }
td.num { font-family: __FONT_MONO__; }
footer { margin-top: 24px; font-size: 12px; }
.tooltip { position: fixed; z-index: 10; pointer-events: none; background: var(--ink); color: #fff; padding: 5px 8px; border-radius: 4px; font-size: 12px; font-family: __FONT_MONO__; max-width: 460px; white-space: pre-wrap; box-shadow: 0 2px 8px rgba(0,0,0,0.25); }
.tooltip .sub { color: #c9d1d9; }
"""

JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("alti-data").textContent);
  var n = data.n, L = data.layers, target = data.target;
  var LUT_SIZE = 256, lut = new Uint8ClampedArray(LUT_SIZE * 3);
  var stops = data.heat_stops.map(function (s) {
    var c = s[1];
    return [s[0], parseInt(c.slice(1, 3), 16), parseInt(c.slice(3, 5), 16), parseInt(c.slice(5, 7), 16)];
  });
  (function buildLut() {
    for (var k = 0; k < LUT_SIZE; k++) {
      var v = k / (LUT_SIZE - 1), a = stops[0], b = stops[stops.length - 1];
      for (var s = 0; s + 1 < stops.length; s++) { if (v <= stops[s + 1][0]) { a = stops[s]; b = stops[s + 1]; break; } }
      var t = b[0] === a[0] ? 0 : (v - a[0]) / (b[0] - a[0]);
      for (var ch = 1; ch <= 3; ch++) lut[k * 3 + ch - 1] = Math.round(a[ch] + (b[ch] - a[ch]) * t);
    }
  })();
  function lutIndex(v) { return Math.max(0, Math.min(LUT_SIZE - 1, Math.round(v * (LUT_SIZE - 1)))); }
  function rgb(v) { var k = lutIndex(v) * 3; return "rgb(" + lut[k] + "," + lut[k + 1] + "," + lut[k + 2] + ")"; }
  function inkOn(v) { var k = lutIndex(v) * 3; return 0.2126 * lut[k] + 0.7152 * lut[k + 1] + 0.0722 * lut[k + 2] > 140 ? "" : "#fff"; }
  var gradient = "linear-gradient(to right, " + data.heat_stops.map(function (s) { return s[1] + " " + (s[0] * 100) + "%"; }).join(", ") + ")";
  function fmt(v) { return v === 0 ? "0" : (Math.abs(v) >= 1e-3 ? v.toPrecision(4) : v.toExponential(3)); }
  function q(i) { return "\u201c" + data.display[i] + "\u201d [" + i + "]"; }
  function raw(i) { return data.display[i] === data.tokens[i] ? "" : " \u00b7 token " + JSON.stringify(data.tokens[i]); }
  function el(id) { return document.getElementById(id); }

  // ---- matrices, decoded on first use ----
  var cache = {};
  function matrix(key) {
    key = String(key);
    if (!cache[key]) {
      var b64 = key === "rollout" ? data.rollout : data.contributions[Number(key)];
      var bin = atob(b64), bytes = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      var values = new Float32Array(bytes.buffer), max = 0;
      for (var k = 0; k < values.length; k++) if (values[k] > max) max = values[k];
      cache[key] = { values: values, max: max };
    }
    return cache[key];
  }
  function matrixName(key) { return key === "rollout" ? "rollout (layers 1\u2013" + L + ")" : "layer " + (Number(key) + 1) + " contributions"; }

  // ---- tooltip ----
  var tip = el("tooltip");
  function showTip(html, x, y) {
    tip.innerHTML = html; tip.hidden = false;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    var left = x + 14, top = y + 16;
    if (left + w > window.innerWidth - 4) left = Math.max(4, x - w - 10);
    if (top + h > window.innerHeight - 4) top = Math.max(4, y - h - 10);
    tip.style.left = left + "px"; tip.style.top = top + "px";
  }
  function hideTip() { tip.hidden = true; }
  function esc(s) { return String(s).replace(/[&<>"]/g, function (c) { return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c]; }); }

  // ---- header ----
  var meta = [];
  if (data.model) meta.push("model " + data.model);
  meta.push(data.architecture, n + " tokens", L + " layers");
  el("meta").textContent = meta.join(" \u00b7 ");
  var p = data.prediction, predEl = el("prediction");
  if (p) {
    var what = p.kind === "next_token" ? "Next token" : "Prediction";
    var label = p.kind === "next_token" ? "\u201c" + p.label + "\u201d" : p.label;
    predEl.innerHTML = what + ": <span class=\"label\">" + esc(label) + "</span>" +
      (p.kind === "next_token" ? " <span class=\"muted\">(id " + p.index + ")</span>" : "") +
      " \u00b7 probability <span class=\"prob\">" + p.probability.toFixed(4) + "</span>" +
      "<span class=\"probbar\"><span style=\"width:" + (100 * p.probability).toFixed(1) + "%\"></span></span>";
  } else {
    predEl.textContent = "No prediction head in this model (no classifier or LM logits).";
    predEl.className = "muted";
  }

  // ---- tokens colored by attribution ----
  var tokensEl = el("tokens");
  var spans = data.display.map(function (t, i) {
    var s = document.createElement("span");
    s.className = "tok"; s.textContent = t; s.setAttribute("data-pos", i); s.setAttribute("role", "listitem"); s.tabIndex = 0;
    tokensEl.appendChild(s);
    return s;
  });
  el("token-scale-bar").style.background = gradient;
  el("matrix-scale-bar").style.background = gradient;
  function attribution() { return matrix("rollout").values.subarray(target * n, target * n + n); }
  // ---- words: the same attribution summed over each word's pieces (docs/alti.md, "Words") ----
  var words = data.words || null, unitSelect = el("unit-select"), wordsEl = el("words"), textEl = el("text-view");
  var wordSpans = [];
  if (words) {
    words.forEach(function (w, k) {
      var s = document.createElement("span");
      s.className = "tok word"; s.textContent = w.text; s.setAttribute("data-word", k); s.setAttribute("role", "listitem");
      s.tabIndex = 0; wordsEl.appendChild(s); wordSpans.push(s);
    });
  } else {
    el("unit-control").hidden = true;
  }
  function wordValues(row) {
    return words.map(function (w) { var t = 0; w.positions.forEach(function (i) { t += row[i]; }); return t; });
  }
  var wordMax = 0;
  function renderWords(row) {
    if (!words) return;
    var values = wordValues(row), max = Math.max.apply(null, values.concat([0]));
    wordMax = max;
    wordSpans.forEach(function (s, k) {
      var v = max > 0 ? values[k] / max : 0;
      s.style.background = rgb(v); s.style.color = inkOn(v); s.setAttribute("data-value", fmt(values[k]));
      s.classList.toggle("target", words[k].positions.indexOf(target) >= 0);
    });
    if (data.text === null || data.text === undefined) return;
    textEl.textContent = "";  // the original text, each word's characters on its color
    var at = 0;
    words.map(function (w, k) { return [w, k]; }).filter(function (p) { return p[0].end > p[0].start; })
      .sort(function (a, b) { return a[0].start - b[0].start; }).forEach(function (p) {
        var w = p[0], k = p[1], v = max > 0 ? values[k] / max : 0;
        if (w.start > at) textEl.appendChild(document.createTextNode(data.text.slice(at, w.start)));
        var mark = document.createElement("mark");
        mark.textContent = data.text.slice(w.start, w.end); mark.style.background = rgb(v); mark.style.color = inkOn(v);
        mark.setAttribute("data-word", k); mark.setAttribute("data-value", fmt(values[k]));
        textEl.appendChild(mark); at = w.end;
      });
    if (at < data.text.length) textEl.appendChild(document.createTextNode(data.text.slice(at)));
  }
  function showUnit() {
    var byWord = words && unitSelect.value === "words";
    tokensEl.hidden = byWord; wordsEl.hidden = !byWord;
    renderTokens();
  }
  if (words) unitSelect.addEventListener("change", showUnit);
  wordsEl.addEventListener("click", function (ev) {
    var s = ev.target.closest(".word"); if (!s) return;
    var positions = words[Number(s.getAttribute("data-word"))].positions;
    setTarget(positions[positions.length - 1]);  // a word's last piece: where a decoder predicts from
  });
  function renderTokens() {
    var row = attribution(), max = 0;
    for (var i = 0; i < n; i++) if (row[i] > max) max = row[i];
    spans.forEach(function (s, i) {
      var v = max > 0 ? row[i] / max : 0;
      s.style.background = rgb(v); s.style.color = inkOn(v);
      s.setAttribute("data-value", fmt(row[i]));
      s.classList.toggle("target", i === target);
    });
    renderWords(row);
    el("attribution-title").textContent = "Attribution to position " + target + " (\u201c" + data.display[target] + "\u201d)" +
      (target === data.target ? (data.architecture === "decoder" ? ", the token that predicts the next one" : "") : "");
    el("token-scale-max").textContent = fmt(words && unitSelect.value === "words" ? wordMax : max);
  }
  tokensEl.addEventListener("mousemove", function (ev) {
    var s = ev.target.closest(".tok"); if (!s) { hideTip(); return; }
    var i = Number(s.getAttribute("data-pos"));
    showTip(esc(q(i)) + ": " + fmt(attribution()[i]) + "\n<span class=\"sub\">attribution to " + esc(q(target)) + esc(raw(i)) + "</span>", ev.clientX, ev.clientY);
  });
  tokensEl.addEventListener("mouseleave", hideTip);
  function pickToken(ev) {
    var s = ev.target.closest(".tok"); if (!s) return;
    setTarget(Number(s.getAttribute("data-pos")));
  }
  tokensEl.addEventListener("click", pickToken);
  tokensEl.addEventListener("keydown", function (ev) { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); pickToken(ev); } });

  // ---- heatmap ----
  var canvas = el("heatmap"), ctx = canvas.getContext("2d"), wrap = el("heatmap-wrap");
  var layerSelect = el("layer-select"), scaleSelect = el("scale-select"), zoomSelect = el("zoom-select");
  for (var l = 0; l < L; l++) layerSelect.add(new Option(matrixName(String(l)), String(l)));
  layerSelect.add(new Option(matrixName("rollout"), "rollout"));
  layerSelect.value = "rollout";
  if (n > 64) scaleSelect.value = "sqrt";  // long inputs: the diagonal would wash out the rest
  var off = document.createElement("canvas"); off.width = n; off.height = n;
  var offCtx = off.getContext("2d"), offKey = null;
  var geo = null, hover = null, renders = 0, pending = false;
  var measure = document.createElement("canvas").getContext("2d");

  function fontPx(cell) { return cell >= 14 ? 12 : 11; }
  function layout() {
    var zoom = Number(zoomSelect.value) || 1;
    measure.font = "12px " + getComputedStyle(document.body).fontFamily;
    var widest = 0;
    data.display.forEach(function (t) { widest = Math.max(widest, measure.measureText(t).width); });
    var label = Math.min(120, Math.ceil(widest) + 10);
    var avail = Math.max(360, Math.min(wrap.clientWidth || 900, 940));
    var fit = Math.max(160, Math.min(avail - label - 24, 760, n * 56));  // cells at most 56 px
    var plot = fit * zoom, cell = plot / n;
    var width = label + plot + 24, height = label + plot + 12;
    var dpr = Math.min(window.devicePixelRatio || 1, 2);
    if (width * dpr > 8000 || height * dpr > 8000) dpr = 8000 / Math.max(width, height);
    return { left: label, top: label, plot: plot, cell: cell, width: width, height: height, dpr: dpr, label: label, fit: fit };
  }
  function fillOffscreen(key, sqrt) {
    var id = key + (sqrt ? ":sqrt" : "");
    if (offKey === id) return;
    var m = matrix(key), img = offCtx.createImageData(n, n), px = img.data, scale = m.max > 0 ? 1 / m.max : 0;
    for (var k = 0; k < n * n; k++) {
      var v = m.values[k] * scale; if (sqrt) v = Math.sqrt(Math.max(0, v));
      var c = lutIndex(v) * 3;
      px[4 * k] = lut[c]; px[4 * k + 1] = lut[c + 1]; px[4 * k + 2] = lut[c + 2]; px[4 * k + 3] = 255;
    }
    offCtx.putImageData(img, 0, 0);
    offKey = id;
  }
  function clip(text, width, font) {
    ctx.font = font;
    if (ctx.measureText(text).width <= width) return text;
    while (text.length > 1 && ctx.measureText(text + "\u2026").width > width) text = text.slice(0, -1);
    return text + "\u2026";
  }
  function draw() {
    pending = false;
    var key = layerSelect.value, sqrt = scaleSelect.value === "sqrt";
    var g = geo = layout();
    var cw = Math.round(g.width * g.dpr), ch = Math.round(g.height * g.dpr);
    if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
    canvas.style.width = g.width + "px"; canvas.style.height = g.height + "px";
    ctx.setTransform(g.dpr, 0, 0, g.dpr, 0, 0);
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, g.width, g.height);
    fillOffscreen(key, sqrt);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, g.left, g.top, g.plot, g.plot);
    ctx.strokeStyle = "__GRID__"; ctx.lineWidth = 1;
    ctx.strokeRect(g.left - 0.5, g.top - 0.5, g.plot + 1, g.plot + 1);
    // labels on both axes, thinned when crowded
    var family = getComputedStyle(document.body).fontFamily, size = fontPx(g.cell);
    var font = size + "px " + family, bold = "bold " + size + "px " + family;
    var stride = Math.max(1, Math.ceil((size + 2) / g.cell));
    ctx.textBaseline = "middle";
    function rowLabel(i, strong) {
      var y = g.top + (i + 0.5) * g.cell, f = strong ? bold : font, t = clip(data.display[i], g.label - 8, f);
      ctx.font = f; ctx.textAlign = "right";
      if (strong) { var w = ctx.measureText(t).width; ctx.fillStyle = "#fff"; ctx.fillRect(g.left - 6 - w - 2, y - size / 2 - 2, w + 4, size + 4); }
      ctx.fillStyle = strong ? "__ACCENT__" : (i === target ? "__INK__" : "__MUTED__");
      ctx.fillText(t, g.left - 6, y);
    }
    function colLabel(j, strong) {
      var x = g.left + (j + 0.5) * g.cell, f = strong ? bold : font, t = clip(data.display[j], g.label - 8, f);
      ctx.save(); ctx.translate(x, g.top - 6); ctx.rotate(-Math.PI / 2);
      ctx.font = f; ctx.textAlign = "left";
      if (strong) { var w = ctx.measureText(t).width; ctx.fillStyle = "#fff"; ctx.fillRect(-2, -size / 2 - 2, w + 4, size + 4); }
      ctx.fillStyle = strong ? "__ACCENT__" : "__MUTED__";
      ctx.fillText(t, 0, 0); ctx.restore();
    }
    for (var i = 0; i < n; i += stride) { rowLabel(i, false); colLabel(i, false); }
    if (target % stride !== 0) rowLabel(target, false);
    // the target row: a mark on the left edge
    ctx.fillStyle = "__INK__";
    ctx.fillRect(g.left - 3, g.top + target * g.cell, 2, Math.max(1, g.cell));
    if (hover) {
      ctx.fillStyle = "rgba(31,35,40,0.10)";
      ctx.fillRect(g.left, g.top + hover.i * g.cell, g.plot, g.cell);
      ctx.fillRect(g.left + hover.j * g.cell, g.top, g.cell, g.plot);
      ctx.strokeStyle = "__INK__"; ctx.lineWidth = 1.5;
      ctx.strokeRect(g.left + hover.j * g.cell, g.top + hover.i * g.cell, Math.max(2, g.cell), Math.max(2, g.cell));
      if (hover.i >= 0) rowLabel(hover.i, true);
      if (hover.j >= 0) colLabel(hover.j, true);
    }
    el("matrix-scale-max").textContent = fmt(matrix(key).max) + (sqrt ? " (sqrt scale)" : "");
    canvas.setAttribute("data-layer", key);
    canvas.setAttribute("data-left", g.left); canvas.setAttribute("data-top", g.top); canvas.setAttribute("data-cell", g.cell);
    canvas.setAttribute("data-renders", ++renders);
  }
  function redraw() { if (!pending) { pending = true; requestAnimationFrame(draw); } }
  function buildZoom() {
    var g = layout(), keep = zoomSelect.value;
    while (zoomSelect.options.length > 1) zoomSelect.remove(1);
    [2, 4, 8, 16].forEach(function (z) { if (g.fit * z / n <= 40 && g.fit * z <= 8000) zoomSelect.add(new Option(z + "\u00d7", String(z))); });
    zoomSelect.value = Array.prototype.some.call(zoomSelect.options, function (o) { return o.value === keep; }) ? keep : "1";
    zoomSelect.disabled = zoomSelect.options.length < 2;
  }
  function cellAt(ev) {
    var r = canvas.getBoundingClientRect(), g = geo;
    var x = ev.clientX - r.left, y = ev.clientY - r.top;
    var i = Math.floor((y - g.top) / g.cell), j = Math.floor((x - g.left) / g.cell);
    var inRows = i >= 0 && i < n, inCols = j >= 0 && j < n;
    if (inRows && inCols) return { i: i, j: j, kind: "cell" };
    if (inRows && x < g.left) return { i: i, j: -1, kind: "row" };
    if (inCols && y < g.top) return { i: -1, j: j, kind: "col" };
    return null;
  }
  canvas.addEventListener("mousemove", function (ev) {
    var c = cellAt(ev);
    if (!c) { if (hover) { hover = null; redraw(); } hideTip(); return; }
    if (!hover || hover.i !== c.i || hover.j !== c.j) { hover = c; redraw(); }
    var key = layerSelect.value;
    if (c.kind === "cell") {
      var v = matrix(key).values[c.i * n + c.j];
      showTip(esc(q(c.i)) + " \u2190 " + esc(q(c.j)) + ": " + fmt(v) +
        "\n<span class=\"sub\">row receives from column \u00b7 " + esc(matrixName(key)) + "</span>", ev.clientX, ev.clientY);
    } else {
      var k = c.kind === "row" ? c.i : c.j;
      showTip(esc(q(k)) + "\n<span class=\"sub\">" + (c.kind === "row" ? "row (receiving)" : "column (contributing)") + esc(raw(k)) + " \u00b7 click a row to make it the target</span>", ev.clientX, ev.clientY);
    }
  });
  canvas.addEventListener("mouseleave", function () { hover = null; hideTip(); redraw(); });
  canvas.addEventListener("click", function (ev) { var c = cellAt(ev); if (c && c.i >= 0) setTarget(c.i); });
  layerSelect.addEventListener("change", function () { hover = null; draw(); });
  scaleSelect.addEventListener("change", function () { draw(); });
  zoomSelect.addEventListener("change", function () { draw(); });
  var resizeTimer = null;
  window.addEventListener("resize", function () { clearTimeout(resizeTimer); resizeTimer = setTimeout(function () { buildZoom(); draw(); }, 120); });

  function setTarget(i) { target = i; renderTokens(); draw(); }
  function setLayer(key) { layerSelect.value = String(key); hover = null; draw(); }

  // ---- self-check: layers in rows of 10 (layer numbers above their errors) ----
  var table = el("selfcheck"), errors = data.reconstruction_error, worst = Math.max.apply(null, errors.concat([0]));
  for (var start = 0; start < errors.length; start += 10) {
    var head = document.createElement("tr"), vals = document.createElement("tr");
    head.innerHTML = "<th>layer</th>"; vals.innerHTML = "<th>error</th>";
    errors.slice(start, start + 10).forEach(function (e, k) {
      head.innerHTML += "<th class=\"num\">" + (start + k + 1) + "</th>";
      vals.innerHTML += "<td class=\"num\">" + e.toExponential(2) + "</td>";
    });
    table.appendChild(head); table.appendChild(vals);
  }
  el("selfcheck-title").textContent = "Self-check: largest error " + worst.toExponential(2) + " over " + errors.length + " layers";

  showUnit();
  buildZoom();
  draw();
  document.body.setAttribute("data-ready", "1");
  window.altiReport = {
    data: data, matrix: matrix, draw: draw, setLayer: setLayer, setTarget: setTarget,
    setUnit: function (unit) { unitSelect.value = unit; showUnit(); },
    geometry: function () { return geo; }, target: function () { return target; }
  };
})();
"""
