"""The project's visual style, shared by the HTML report, the ``--png`` figure and the evaluation plot.

Plain data (colors, fonts, the heatmap's color stops) needs nothing; the matplotlib helpers import
matplotlib lazily (the optional ``plot`` extra) and never touch pyplot's global state, so they are
safe in tests, threads and servers::

    from alti_onnx.report import style

    with style.rc():
        fig, axes = style.new_figure(1, 2, size=(12, 4.8))
        for index, (name, values) in enumerate(curves.items()):
            axes[0].plot(x, values, label=name, **style.method_style(name, index))
        style.finish_axes(axes[0], title="comprehensiveness", xlabel="top-k", ylabel="score")
        style.save(fig, "faithfulness.png")
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alti_onnx.errors import AltiOnnxError

#: Text and lines.
INK = "#1f2328"
#: Secondary text, axes, ticks.
MUTED = "#656d76"
#: Grid lines and thin rules.
GRID = "#d0d7de"
#: Page and figure background.
BACKGROUND = "#ffffff"
#: ALTI itself: the attribution bars, ALTI's line in the evaluation plot, highlights.
ACCENT = "#c2255c"
#: The random baseline (dashed).
BASELINE = "#8c959f"
#: Other methods, in order (colorblind-safe, after Okabe & Ito).
CYCLE = ("#0072b2", "#e69f00", "#009e73", "#56b4e9", "#d55e00", "#cc79a7", "#f0e442", "#000000")

#: Sequential colormap of attributions and contribution matrices, from 0 (white) to the maximum.
#: (position in [0, 1], hex color); the HTML report interpolates the same stops in JavaScript.
HEAT_STOPS: tuple[tuple[float, str], ...] = (
    (0.0, "#ffffff"),
    (0.15, "#fde4d3"),
    (0.35, "#f7a583"),
    (0.55, "#e8625c"),
    (0.75, "#c2255c"),
    (1.0, "#5c0a3f"),
)

#: Fonts, best first; the HTML report uses the same lists as CSS font stacks.
FONT_SANS: tuple[str, ...] = ("DejaVu Sans", "Helvetica Neue", "Arial", "sans-serif")
FONT_MONO: tuple[str, ...] = ("DejaVu Sans Mono", "Menlo", "Consolas", "monospace")
#: Base font size in points for figures.
FONT_SIZE = 9.0
#: Resolution of saved figures.
DPI = 200

#: matplotlib rcParams of the style (applied with :func:`rc`, which adds the color cycle).
RC_PARAMS: dict[str, Any] = {
    "font.family": "sans-serif",
    "font.sans-serif": list(FONT_SANS),
    "font.monospace": list(FONT_MONO),
    "font.size": FONT_SIZE,
    "axes.titlesize": FONT_SIZE + 1,
    "axes.titleweight": "bold",
    "axes.labelsize": FONT_SIZE,
    "axes.edgecolor": MUTED,
    "axes.labelcolor": INK,
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "grid.color": GRID,
    "grid.linewidth": 0.6,
    "grid.alpha": 1.0,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "xtick.labelcolor": INK,
    "ytick.labelcolor": INK,
    "xtick.labelsize": FONT_SIZE - 1,
    "ytick.labelsize": FONT_SIZE - 1,
    "legend.fontsize": FONT_SIZE - 1,
    "legend.frameon": False,
    "figure.facecolor": BACKGROUND,
    "savefig.facecolor": BACKGROUND,
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "text.color": INK,
    "image.interpolation": "nearest",
}


def css_font(stack: Sequence[str]) -> str:
    """A CSS font-family value for one of the font stacks."""
    generic = {"sans-serif", "serif", "monospace"}
    return ", ".join(name if name in generic else f'"{name}"' for name in stack)


def heat_color(value: float) -> str:
    """The hex color of ``value`` in [0, 1] on the heat scale (values outside are clipped)."""
    return _interpolated(HEAT_STOPS, value)


def _interpolated(stops: tuple[tuple[float, str], ...], value: float) -> str:
    """The color at ``value`` between ``stops`` (clipped to the first and last stop)."""
    value = min(stops[-1][0], max(stops[0][0], float(value)))
    for (x0, c0), (x1, c1) in zip(stops, stops[1:]):
        if value <= x1:
            t = 0.0 if x1 == x0 else (value - x0) / (x1 - x0)
            a, b = _rgb(c0), _rgb(c1)
            return "#" + "".join(f"{round(p + (q - p) * t):02x}" for p, q in zip(a, b))
    return stops[-1][1]


#: The diverging scale of signed parts (a logit decomposition): against the target (-1), nothing (0), for it (+1).
DIVERGING_STOPS: tuple[tuple[float, str], ...] = ((-1.0, "#b2182b"), (-0.5, "#ef8a62"), (0.0, "#f7f7f7"),
                                                  (0.5, "#67a9cf"), (1.0, "#2166ac"))


def diverging_color(value: float) -> str:
    """The hex color of ``value`` in [-1, 1] on the diverging scale (values outside are clipped)."""
    return _interpolated(DIVERGING_STOPS, value)


def text_color_on_signed(value: float) -> str:
    """Ink or white, whichever reads better on ``diverging_color(value)``."""
    return _ink_on(diverging_color(value))


def text_color_on(value: float) -> str:
    """Ink or white, whichever reads better on ``heat_color(value)``."""
    return _ink_on(heat_color(value))


def _ink_on(background: str) -> str:
    r, g, b = _rgb(background)
    return INK if 0.2126 * r + 0.7152 * g + 0.0722 * b > 140 else "#ffffff"


def _rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


def method_color(name: str, index: int = 0) -> str:
    """The color of an attribution method: ALTI is the accent, random the gray baseline, others cycle."""
    if name.lower() == "alti":
        return ACCENT
    if name.lower() == "random":
        return BASELINE
    return CYCLE[index % len(CYCLE)]


def method_style(name: str, index: int = 0) -> dict[str, Any]:
    """``ax.plot`` keyword arguments of a method's line (color, marker, width; dashed for random)."""
    markers = "osD^v<>ph*"
    style: dict[str, Any] = {
        "color": method_color(name, index),
        "marker": markers[index % len(markers)],
        "linewidth": 1.5,
        "markersize": 4.5,
    }
    if name.lower() == "alti":
        style.update(linewidth=2.6, markersize=5.5, zorder=5)
    elif name.lower() == "random":
        style.update(linestyle="--", linewidth=1.3)
    return style


def _require_matplotlib():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise PlotUnavailableError(
            "figures need matplotlib: pip install 'alti-onnx[plot]'"
        ) from exc
    return matplotlib


def rc_params() -> dict[str, Any]:
    """:data:`RC_PARAMS` with the color cycle, ready for ``matplotlib.rc_context``."""
    _require_matplotlib()
    from cycler import cycler

    params = dict(RC_PARAMS)
    params["axes.prop_cycle"] = cycler(color=list(CYCLE))
    return params


@contextmanager
def rc() -> Iterator[None]:
    """Apply the style to the figures made and saved inside the block (``matplotlib.rc_context``)."""
    matplotlib = _require_matplotlib()
    with matplotlib.rc_context(rc_params()):
        yield


def heat_cmap():
    """The heat scale as a matplotlib colormap (``LinearSegmentedColormap``)."""
    _require_matplotlib()
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("alti_heat", list(HEAT_STOPS))


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.0), **subplots: Any):
    """A styled ``(figure, axes)`` pair without pyplot (no global figure registry, no GUI backend).

    ``axes`` is what ``Figure.subplots(nrows, ncols, **subplots)`` returns (one Axes, or an array).
    The figure uses constrained layout; call it inside :func:`rc` so ticks drawn later are styled too.
    """
    _require_matplotlib()
    from matplotlib.figure import Figure

    with rc():
        fig = Figure(figsize=size, layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=True, **subplots) if nrows * ncols else None
    return fig, axes


def finish_axes(ax, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None,
                grid: str | None = "y", legend: bool = False) -> None:
    """Title, labels, a light grid on ``grid`` ('x', 'y', 'both' or None) and an optional legend."""
    if title:
        ax.set_title(title, loc="left")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if grid:
        ax.grid(True, axis=grid, color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)
    if legend:
        ax.legend()


def save(fig, path: str | Path, dpi: int = DPI) -> Path:
    """Save ``fig`` as PNG with the style's resolution and background at exactly ``path`` (matplotlib
    would add ".png" to a name without a suffix, or refuse one it does not know); returns the path."""
    path = Path(path)
    with rc(), open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=dpi, facecolor=BACKGROUND)
    return path


class PlotUnavailableError(AltiOnnxError, ImportError):
    """matplotlib (the ``plot`` extra) is not installed; the CLI prints it as a one-line error."""
