"""``evaluate(explainer, texts)``: every method's faithfulness on the same sentences and model.

The order of work: tokenize and keep the sentences with at least one non-special token; predict
them with a plain onnxruntime session (y and p(y|x)); explain them with ALTI in padded batches
(which also gives attention and norm-based matrices); compute each method's attributions; score
each with comprehensiveness and sufficiency. The perturbed inputs of all methods share one
memoizing classifier, so a sequence two methods both produce is run once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alti_onnx.errors import InputError
from alti_onnx.explainer import Explainer
from alti_onnx.results.explanation import Explanation
from alti_onnx.results.logit import LogitQuery

from . import attributions as attr
from .gradients import GRADIENT_METHODS, GradientModel, GradientsUnavailable
from .metrics import PROTOCOLS, FaithfulnessScores, faithfulness, perturbed_inputs
from .perturbation import BINS
from .predict import OnnxClassifier

__all__ = ["METHODS", "MethodResult", "EvaluationResult", "evaluate"]

#: Every method, in report order.
METHODS: tuple[str, ...] = (
    "ALTI",
    "logit decomposition",
    "attention (last layer)",
    "attention rollout",
    "norm-based",
    "leave-one-out",
    *GRADIENT_METHODS,
    "random",
)
_FROM_EXPLANATION: dict[str, Callable[[Explanation], np.ndarray]] = {
    "ALTI": attr.alti,
    "logit decomposition": attr.logit_decomposition,
    "attention (last layer)": attr.last_layer_attention,
    "attention rollout": attr.attention_rollout,
    "norm-based": attr.norm_based,
}


@dataclass
class MethodResult:
    """One method's scores, or why it was not computed."""

    name: str
    scores: FaithfulnessScores | None = None
    reason: str | None = None
    seconds: float = 0.0

    @property
    def computed(self) -> bool:
        return self.scores is not None


@dataclass
class EvaluationResult:
    """Mean faithfulness per method over the evaluated sentences, plus what they were."""

    bins: tuple[float, ...]
    methods: dict[str, MethodResult]
    texts: list[str]
    input_ids: list[list[int]]
    targets: np.ndarray
    full_probability: np.ndarray
    skipped: list[tuple[int, str]] = field(default_factory=list)
    labels: list[int] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        if self.labels is None:
            return None
        return float(np.mean(np.asarray(self.labels) == self.targets))

    def to_dict(self, per_sentence: bool = True) -> dict:
        """Plain JSON-able numbers: means per bin and AOPC per method; per sentence too by default."""
        methods = {}
        for name, m in self.methods.items():
            entry: dict = {"computed": m.computed, "seconds": round(m.seconds, 2)}
            if m.computed:
                entry.update(m.scores.mean())
                if per_sentence:
                    entry["per_sentence"] = {
                        "comprehensiveness": m.scores.comprehensiveness.round(6).tolist(),
                        "sufficiency": m.scores.sufficiency.round(6).tolist(),
                    }
            else:
                entry["reason"] = m.reason
            methods[name] = entry
        out = {
            "bins": list(self.bins),
            "n_sentences": len(self.texts),
            "accuracy": self.accuracy,
            "skipped": [{"index": i, "reason": r} for i, r in self.skipped],
            **self.meta,
            "methods": methods,
        }
        if per_sentence:
            out["sentences"] = [
                {"text": t, "predicted": int(y), "probability": round(float(p), 6), **({"label": self.labels[k]} if self.labels else {})}
                for k, (t, y, p) in enumerate(zip(self.texts, self.targets, self.full_probability))
            ]
        return out


class _Progress:
    """A rich progress display on stderr, or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    @contextmanager
    def running(self) -> Iterator["_Progress"]:
        if not self.enabled:
            yield self
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        with Progress(
            TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, transient=False,
            disable=not console.is_terminal,  # bars on a terminal only: in a log they are noise, and errors one line
        ) as bar:
            self.bar = bar
            yield self
        self.bar = None

    def task(self, description: str, total: int) -> Callable[[int], None]:
        if self.bar is None:
            return lambda n: None
        task_id = self.bar.add_task(description, total=max(total, 1))
        if total == 0:
            self.bar.update(task_id, completed=1)
        return lambda n: self.bar.advance(task_id, n)


def evaluate(
    explainer: Explainer,
    texts: Sequence[str],
    *,
    labels: Sequence[int] | None = None,
    bins: Sequence[float] = BINS,
    methods: Sequence[str] = METHODS,
    seed: int = 0,
    random_draws: int = 5,
    hf_model: str | Path | None = None,
    batch_size: int = 64,
    explain_batch: int = 32,
    progress: bool = False,
    protocol: str = "deyoung",
) -> EvaluationResult:
    """Comprehensiveness and sufficiency (per bin and AOPC) of each of ``methods`` on ``texts``.

    ``hf_model``: the Hugging Face checkpoint of the same weights, for the gradient methods (they
    are reported as not computed without it or without PyTorch). ``seed`` and ``random_draws``
    define the random baseline. ``batch_size`` bounds the onnxruntime batches of perturbed
    inputs, ``explain_batch`` the ALTI batches. ``protocol``: "deyoung" (AOPC, the mean over the
    bins) or "paper" (the ALTI authors' aupc.py: ``metrics``).
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"--protocol {protocol!r}: one of {', '.join(PROTOCOLS)}")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    started = time.perf_counter()
    bins = tuple(float(b) for b in bins)
    ids, special, kept, skipped = _tokenize(explainer, list(texts))
    if not ids:
        raise InputError("no sentence left to evaluate (all empty or too long)")
    classifier = OnnxClassifier(explainer.files.onnx, explainer.text_encoder.pad_id, batch_size=batch_size,
                                input_map=explainer.input_map)
    result_methods: dict[str, MethodResult] = {}
    ui = _Progress(progress)
    with ui.running():
        classifier.on_batch = ui.task("predicting the sentences", len(ids))
        probs = classifier(ids)
        targets = probs.argmax(-1)
        if labels is not None and max(int(labels[i]) for i in kept) >= probs.shape[-1]:
            raise InputError(f"a label of the data is {max(int(labels[i]) for i in kept)}, but the model has "
                             f"{probs.shape[-1]} classes (0 to {probs.shape[-1] - 1}): labels of another task?")
        full = probs[np.arange(len(ids)), targets]
        explanations = _explain(explainer, [texts[i] for i in kept], ids, explain_batch, ui.task("explaining (ALTI)", len(ids)),
                                targets if "logit decomposition" in methods else None)

        def score(name: str, attributions_per_draw: list[list[np.ndarray]], t0: float) -> None:
            sequences = [
                s
                for draw in attributions_per_draw
                for i, a in enumerate(draw)
                for part in perturbed_inputs(ids[i], special[i], a, bins)
                for s in part
            ]
            classifier.on_batch = ui.task(f"scoring {name}", classifier.pending(sequences))
            draws = [faithfulness(classifier, ids, special, draw, targets, full, bins, protocol)
                     for draw in attributions_per_draw]
            scores = draws[0] if len(draws) == 1 else FaithfulnessScores.average(draws)
            result_methods[name] = MethodResult(name, scores, seconds=time.perf_counter() - t0)

        gradient_model: GradientModel | str | None = None
        for name in methods:
            t0 = time.perf_counter()
            if name in _FROM_EXPLANATION:
                score(name, [[_FROM_EXPLANATION[name](e) for e in explanations]], t0)
            elif name == "leave-one-out":
                classifier.on_batch = ui.task("leave-one-out attributions", classifier.pending(
                    [[t for k, t in enumerate(s) if k != j] for s, m in zip(ids, special) for j in np.flatnonzero(~np.asarray(m))]
                ))
                score(name, [attr.leave_one_out(classifier, ids, special, targets, full)], t0)
            elif name == "random":
                score(name, attr.random_attributions([len(s) for s in ids], seed, random_draws), t0)
            else:
                if gradient_model is None:
                    gradient_model = _gradient_model(hf_model, ids, probs)
                if isinstance(gradient_model, str):
                    result_methods[name] = MethodResult(name, reason=gradient_model)
                    continue
                gradient_model.on_batch = ui.task(f"{name} (torch)", len(ids))
                method = getattr(gradient_model, GRADIENT_METHODS[name])
                score(name, [method(ids, special, [int(t) for t in targets])], t0)
    meta = {
        "model": str(explainer.files.onnx),
        "hf_model": str(hf_model) if hf_model is not None else None,
        "seed": seed,
        "random_draws": random_draws,
        "protocol": protocol,
        "forward_passes": classifier.runs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if isinstance(gradient_model, GradientModel):
        meta["ig_steps"] = gradient_model.ig_steps
    return EvaluationResult(
        bins=bins,
        methods={name: result_methods[name] for name in methods},
        texts=[texts[i] for i in kept],
        input_ids=ids,
        targets=targets,
        full_probability=full,
        skipped=skipped,
        labels=[int(labels[i]) for i in kept] if labels is not None else None,
        meta=meta,
    )


def _tokenize(explainer: Explainer, texts: list[str]):
    """Ids and special-token masks of the sentences that can be evaluated; the others with a reason."""
    limit = explainer.text_encoder.max_length
    ids, special, kept, skipped = [], [], [], []
    encodings = explainer.tokenizer.encode_batch([t if t.strip() else " " for t in texts])
    for index, (text, enc) in enumerate(zip(texts, encodings)):
        mask = np.asarray(enc.special_tokens_mask, dtype=bool)
        if not text.strip() or mask.all():
            skipped.append((index, "no token besides the special tokens"))
        elif limit is not None and len(enc.ids) > limit:
            skipped.append((index, f"{len(enc.ids)} tokens, longer than the model's {limit}"))
        else:
            ids.append([int(i) for i in enc.ids])
            special.append(mask)
            kept.append(index)
    return ids, special, kept, skipped


def _explain(explainer: Explainer, texts: list[str], ids: list[list[int]], batch: int, advance,
             logit_targets: np.ndarray | None = None) -> list[Explanation]:
    """ALTI explanations in padded batches of similar length, returned in the input order; with
    ``logit_targets``, each also decomposes the logit of that class (the one predicted)."""
    order = np.argsort([len(s) for s in ids], kind="stable")
    out: list = [None] * len(texts)
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        extra = {} if logit_targets is None else {"logit": [LogitQuery(target=int(logit_targets[i])) for i in chunk]}
        for i, e in zip(chunk, explainer.explain([texts[i] for i in chunk], baselines=True, **extra)):
            if e.input_ids != ids[i]:
                raise RuntimeError(f"explainer tokenized sentence {i} differently from the tokenizer")
            out[i] = e
        advance(len(chunk))
    return out


def _gradient_model(hf_model, ids: list[list[int]], onnx_probs: np.ndarray) -> GradientModel | str:
    """A loaded GradientModel whose predictions match the ONNX model's, or the reason why not."""
    if hf_model is None:
        return "not computed: no Hugging Face checkpoint of the weights given (--hf-model)"
    try:
        model = GradientModel(hf_model)
    except GradientsUnavailable as exc:
        return f"not computed: {exc}"
    sample = ids[:16]
    logits = model.logits(sample)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    gap = float(np.abs(probs - onnx_probs[: len(sample)]).max())
    if gap > 1e-3:
        return f"not computed: {hf_model} is not the ONNX model's weights (probabilities differ by {gap:.3g})"
    return model
