"""The result of explaining one text."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .base import ExplanationBase, TableView
from .logit import LogitExplanation
from .prediction import Prediction
from .record import MEAN, RECORD_VERSION, Target, target_json
from .routes import RouteExplanation
from .words import WordExplanation, group_words, words_matrix, words_vector


@dataclass(frozen=True)
class Explanation(ExplanationBase):
    """ALTI for one text. Row i = receiving token, column j = contributing token.

    ``contributions[l]`` is layer l's normalized contribution matrix, ``rollout[l]`` the product
    of layers 0..l, ``reconstruction_error[l]`` the self-check: the largest absolute difference
    between the block output rebuilt from the decomposition and the model's own. For baselines,
    ``attention[l]`` holds the head-averaged attention probabilities and ``norm_based[l]`` the
    row-normalized ||T'[i, j]|| of Kobayashi et al. ``prediction`` is the classifier's predicted
    label when the model has a ``logits`` output. For a causal language model ``default_target`` is
    the last token and ``next_token`` what the model predicts after it (token id, text, probability).

    A target-only explanation (``explain(..., full=False)``) has no ``contributions``, ``rollout`` or
    ``attention``: ``attributions`` holds the final rollout rows of the positions asked for.
    """

    tokens: list[str]
    input_ids: list[int]
    contributions: np.ndarray | None
    rollout: np.ndarray | None
    reconstruction_error: np.ndarray
    default_target: int | str = 0  #: a position, or "mean" (a mean-pooled sentence encoder)
    outputs: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    attention: np.ndarray | None = field(default=None, repr=False)
    norm_based: np.ndarray | None = field(default=None, repr=False)
    prediction: Prediction | None = None
    next_token: Prediction | None = None
    attributions: dict[int, np.ndarray] | None = field(default=None, repr=False)
    #: each token's character span in ``text`` and its word id (None: a special token), from the tokenizer
    offsets: list[tuple[int, int]] | None = field(default=None, repr=False)
    word_ids: list[int | None] | None = field(default=None, repr=False)
    text: str | None = field(default=None, repr=False)
    #: the decomposition of a class's or next token's logit, when asked for (docs/logit.md)
    logit: LogitExplanation | None = field(default=None, repr=False)
    #: the routes to the prediction through heads and feed-forward blocks, when asked for (docs/routes.md)
    routes: RouteExplanation | None = field(default=None, repr=False)

    layout = "single-graph"

    def routes_table(self) -> TableView:
        """The routes' table (``explain(..., routes=...)``)."""
        if self.routes is None:
            raise ValueError("this explanation has no routes: explain with routes=RouteQuery()")
        return self.routes.table(list(self.tokens))

    @property
    def num_layers(self) -> int:
        return len(self.reconstruction_error)

    @property
    def full(self) -> bool:
        """Whether every layer's matrices are here (not a target-only explanation)."""
        return self.rollout is not None

    def attribution(self, position: int | str | None = None) -> np.ndarray:
        """How much each input token contributes to the token at ``position`` after all layers; with
        "mean", to the average of every position (the mean of the final rollout's rows: what a
        mean-pooled sentence embedding is made of)."""
        position = self.default_target if position is None else position
        if position == MEAN:
            if self.rollout is not None:
                return self.rollout[-1].mean(0)
            if MEAN not in (self.attributions or {}):
                raise IndexError("the mean target was not computed: explain with targets=['mean'] (or full=True)")
            return self.attributions[MEAN].copy()
        if not isinstance(position, (int, np.integer)) or isinstance(position, bool):
            raise IndexError(f"a target is a token position or 'mean', got {position!r}")
        if not -len(self.tokens) <= position < len(self.tokens):
            raise IndexError(f"target position {position} is outside the {len(self.tokens)} tokens")
        if self.rollout is not None:
            return self.rollout[-1, position].copy()
        found = (self.attributions or {}).get(position % len(self.tokens))
        if found is None:
            raise IndexError(f"target position {position} was not computed: explain with targets=[{position}] "
                             "(or full=True)")
        return found.copy()

    def words(self, target: int | None = None) -> WordExplanation:
        """The explanation over words instead of subword pieces (``alti_onnx.results.words``): contributions
        and rollout averaged over a word's receiving pieces and summed over its contributing pieces,
        the attribution to ``target`` (a token position, default the default target) summed per word."""
        if self.word_ids is None or self.offsets is None:
            raise ValueError("this explanation has no word ids (made from token ids, not text): words() needs the text")
        target = self.default_target if target is None else target
        words = group_words(self.tokens, self.word_ids, self.offsets, self.text)
        position = target if target == MEAN else target % len(self.tokens)
        target_word = -1 if target == MEAN else next(k for k, word in enumerate(words) if position in word.positions)
        full = self.full
        return WordExplanation(
            words=words, target=position, target_word=target_word,
            attribution=words_vector(self.attribution(target), words),
            contributions=words_matrix(self.contributions, words) if full else None,
            rollout=words_matrix(self.rollout, words) if full else None,
        )

    def to_record(self, target: Target | None = None, full: bool = False, words: bool = False) -> dict[str, object]:
        """The one record (docs/records.md): tokens, the attribution to ``target`` and the self-check;
        the prediction (a classifier's class, a decoder's next token); with ``full`` every layer's
        matrices (when computed), with ``words`` the word-level view."""
        target = self.default_target if target is None else target
        record: dict[str, object] = {
            "record_version": RECORD_VERSION,
            "layout": self.layout,
            "tokens": list(self.tokens),
            "input_ids": [int(i) for i in self.input_ids],
            "target": target_json(target),
            "attribution": self.attribution(target).tolist(),
            "reconstruction_error": [float(e) for e in self.reconstruction_error],
        }
        if self.prediction is not None:
            p = self.prediction
            record["prediction"] = {"index": int(p.index), "label": p.label, "probability": float(p.probability)}
        if self.next_token is not None:
            p = self.next_token
            record["next_token"] = {"id": int(p.index), "token": p.label, "probability": float(p.probability)}
        if self.logit is not None:
            record["logit"] = self.logit.to_dict()
        if self.routes is not None:
            record["routes"] = self.routes.to_dict()
        if full and self.full:
            record["contributions"] = self.contributions.tolist()
            record["rollout"] = self.rollout.tolist()
        if words:
            record.update(self.words(target).to_dict())
        return record

    def table(self, target: Target | None = None, words: bool = False) -> TableView:
        """Each token (or word) with its attribution to ``target``, as numbers and bars."""
        target = self.default_target if target is None else target
        if words:
            view = self.words(target)
            units, values, unit = view.texts, view.attribution, "word"
            shown = MEAN if view.target == MEAN else view.target_word
        else:
            units, values, unit, shown = list(self.tokens), self.attribution(target), "token", target
        if shown == MEAN:
            title = ("ALTI attribution (words) to the mean of all tokens" if words
                     else f"ALTI attribution to the mean of all {len(units)} tokens")
            highlight = None
        else:
            highlight = int(shown) % len(units)
            title = f"ALTI attribution to {'the word' if words else 'position'} {shown} ({units[shown]!r})"
        peak = float(max(values.max(), 1e-12))
        errors = self.reconstruction_error
        headline = []
        if self.prediction is not None:
            headline.append(f"prediction: {self.prediction.label} (probability {self.prediction.probability:.4f})")
        if self.next_token is not None:
            p = self.next_token
            headline.append(f"next token: {p.label!r} (id {p.index}, probability {p.probability:.4f})")
        return TableView(
            title=title, columns=["pos", unit, "attribution", ""],
            rows=[[str(k), u, f"{v:.4f}", max(0.0, float(v) / peak)] for k, (u, v) in enumerate(zip(units, values))],
            footer=f"self-check: max reconstruction error {max(errors):.2e} over {len(errors)} layers",
            highlight=highlight, headline=tuple(headline),
        )

    def report_html(self, model: str | None = None, target: Target | None = None) -> str:
        from alti_onnx.report.html import render_html

        return render_html(self, text=self.text, model=model, target=self.png_target(target))

    def write_png(self, path: str | Path, target: Target | None = None) -> Path:
        from alti_onnx.report import write_png

        return write_png(self, path, target=self.png_target(target))

    def png_target(self, target: Target | None = None) -> int:
        """The one position the report and the figure draw (they cannot draw the mean)."""
        target = self.default_target if target is None else target
        if target == MEAN:
            raise ValueError("--html and --png draw one position's attribution: give --target N with them")
        return int(target)

    def _repr_html_(self) -> str:
        """The compact view notebooks show: tokens (or words) colored by attribution, the
        prediction, the self-check and a small rollout heatmap (static HTML, no script, no network)."""
        from alti_onnx.report.inline import inline_html

        return inline_html(self)

    def _arrays(self) -> tuple[dict[str, np.ndarray], dict[str, object]]:
        arrays = {name: value for name in _ARRAYS if (value := getattr(self, name)) is not None}
        arrays.update({f"attribution_{key}": row for key, row in (self.attributions or {}).items()})
        arrays.update({f"output_{name}": value for name, value in self.outputs.items()})
        meta = {
            "tokens": list(self.tokens), "input_ids": [int(i) for i in self.input_ids],
            "default_target": target_json(self.default_target),
            "attribution_keys": None if self.attributions is None else [target_json(k) for k in self.attributions],
            "outputs": list(self.outputs),
            "prediction": _prediction_meta(self.prediction), "next_token": _prediction_meta(self.next_token),
            "offsets": None if self.offsets is None else [list(o) for o in self.offsets],
            "word_ids": self.word_ids, "text": self.text,
            "logit": None if self.logit is None else self.logit.to_dict(),
            "routes": None if self.routes is None else self.routes.to_dict(),
        }
        return arrays, meta

    @classmethod
    def _from_saved(cls, arrays: dict[str, np.ndarray], meta: dict[str, object]) -> Explanation:
        try:
            found = cls._read_saved(arrays, meta)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"the saved explanation lacks or mistypes {exc}") from None
        found._check_saved()
        return found

    def _check_saved(self) -> None:
        """A loaded explanation must be one ``explain`` could have made: matrices of [L, S, S] for its S
        tokens, attributions of S, one self-check per layer, no NaN or Infinity."""
        size = len(self.tokens)
        if len(self.input_ids) != size:
            raise ValueError(f"the saved explanation has {size} tokens but {len(self.input_ids)} ids")
        for name in ("offsets", "word_ids"):
            value = getattr(self, name)
            if value is not None and len(value) != size:
                raise ValueError(f"the saved explanation has {size} tokens but {len(value)} {name}")
        targets = [self.default_target, *(self.attributions or {})]
        if any(t != MEAN and not (isinstance(t, int) and 0 <= t < size) for t in targets):
            raise ValueError(f"a saved target is not a position of its {size} tokens or 'mean'")
        if np.ndim(self.reconstruction_error) != 1:
            raise ValueError("the saved self-check is not one number per layer")
        layers = len(self.reconstruction_error)
        for name in ("contributions", "rollout", "attention", "norm_based"):
            value = getattr(self, name)
            if value is not None and value.shape != (layers, size, size):
                raise ValueError(f"the saved {name} is {value.shape}, not ({layers}, {size}, {size}) for its "
                                 f"{layers} layers and {size} tokens")
        rows = list((self.attributions or {}).values())
        if any(row.shape != (size,) for row in rows):
            raise ValueError(f"a saved attribution does not have one number for each of the {size} tokens")
        arrays = [a for a in (self.contributions, self.rollout, self.attention, self.norm_based) if a is not None]
        if not all(np.all(np.isfinite(a)) for a in [*arrays, *rows, np.asarray(self.reconstruction_error)]):
            raise ValueError("the saved explanation holds NaN or Infinity")

    @classmethod
    def _read_saved(cls, arrays: dict[str, np.ndarray], meta: dict[str, object]) -> Explanation:
        keys = meta["attribution_keys"]
        return cls(
            tokens=meta["tokens"], input_ids=meta["input_ids"], contributions=arrays.get("contributions"),
            rollout=arrays.get("rollout"), reconstruction_error=arrays["reconstruction_error"],
            default_target=meta["default_target"], outputs={name: arrays[f"output_{name}"] for name in meta["outputs"]},
            attention=arrays.get("attention"), norm_based=arrays.get("norm_based"),
            prediction=_prediction_from(meta["prediction"]), next_token=_prediction_from(meta["next_token"]),
            attributions=None if keys is None else {k: arrays[f"attribution_{k}"] for k in keys},
            offsets=None if meta["offsets"] is None else [tuple(o) for o in meta["offsets"]],
            word_ids=meta["word_ids"], text=meta["text"],
            logit=None if meta.get("logit") is None else LogitExplanation.from_dict(meta["logit"]),
            routes=None if meta.get("routes") is None else RouteExplanation.from_dict(meta["routes"]),
        )


#: The array fields ``save`` keeps.
_ARRAYS = ("contributions", "rollout", "reconstruction_error", "attention", "norm_based")


def _prediction_meta(prediction: Prediction | None) -> dict[str, object] | None:
    if prediction is None:
        return None
    return {"index": int(prediction.index), "label": prediction.label, "probability": float(prediction.probability),
            "probabilities": [float(p) for p in np.asarray(prediction.probabilities).ravel()]}


def _prediction_from(meta: dict[str, object] | None) -> Prediction | None:
    if meta is None:
        return None
    return Prediction(int(meta["index"]), str(meta["label"]), float(meta["probability"]),
                      np.asarray(meta["probabilities"], dtype=np.float64))
