"""The compact view a notebook shows for an Explanation (``_repr_html_``): static HTML, no script
(notebooks do not run scripts of untrusted output) and no network.

The tokens colored by their attribution to the target (words, when the tokenizer says where they
are, with the pieces in each chip's title), the prediction, the self-check, and a small heatmap
of the final rollout (only for full explanations of up to ``HEATMAP_TOKENS`` tokens).
"""

from __future__ import annotations

import html

import numpy as np

from . import style
from .html import display_token

#: Longer texts get no heatmap inline (an S x S grid of cells would be too big to be useful).
HEATMAP_TOKENS = 48


def inline_html(explanation) -> str:
    """The compact HTML of ``explanation`` (an ``alti_onnx.Explanation``)."""
    target = explanation.default_target
    attribution = explanation.attribution(target)
    chips = _word_chips(explanation, target) if explanation.word_ids is not None else None
    if chips is None:
        chips = [(display_token(t), float(a), t) for t, a in zip(explanation.tokens, attribution)]
    peak = max((a for _, a, _ in chips), default=0.0) or 1.0
    parts = [f'<div class="alti-inline" style="font-family:{html.escape(style.css_font(style.FONT_SANS))};'
             f'color:{style.INK};line-height:1.9;max-width:900px">']
    where = "the mean of all tokens" if target == "mean" else f"position {target} ({explanation.tokens[target]!r})"
    parts.append(f'<div style="color:{style.MUTED};font-size:12px">ALTI attribution to {html.escape(where)}</div>')
    parts.append("<div>")
    for shown, value, title in chips:
        level = value / peak
        parts.append(
            f'<span class="alti-chip" data-attribution="{value:.6g}" title="{html.escape(title)}: {value:.4f}" '
            f'style="background:{style.heat_color(level)};color:{style.text_color_on(level)};'
            f'padding:1px 4px;margin:1px;border-radius:3px;white-space:pre">{html.escape(shown)}</span>'
        )
    parts.append("</div>")
    facts = []
    if explanation.prediction is not None:
        p = explanation.prediction
        facts.append(f"prediction: <b>{html.escape(str(p.label))}</b> ({p.probability:.3f})")
    if explanation.next_token is not None:
        p = explanation.next_token
        facts.append(f"next token: <b>{html.escape(repr(p.label))}</b> ({p.probability:.3f})")
    error = float(np.max(explanation.reconstruction_error)) if len(explanation.reconstruction_error) else 0.0
    facts.append(f"self-check: max reconstruction error {error:.2e} over {explanation.num_layers} layers")
    parts.append(f'<div style="font-size:12px;color:{style.MUTED}">{" · ".join(facts)}</div>')
    if getattr(explanation, "logit", None) is not None:
        from .logit_view import logit_html

        parts.append(logit_html(explanation.logit, list(explanation.tokens)))
    if getattr(explanation, "routes", None) is not None:
        from .routes_view import routes_html

        parts.append(routes_html(explanation.routes, list(explanation.tokens), interactive=False))
    if explanation.rollout is not None and len(explanation.tokens) <= HEATMAP_TOKENS:
        parts.append(_heatmap(explanation))
    parts.append("</div>")
    return "".join(parts)


def _word_chips(explanation, target) -> list[tuple[str, float, str]] | None:
    try:
        words = explanation.words(target)
    except (ValueError, IndexError):
        return None
    return [(word.text, float(value), " ".join(explanation.tokens[k] for k in word.positions))
            for word, value in zip(words.words, words.attribution)]


def _heatmap(explanation) -> str:
    """The final rollout as a table of colored cells (row i receives from column j)."""
    matrix = explanation.rollout[-1]
    peak = float(matrix.max()) or 1.0
    cells = ['<table class="alti-heatmap" style="border-collapse:collapse;margin-top:6px;font-size:10px">',
             f'<caption style="text-align:left;white-space:nowrap;color:{style.MUTED}">rollout after the last layer '
             '(row: receiving token, column: contributing token)</caption>']
    for i, token in enumerate(explanation.tokens):
        row = [f'<th style="text-align:right;padding-right:4px;font-weight:normal">{html.escape(display_token(token))}</th>']
        row += [f'<td title="{matrix[i, j]:.4f}" style="width:10px;height:10px;padding:0;'
                f'background:{style.heat_color(matrix[i, j] / peak)}"></td>' for j in range(matrix.shape[1])]
        cells.append("<tr>" + "".join(row) + "</tr>")
    cells.append("</table>")
    return "".join(cells)


def inline_seq2seq_html(explanation) -> str:
    """The compact HTML of an encoder-decoder explanation (an ``alti_onnx.results.seq2seq.Seq2SeqExplanation``):
    each output token with its source share and the source tokens colored by their attribution to it."""
    attribution = explanation.source_attribution
    peak = float(attribution.max()) if attribution.size else 0.0
    peak = peak or 1.0
    how = "generated" if explanation.generated else "teacher-forced"
    parts = [f'<div class="alti-inline" style="font-family:{html.escape(style.css_font(style.FONT_SANS))};'
             f'color:{style.INK};line-height:1.9;max-width:900px">',
             f'<div style="color:{style.MUTED};font-size:12px">ALTI+ attribution of each output token ({how}) '
             'to the source tokens</div>',
             '<table class="alti-seq2seq" style="border-collapse:collapse;font-size:13px">']
    for position, token in enumerate(explanation.target_tokens):
        share = float(explanation.source_share[position])
        chips = "".join(
            f'<span class="alti-chip" data-attribution="{value:.6g}" title="{html.escape(source)}: {value:.4f}" '
            f'style="background:{style.heat_color(value / peak)};color:{style.text_color_on(value / peak)};'
            f'padding:1px 4px;margin:1px;border-radius:3px;white-space:pre">{html.escape(display_token(source))}</span>'
            for source, value in zip(explanation.tokens, (float(v) for v in attribution[position])))
        parts.append(f'<tr><th style="text-align:right;padding-right:6px;font-weight:normal">'
                     f'{html.escape(display_token(token))}</th><td style="padding-right:6px;color:{style.MUTED}" '
                     f'class="alti-share">{share:.3f}</td><td>{chips}</td></tr>')
    parts.append("</table>")
    error = float(np.max(explanation.reconstruction_error)) if len(explanation.reconstruction_error) else 0.0
    parts.append(f'<div style="font-size:12px;color:{style.MUTED}">self-check: max reconstruction error {error:.2e} '
                 f'over {len(explanation.reconstruction_error)} blocks</div></div>')
    return "".join(parts)
