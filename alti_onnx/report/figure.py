"""A figure for papers (``--png``): the attribution bars and the rollout heatmap, in the project's style.

Needs matplotlib (the ``plot`` extra); uses ``matplotlib.figure.Figure`` directly, never pyplot.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from alti_onnx.results.explanation import Explanation

from . import style
from .html import display_token

#: Size of the figure in inches; at :data:`style.DPI` (200) the PNG is 2200 x 900 pixels.
FIGURE_SIZE = (11.0, 4.5)
#: Most tick labels on one axis before they are thinned to every k-th token.
MAX_TICK_LABELS = 48


def _stride(n: int, most: int = MAX_TICK_LABELS) -> int:
    return max(1, math.ceil(n / most))


def _title(explanation: Explanation, target: int) -> str:
    token = explanation.tokens[target]
    title = f"ALTI attribution to position {target} ({display_token(token)!r})"
    if explanation.next_token is not None:
        p = explanation.next_token
        title += f"  ·  next token {p.label!r} (p = {p.probability:.3f})"
    elif explanation.prediction is not None:
        p = explanation.prediction
        title += f"  ·  prediction {p.label} (p = {p.probability:.3f})"
    return title


def plot_explanation(explanation: Explanation, target: int | None = None, size: tuple[float, float] = FIGURE_SIZE,
                     title: str | None = None):
    """The figure (a matplotlib ``Figure``): attribution bars on the left, the rollout heatmap on the right."""
    target = explanation.default_target if target is None else target
    if target == "mean":
        raise ValueError("the figure marks one position's attribution: give target=N for a mean-pooled model")
    attribution = explanation.attribution(target)
    target %= len(explanation.tokens)
    labels = [display_token(t) for t in explanation.tokens]
    n = len(labels)
    positions = np.arange(n)
    stride = _stride(n)
    ticks = positions[::stride]
    with style.rc():
        fig, (bars, heat) = style.new_figure(1, 2, size=size, width_ratios=(1.55, 1.0))
        colors = [style.INK if i == target else style.ACCENT for i in range(n)]
        bars.bar(positions, attribution, width=0.8 if n <= 64 else 1.0, color=colors, linewidth=0)
        bars.set_xlim(-0.6, n - 0.4)
        bars.set_xticks(ticks)
        bars.set_xticklabels([labels[i] for i in ticks], rotation=90 if n > 12 else 45,
                             ha="center" if n > 12 else "right", rotation_mode="anchor" if n <= 12 else "default")
        if 0 <= target < n and target % stride == 0:
            bars.get_xticklabels()[target // stride].set_fontweight("bold")
        style.finish_axes(bars, title="attribution (rollout row of the target; the target in black)",
                          ylabel="contribution to the target", grid="y")
        bars.set_ylim(0, max(float(attribution.max()) * 1.08, 1e-6))

        rollout = explanation.rollout[-1]
        image = heat.imshow(rollout, cmap=style.heat_cmap(), vmin=0.0, vmax=max(float(rollout.max()), 1e-12),
                            interpolation="nearest", aspect="equal")
        heat.set_xticks(ticks)
        heat.set_xticklabels([labels[i] for i in ticks], rotation=90, fontsize=style.FONT_SIZE - 2 if n > 24 else None)
        heat.set_yticks(ticks)
        heat.set_yticklabels([labels[i] for i in ticks], fontsize=style.FONT_SIZE - 2 if n > 24 else None)
        heat.tick_params(length=2)
        for spine in heat.spines.values():
            spine.set_visible(True)
            spine.set_color(style.GRID)
        heat.set_title(f"rollout after {explanation.num_layers} layers", loc="left")
        heat.set_xlabel("contributing token (column)")
        heat.set_ylabel("receiving token (row)")
        colorbar = fig.colorbar(image, ax=heat, fraction=0.046, pad=0.02)
        colorbar.outline.set_visible(False)
        colorbar.ax.tick_params(labelsize=style.FONT_SIZE - 2, length=2)
        fig.suptitle(title or _title(explanation, target), x=0.01, ha="left", fontweight="bold",
                     fontsize=style.FONT_SIZE + 2)
    return fig


def write_png(explanation: Explanation, path: str | Path, target: int | None = None,
              size: tuple[float, float] = FIGURE_SIZE, dpi: int = style.DPI, title: str | None = None) -> Path:
    """Save the figure as PNG (``size`` inches at ``dpi``: 2200 x 900 pixels by default)."""
    fig = plot_explanation(explanation, target=target, size=size, title=title)
    return style.save(fig, path, dpi=dpi)
