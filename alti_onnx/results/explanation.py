"""The result of explaining one text."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alti_onnx.runtime.pooling import MEAN
from .prediction import Prediction
from .words import WordExplanation, group_words, words_matrix, words_vector


@dataclass(frozen=True)
class Explanation:
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

    def to_dict(self, target: int | None = None) -> dict[str, object]:
        """The JSON payload: every matrix for a full explanation, the attribution alone otherwise."""
        target = self.default_target if target is None else target
        payload: dict[str, object] = {"tokens": list(self.tokens), "input_ids": [int(i) for i in self.input_ids]}
        if self.full:
            payload["contributions"] = self.contributions.tolist()
            payload["rollout"] = self.rollout.tolist()
        payload.update({
            "target": _target_json(target),
            "attribution": self.attribution(target).tolist(),
            "reconstruction_error": [float(e) for e in self.reconstruction_error],
        })
        if self.next_token is not None:  # decoders only, so encoders keep exactly the keys above
            token = self.next_token
            payload["next_token"] = {"id": token.index, "token": token.label, "probability": token.probability}
        return payload

    def _repr_html_(self) -> str:
        """The compact view notebooks show: tokens (or words) colored by attribution, the
        prediction, the self-check and a small rollout heatmap (static HTML, no script, no network)."""
        from alti_onnx.report.inline import inline_html

        return inline_html(self)

    def save(self, path: str | Path) -> Path:
        """Keep this explanation in one ``.npz`` file (the arrays, and its other fields as JSON),
        to be read back with ``Explanation.load`` without recomputing. Returns the path written."""
        path = Path(path)
        arrays = {name: value for name in _ARRAYS if (value := getattr(self, name)) is not None}
        arrays.update({f"attribution_{key}": row for key, row in (self.attributions or {}).items()})
        arrays.update({f"output_{name}": value for name, value in self.outputs.items()})
        meta = {
            "format": SAVE_FORMAT, "tokens": list(self.tokens), "input_ids": [int(i) for i in self.input_ids],
            "default_target": _target_json(self.default_target),
            "attribution_keys": None if self.attributions is None else [_target_json(k) for k in self.attributions],
            "outputs": list(self.outputs),
            "prediction": _prediction_meta(self.prediction), "next_token": _prediction_meta(self.next_token),
            "offsets": None if self.offsets is None else [list(o) for o in self.offsets],
            "word_ids": self.word_ids, "text": self.text,
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        with open(path, "wb") as handle:  # np.savez would add '.npz' to a name without it
            np.savez_compressed(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Explanation:
        """An explanation saved with ``save``."""
        with np.load(Path(path), allow_pickle=False) as saved:
            if "meta" not in saved.files:
                raise ValueError(f"{path} is not a saved explanation (no metadata)")
            meta = json.loads(saved["meta"].tobytes().decode("utf-8"))
            if meta.get("format") != SAVE_FORMAT:
                raise ValueError(f"{path} was saved in format {meta.get('format')!r}; this version reads {SAVE_FORMAT}")
            arrays = {name: saved[name] for name in _ARRAYS if name in saved.files}
            keys = meta["attribution_keys"]
            attributions = None if keys is None else {k: saved[f"attribution_{k}"] for k in keys}
            outputs = {name: saved[f"output_{name}"] for name in meta["outputs"]}
        return cls(
            tokens=meta["tokens"], input_ids=meta["input_ids"], contributions=arrays.get("contributions"),
            rollout=arrays.get("rollout"), reconstruction_error=arrays["reconstruction_error"],
            default_target=meta["default_target"], outputs=outputs, attention=arrays.get("attention"),
            norm_based=arrays.get("norm_based"), prediction=_prediction_from(meta["prediction"]),
            next_token=_prediction_from(meta["next_token"]), attributions=attributions,
            offsets=None if meta["offsets"] is None else [tuple(o) for o in meta["offsets"]],
            word_ids=meta["word_ids"], text=meta["text"],
        )

    def to_json(self, target: int | None = None) -> str:
        return json.dumps(self.to_dict(target), allow_nan=False)  # strict JSON: explain never returns NaN


#: The array fields ``save`` keeps, and the layout version it writes.
_ARRAYS = ("contributions", "rollout", "reconstruction_error", "attention", "norm_based")
SAVE_FORMAT = 1


def _target_json(target: int | str) -> int | str:
    """A target as JSON writes it: "mean", or a plain int (not a NumPy integer)."""
    return target if target == MEAN else int(target)


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
