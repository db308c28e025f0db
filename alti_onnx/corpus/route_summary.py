"""Which components a corpus relies on (``batch --routes``, docs/routes.md): over the records' route
graphs, how often and how strongly each head and each feed-forward block lies on a route to the
prediction.

Read from the records written (a JSON-lines file, or a Ray run's shards), so a resumed or
distributed run is summarized whole, by the same code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class RouteSummary:
    """Over ``texts`` route graphs: ``head_share[l, h]`` the share of texts where head h of layer l
    has an edge on a route, ``head_weight[l, h]`` the mean (over all texts) of that head's summed
    edge weights; ``ffn_share[l]`` and ``ffn_weight[l]`` the same for the feed-forward block's own
    output (``ffn`` edges)."""

    texts: int
    head_share: np.ndarray
    head_weight: np.ndarray
    ffn_share: np.ndarray
    ffn_weight: np.ndarray
    threshold: float | None
    renormalize: bool | None = None

    def to_dict(self) -> dict[str, object]:
        return {"texts": self.texts, "threshold": self.threshold, "renormalize": self.renormalize,
                "head_share": self.head_share.tolist(),
                "head_weight": self.head_weight.tolist(), "ffn_share": self.ffn_share.tolist(),
                "ffn_weight": self.ffn_weight.tolist()}

    def top_components(self, count: int = 12) -> list[tuple[str, float, float]]:
        """The components most often on a route: ("layer l head h" or "layer l ffn", share, weight)."""
        found = [(f"layer {layer} head {head}", float(self.head_share[layer, head]), float(self.head_weight[layer, head]))
                 for layer, head in zip(*np.nonzero(self.head_share))]
        found += [(f"layer {layer} ffn", float(self.ffn_share[layer]), float(self.ffn_weight[layer]))
                  for layer in np.flatnonzero(self.ffn_share)]
        return sorted(found, key=lambda item: (-item[1], -item[2]))[:count]


def summarize_routes(records: Iterable[dict], layers: int, heads: int) -> RouteSummary:
    """The summary of every record holding a ``routes`` object (error records are skipped)."""
    head_count = np.zeros((layers, heads))
    head_weight = np.zeros((layers, heads))
    ffn_count = np.zeros(layers)
    ffn_weight = np.zeros(layers)
    texts = 0
    queries: set[tuple] = set()
    for record in records:
        routes = record.get("routes")
        if not isinstance(routes, dict):
            if "error" not in record:  # a record of another job (one without --routes)
                raise ValueError(f"record {record.get('index')} holds neither routes nor an error")
            continue
        texts += 1
        queries.add((routes.get("threshold"), routes.get("renormalize")))
        if len(queries) > 1:
            raise ValueError(f"the records' routes were pruned differently ({sorted(queries, key=str)})")
        seen_heads = np.zeros((layers, heads), dtype=bool)
        seen_ffn = np.zeros(layers, dtype=bool)
        for edge in routes["edges"]:
            layer = int(edge["layer"])
            if not 0 <= layer < layers:
                raise ValueError(f"a record's route has layer {layer}; the model has {layers}")
            if edge["kind"] == "attention":
                head = int(edge["head"])
                if not 0 <= head < heads:
                    raise ValueError(f"a record's route has head {head}; the model's layers have {heads}")
                seen_heads[layer, head] = True
                head_weight[layer, head] += float(edge["weight"])
            elif edge["kind"] == "ffn":
                seen_ffn[layer] = True
                ffn_weight[layer] += float(edge["weight"])
        head_count += seen_heads
        ffn_count += seen_ffn
    scale = 1.0 / max(texts, 1)
    threshold, renormalize = next(iter(queries), (None, None))
    return RouteSummary(texts, head_count * scale, head_weight * scale, ffn_count * scale, ffn_weight * scale,
                        threshold, renormalize)


def read_output_records(output: Path) -> Iterator[dict]:
    """The records of a ``batch`` output: a JSON-lines file, or a Ray run's directory of shards."""
    files = sorted(output.glob("part-*.jsonl")) if output.is_dir() else [output]
    for path in files:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def write_heatmap(summary: RouteSummary, path: Path, title: str) -> Path:
    """The layer x head heatmap of ``head_share`` with the feed-forward blocks as a last column (PNG;
    needs matplotlib, the ``plot`` extra)."""
    from matplotlib.figure import Figure

    from alti_onnx.report import style

    layers, heads = summary.head_share.shape
    grid = np.concatenate([summary.head_share, summary.ffn_share[:, None]], axis=1)
    figure = Figure(figsize=(1.6 + 0.42 * (heads + 1), 1.2 + 0.3 * layers), dpi=style.DPI)
    axes = figure.add_subplot()
    image = axes.imshow(grid, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    axes.set_xticks(range(heads + 1), [str(h) for h in range(heads)] + ["FFN"], fontsize=7)
    axes.set_yticks(range(layers), [str(layer) for layer in range(layers)], fontsize=7)
    axes.set_xlabel("head", fontsize=8)
    axes.set_ylabel("layer", fontsize=8)
    axes.axvline(heads - 0.5, color="white", linewidth=2)
    axes.set_title(title, fontsize=8)
    bar = figure.colorbar(image, ax=axes, fraction=0.04)
    bar.set_label("share of texts with the component on a route", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    figure.tight_layout()
    figure.savefig(path)
    return path
