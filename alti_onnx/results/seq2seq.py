"""The result of explaining one source and its output with ALTI+ (an encoder-decoder export)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .base import ExplanationBase, TableView
from .record import MEAN, RECORD_VERSION, Target, target_json
from .routes import Seq2SeqRoutes
from .words import Word, WordExplanation, group_words, words_vector

#: Source tokens named per target token in the CLI's table.
TOP_SOURCE_TOKENS = 3


@dataclass(frozen=True)
class Seq2SeqExplanation(ExplanationBase):
    """ALTI+ of one source and one target (docs/alti.md). Target position t is the decoder's input
    token ``decoder_tokens[t]``; its row explains the token it predicts, ``target_tokens[t]``.

    - ``tokens``, ``input_ids``: the source (what the encoder reads), as for every explanation;
    - ``encoder_contributions`` [L_enc, J, J], ``encoder_rollout`` [L_enc, J, J];
    - ``self_contributions`` [L_dec, T, T]: the decoder's self-attention;
    - ``cross_contributions`` [L_dec, T, J + 1]: each encoder output and, last, the residual;
    - ``combined`` [L_dec, T, J + T]: ALTI+'s rollout over [source tokens; decoder tokens];
    - ``source_share`` [T]: the source's share of the last layer's row;
    - ``reconstruction_error``: the self-check of every block, encoder first.

    Its default target is every output token: ``attribution()`` is the [T, J + T] matrix of the last
    layer's rows, ``attribution(t)`` the row of target position t.
    """

    tokens: list[str]
    input_ids: list[int]
    decoder_tokens: list[str]
    target_tokens: list[str]
    target_ids: list[int]
    generated: bool
    encoder_contributions: np.ndarray
    encoder_rollout: np.ndarray
    self_contributions: np.ndarray
    cross_contributions: np.ndarray
    combined: np.ndarray
    source_share: np.ndarray
    reconstruction_error: np.ndarray
    offsets: list[tuple[int, int]] | None = field(default=None, repr=False)
    word_ids: list[int | None] | None = field(default=None, repr=False)
    text: str | None = field(default=None, repr=False)
    #: the routes to one output token's prediction, when asked for (docs/routes.md)
    routes: Seq2SeqRoutes | None = field(default=None, repr=False)

    layout = "encoder-decoder"
    #: every target token (``attribution()`` is then a matrix)
    default_target = None

    @property
    def source_attribution(self) -> np.ndarray:
        """[T, J]: each target token's attribution to the source tokens (the last layer's source columns)."""
        return self.combined[-1][:, : len(self.tokens)]

    def attribution(self, target: Target | None = None) -> np.ndarray:
        """[J + T] for target position ``target`` (over the source tokens, then the decoder's input
        tokens); [T, J + T] for every target position when ``target`` is None."""
        if target is None:
            return self.combined[-1].copy()
        if target == MEAN or isinstance(target, bool) or not isinstance(target, (int, np.integer)):
            raise IndexError(f"an encoder-decoder's target is an output position, got {target!r}")
        count = len(self.target_tokens)
        if not -count <= target < count:
            raise IndexError(f"target position {target} is outside the {count} output tokens")
        return self.combined[-1][target].copy()

    def words(self, target: Target | None = None) -> WordExplanation:
        """The attribution of output position ``target`` (default the last) over the source's words,
        then the decoder's input tokens (each a word of its own)."""
        if self.word_ids is None or self.offsets is None:
            raise ValueError("this explanation has no word ids (made from token ids, not text): words() needs the text")
        position = len(self.target_tokens) - 1 if target is None else target
        row = self.attribution(position)
        source = group_words(self.tokens, self.word_ids, self.offsets, self.text)
        start = len(self.tokens)
        prefix = [Word(token, 0, 0, (start + k,)) for k, token in enumerate(self.decoder_tokens)]
        words = source + prefix
        return WordExplanation(words=words, target=int(position) % len(self.target_tokens),
                               target_word=len(source) + int(position) % len(self.target_tokens),
                               attribution=words_vector(row, words), contributions=None, rollout=None)

    def to_record(self, target: Target | None = None, full: bool = False, words: bool = False) -> dict[str, object]:
        """The one record (docs/records.md). ``attribution`` is one row per output token over [source
        tokens; decoder tokens] (the row of ``target`` alone when one is given); ``full`` adds every
        layer's matrices."""
        record: dict[str, object] = {
            "record_version": RECORD_VERSION,
            "layout": self.layout,
            "tokens": list(self.tokens),
            "input_ids": [int(i) for i in self.input_ids],
            "target": None if target is None else target_json(target),
            "attribution": self.attribution(target).tolist(),
            "reconstruction_error": [float(e) for e in self.reconstruction_error],
            "decoder_tokens": list(self.decoder_tokens),
            "target_tokens": list(self.target_tokens),
            "target_ids": [int(i) for i in self.target_ids],
            "generated": bool(self.generated),
            "source_share": self.source_share.tolist(),
        }
        if self.routes is not None:
            record["routes"] = self.routes.to_dict()
        if full:
            record.update(
                encoder_contributions=self.encoder_contributions.tolist(),
                encoder_rollout=self.encoder_rollout.tolist(),
                self_contributions=self.self_contributions.tolist(),
                cross_contributions=self.cross_contributions.tolist(),
                combined=self.combined.tolist(),
            )
        if words:  # the words of one output position (the last, without a target); the record's target stays
            by_word = self.words(target).to_dict()
            by_word.pop("target")
            record.update(by_word)
        return record

    def table(self, target: Target | None = None, words: bool = False) -> TableView:
        """Each output token with its source share (number and bar) and its most contributing source tokens."""
        if target is not None:
            self.attribution(target)  # a position outside the output is an IndexError here, not a wrong row
        how = "generated" if self.generated else "teacher-forced"
        attribution = self.source_attribution
        rows: list[list[str | float]] = []
        for position, token in enumerate(self.target_tokens):
            share = float(self.source_share[position])
            order = np.argsort(-attribution[position], kind="stable")[:TOP_SOURCE_TOKENS]
            best = ", ".join(f"{self.tokens[j]} {attribution[position, j]:.3f}" for j in order)
            rows.append([str(position), token, f"{share:.4f}", share, best])
        errors = self.reconstruction_error
        return TableView(
            title=f"ALTI+ source contributions ({how}; source: {' '.join(self.tokens)})",
            columns=["pos", "token", "source share", "", "top source tokens"], rows=rows,
            footer=f"self-check: max reconstruction error {max(errors):.2e} over {len(errors)} blocks",
            highlight=None if target is None else int(target) % len(self.target_tokens), bar_width=20,
        )

    def routes_table(self) -> TableView:
        """The routes' table (``explain(..., routes=...)``): both graphs' heaviest edges."""
        if self.routes is None:
            raise ValueError("this explanation has no routes: explain with routes=RouteQuery()")
        return self.routes.table(list(self.decoder_tokens), list(self.tokens))

    def report_html(self, model: str | None = None, target: Target | None = None) -> str:
        from alti_onnx.report.seq2seq_html import render_seq2seq_html

        return render_seq2seq_html(self, model)

    def _repr_html_(self) -> str:
        from alti_onnx.report.inline import inline_seq2seq_html

        return inline_seq2seq_html(self)

    def _arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        arrays = {name: np.asarray(getattr(self, name)) for name in _ARRAYS}
        meta = {name: getattr(self, name) for name in _FIELDS}
        meta["offsets"] = None if self.offsets is None else [list(o) for o in self.offsets]
        meta["routes"] = None if self.routes is None else self.routes.to_dict()
        return arrays, meta

    @classmethod
    def _from_saved(cls, arrays: dict[str, np.ndarray], meta: dict[str, object]) -> Seq2SeqExplanation:
        missing = [name for name in _ARRAYS if name not in arrays] + [name for name in _FIELDS if name not in meta]
        if missing:
            raise ValueError(f"the saved explanation lacks {', '.join(missing)}")
        found = cls(**{name: arrays[name] for name in _ARRAYS}, **{name: meta[name] for name in _FIELDS},
                    offsets=None if meta.get("offsets") is None else [tuple(o) for o in meta["offsets"]],
                    routes=None if meta.get("routes") is None else Seq2SeqRoutes.from_dict(meta["routes"]))
        sources, outputs = len(found.tokens), len(found.target_tokens)
        if found.combined.ndim != 3 or found.combined.shape[1:] != (outputs, sources + len(found.decoder_tokens)):
            raise ValueError(f"the saved ALTI+ matrices {found.combined.shape} do not fit {sources} source and "
                             f"{outputs} output tokens")
        if not all(np.all(np.isfinite(arrays[name])) for name in _ARRAYS):
            raise ValueError("the saved explanation holds NaN or Infinity")
        return found


#: What ``save`` keeps as arrays, and as JSON.
_ARRAYS = ("encoder_contributions", "encoder_rollout", "self_contributions", "cross_contributions", "combined",
           "source_share", "reconstruction_error")
_FIELDS = ("tokens", "input_ids", "decoder_tokens", "target_tokens", "target_ids", "generated", "word_ids", "text")
