"""The logit decomposition drawn as static HTML (the report's section and the notebook view): each
token a chip on a diverging scale (blue: for the target, red: against it, white: nothing), the named
parts as a table of signed bars, and the sums that make the self-check."""

from __future__ import annotations

import html

import numpy as np

from alti_onnx.results.logit import SHOWN_PARTS, LogitExplanation

from . import style
from .html import display_token


def logit_html(logit: LogitExplanation, tokens: list[str]) -> str:
    """The decomposition's chips, parts and sums (no script, no network)."""
    peak = float(np.abs(logit.attribution).max(initial=0.0)) or 1.0
    where = "" if logit.position is None else f" after position {logit.position}"
    method = "ALTI-Logit" if logit.method == "alti-logit" else "logit decomposition"
    parts = [f'<div class="alti-logit"><div style="color:{style.MUTED};font-size:12px">{method} of '
             f'{html.escape(logit.describe())}{html.escape(where)}: value {logit.value:+.4f}</div><div>']
    for position, (token, value) in enumerate(zip(tokens, logit.attribution)):
        level = float(value) / peak
        outline = ";outline:2px solid " + style.INK if position == logit.position else ""
        parts.append(
            f'<span class="alti-logit-chip" data-part="{float(value):.6g}" title="{html.escape(token)}: {value:+.4f}" '
            f'style="background:{style.diverging_color(level)};color:{style.text_color_on_signed(level)};'
            f'padding:1px 4px;margin:1px;border-radius:3px;white-space:pre{outline}">'
            f'{html.escape(display_token(token))}</span>')
    parts.append("</div>")
    ordered = sorted(logit.parts.items(), key=lambda item: -abs(item[1]))
    shown, rest = ordered[:SHOWN_PARTS], ordered[SHOWN_PARTS:]
    if rest:
        shown.append((f"{len(rest)} more parts", sum(v for _, v in rest)))
    scale = max((abs(v) for _, v in shown), default=0.0) or 1.0
    rows = []
    for name, value in shown:
        width = round(80 * abs(value) / scale)
        color = style.diverging_color(1.0 if value >= 0 else -1.0)
        rows.append(f'<tr class="alti-logit-part"><th style="text-align:left;font-weight:normal;padding-right:8px">'
                    f'{html.escape(name)}</th><td style="text-align:right;padding-right:8px">{value:+.4f}</td>'
                    f'<td><span style="display:inline-block;height:8px;width:{width}px;background:{color}"></span></td></tr>')
    parts.append('<table class="alti-logit-parts" style="border-collapse:collapse;font-size:12px;margin-top:4px">'
                 + "".join(rows) + "</table>")
    parts.append(f'<div style="font-size:12px;color:{style.MUTED}">value {logit.value:+.4f} = tokens '
                 f'{logit.tokens_total:+.4f} + parts {sum(logit.parts.values()):+.4f}; self-check: reconstruction error '
                 f'{logit.reconstruction_error:.2e} (relative)</div></div>')
    return "".join(parts)
