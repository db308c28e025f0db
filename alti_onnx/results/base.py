"""The interface every explanation implements, whatever the model's layout, and what they share:
the ``.npz`` file ``save`` writes and ``load`` reads, and the table the CLI prints.

Callers (the CLI, ``batch``, Ray, notebooks) use only this interface: ``attribution``, ``words``,
``to_record``, ``save``/``load``, ``_repr_html_``, ``report_html`` and ``table``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .record import Target
from .words import WordExplanation


@dataclass(frozen=True)
class TableView:
    """A table of one explanation as the CLI prints it: ``rows`` of cells, where a float cell is drawn
    as a bar of up to ``bar_width`` characters (its value a fraction of the longest), the row
    ``highlight`` in bold, and a closing ``footer`` line."""

    title: str
    columns: list[str]
    rows: list[list[str | float]]
    footer: str
    highlight: int | None = None
    bar_width: int = 30
    #: what the model predicted, printed before the table
    headline: tuple[str, ...] = ()


class ExplanationBase(ABC):
    """What every explanation offers (``Explanation``: one graph; ``Seq2SeqExplanation``: ALTI+)."""

    #: The layout name ``save`` writes, so that ``load`` reads the file back as the right class.
    layout: ClassVar[str]
    _by_layout: ClassVar[dict[str, type[ExplanationBase]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        ExplanationBase._by_layout[cls.layout] = cls

    tokens: list[str]
    reconstruction_error: np.ndarray

    @abstractmethod
    def attribution(self, target: Target | None = None) -> np.ndarray:
        """How much each input token contributes to ``target`` after all layers."""

    @abstractmethod
    def words(self, target: Target | None = None) -> WordExplanation:
        """The attribution to ``target`` over words instead of subword pieces."""

    @abstractmethod
    def to_record(self, target: Target | None = None, full: bool = False, words: bool = False) -> dict[str, object]:
        """The one record (docs/records.md): what ``explain --json``, ``batch`` and Ray write."""

    @abstractmethod
    def table(self, target: Target | None = None, words: bool = False) -> TableView:
        """What the CLI prints."""

    @abstractmethod
    def report_html(self, model: str | None = None, target: Target | None = None) -> str:
        """The self-contained HTML report (``explain --html``)."""

    def png_target(self, target: Target | None = None) -> int:
        """The position ``write_png`` would draw for ``target`` (a ValueError when it cannot draw one)."""
        raise ValueError(f"--png is not for {self.layout} models: the table, --json and --html cover every target")

    def write_png(self, path: str | Path, target: Target | None = None) -> Path:
        """A PNG figure of the attribution to one position and the rollout (``explain --png``)."""
        raise ValueError(f"--png is not for {self.layout} models: the table, --json and --html cover every target")

    @abstractmethod
    def _repr_html_(self) -> str:
        """The compact static view a notebook shows."""

    @abstractmethod
    def _arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        """What ``save`` keeps: the arrays by name, and every other field as JSON."""

    @classmethod
    @abstractmethod
    def _from_saved(cls, arrays: dict[str, np.ndarray], meta: dict[str, object]) -> ExplanationBase:
        """The explanation ``_arrays`` described (checked: a file that does not fit is a ValueError)."""

    def to_json(self, target: Target | None = None, full: bool = True, words: bool = False) -> str:
        return json.dumps(self.to_record(target, full=full, words=words), allow_nan=False)

    def save(self, path: str | Path) -> Path:
        """Keep this explanation in one ``.npz`` file (its arrays, and its other fields as JSON), to be
        read back with ``load`` without recomputing. Returns the path written."""
        path = Path(path)
        arrays, meta = self._arrays()
        meta = {"format": SAVE_FORMAT, "layout": self.layout, **meta}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        with open(path, "wb") as handle:  # np.savez would add '.npz' to a name without it
            np.savez_compressed(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExplanationBase:
        """An explanation saved with ``save`` (of whichever layout it was saved from)."""
        with np.load(Path(path), allow_pickle=False) as saved:
            if "meta" not in saved.files:
                raise ValueError(f"{path} is not a saved explanation (no metadata)")
            meta = json.loads(saved["meta"].tobytes().decode("utf-8"))
            if meta.get("format") != SAVE_FORMAT:
                raise ValueError(f"{path} was saved in format {meta.get('format')!r}; this version reads {SAVE_FORMAT}")
            arrays = {name: saved[name] for name in saved.files if name != "meta"}
        from alti_onnx.results import explanation, seq2seq  # noqa: F401 - each layout's class registers itself

        kind = ExplanationBase._by_layout.get(meta.get("layout", "single-graph"))
        if kind is None or (cls is not ExplanationBase and not issubclass(kind, cls)):
            raise ValueError(f"{path} holds a {meta.get('layout')!r} explanation, not a {cls.__name__}")
        return kind._from_saved(arrays, meta)


#: The layout version of the files ``save`` writes.
SAVE_FORMAT = 1
