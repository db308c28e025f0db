"""Pictures of an explanation: a self-contained HTML report and a PNG figure, in one shared style.

* :func:`write_html` / :func:`render_html`: one HTML file (inline CSS, JS and data, no network) with
  the tokens colored by attribution, the prediction, every layer's contribution matrix and the rollout
  as a canvas heatmap with a layer selector and the value under the pointer, and the self-check.
* :func:`write_png`: the attribution bars and the rollout heatmap for papers (needs the ``plot`` extra).
* :mod:`.style`: colors, fonts and matplotlib helpers, also for the evaluation plot.
"""

from __future__ import annotations

from pathlib import Path

from . import style
from .html import decode_matrix, display_token, render_html, report_data, write_html
from .style import PlotUnavailableError


def write_png(explanation, path: str | Path, target: int | None = None, **options) -> Path:
    """Save the attribution bars and the rollout heatmap as PNG (see :func:`.figure.write_png`)."""
    from .figure import write_png as _write_png

    return _write_png(explanation, path, target=target, **options)


__all__ = [
    "PlotUnavailableError",
    "decode_matrix",
    "display_token",
    "render_html",
    "report_data",
    "style",
    "write_html",
    "write_png",
]
