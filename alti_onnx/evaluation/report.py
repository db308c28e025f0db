"""Writing an EvaluationResult: a markdown table, the raw numbers as JSON, and a plot of the curves."""

from __future__ import annotations

import json
from pathlib import Path

from .runner import EvaluationResult

__all__ = ["markdown_table", "summary_lines", "write_report", "plot"]


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def markdown_table(result: EvaluationResult, per_bin: bool = True) -> str:
    """Method x (comprehensiveness AOPC, sufficiency AOPC[, per-bin values]) as a markdown table."""
    score = "(aupc.py)" if result.meta.get("protocol") == "paper" else "AOPC"
    header = ["method", f"comprehensiveness {score} ↑", f"sufficiency {score} ↓"]
    if per_bin:
        header += [f"comp {_pct(b)}" for b in result.bins] + [f"suff {_pct(b)}" for b in result.bins]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, m in result.methods.items():
        if m.computed:
            mean = m.scores.mean()
            cells = [name, f"{mean['comprehensiveness_aopc']:.4f}", f"{mean['sufficiency_aopc']:.4f}"]
            if per_bin:
                cells += [f"{v:.4f}" for v in mean["comprehensiveness"]] + [f"{v:.4f}" for v in mean["sufficiency"]]
        else:
            cells = [name, m.reason or "not computed", ""] + ([""] * (2 * len(result.bins)) if per_bin else [])
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def summary_lines(result: EvaluationResult) -> list[str]:
    """What was evaluated, in a few lines above the table."""
    meta = result.meta
    lines = [
        f"- model: `{meta.get('model')}`",
        f"- sentences: {len(result.texts)}" + (f" ({len(result.skipped)} skipped)" if result.skipped else ""),
    ]
    if meta.get("data"):
        lines.append(f"- data: `{meta['data']}`")
    if result.accuracy is not None:
        lines.append(f"- model accuracy on these sentences: {result.accuracy:.4f}")
    lines.append(
        f"- bins: {', '.join(_pct(b) for b in result.bins)} of the non-special tokens (rounded up); tokens deleted, "
        "specials kept; y = the class predicted on the full sentence; means over sentences"
    )
    if meta.get("protocol") == "paper":
        lines.append("- protocol: the ALTI authors' aupc.py (k = 0 and the bins; comprehensiveness made monotone by a "
                     "running minimum of p(y), sufficiency by a running maximum; the bins' sum divided by 6); "
                     "the per-bin columns are the raw drops")
    else:
        lines.append("- protocol: DeYoung et al. (2020): AOPC, the mean over the bins of p(y|x) - p(y|perturbed)")
    lines.append(
        f"- random: mean of {meta.get('random_draws')} seeded draws (seed {meta.get('seed')}); "
        f"{meta.get('forward_passes')} distinct forward passes; {meta.get('seconds')} s"
    )
    return lines


def write_report(result: EvaluationResult, out_dir: str | Path, title: str = "Faithfulness") -> dict[str, Path]:
    """OUT/results.md, OUT/results.json and OUT/faithfulness.png; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "results.md", "json": out_dir / "results.json", "plot": out_dir / "faithfulness.png"}
    text = f"# {title}\n\n" + "\n".join(summary_lines(result)) + "\n\n" + markdown_table(result)
    paths["markdown"].write_text(text, encoding="utf-8")
    paths["json"].write_text(json.dumps(result.to_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    plot(result, paths["plot"], title)
    return paths


def plot(result: EvaluationResult, path: str | Path, title: str = "Faithfulness") -> Path:
    """Both curves over the bins, one line per computed method, in the project's figure style."""
    from alti_onnx.report import style

    x = [b * 100 for b in result.bins]
    with style.rc():
        fig, axes = style.new_figure(1, 2, size=(15, 4.8))
        for index, (name, m) in enumerate(result.methods.items()):
            if not m.computed:
                continue
            mean = m.scores.mean()
            label = f"{name}: AOPC comp {mean['comprehensiveness_aopc']:.3f}, suff {mean['sufficiency_aopc']:.3f}"
            for ax, key in zip(axes, ("comprehensiveness", "sufficiency")):
                ax.plot(x, mean[key], label=label if key == "comprehensiveness" else None, **style.method_style(name, index))
        for ax, key, better in zip(axes, ("comprehensiveness", "sufficiency"), ("higher", "lower")):
            ax.set_xscale("log")
            ax.set_xticks(x)
            ax.set_xticklabels([f"{v:g}%" for v in x])
            ax.minorticks_off()
            style.finish_axes(
                ax,
                title=f"{key} ({better} is more faithful)",
                xlabel="top-k tokens (% of the non-special tokens, rounded up)",
                ylabel=f"{key} (p(y|x) - p(y|perturbed))",
                grid="both",
            )
        fig.legend(loc="outside right center", fontsize=8, title="method (AOPC)", title_fontsize=8)
        fig.suptitle(f"{title}: {len(result.texts)} sentences")
    return style.save(fig, path)
