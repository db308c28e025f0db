"""Class probabilities of many (perturbed) token sequences from a plain onnxruntime session.

The faithfulness metrics need tens of thousands of forward passes of the original model, not
the instrumented one (no block tensors to copy out). Sequences are sorted by length and run in
batches of at most ``batch_size``, padded on the right only to the longest sequence of their
batch, so a batch of similar lengths wastes little compute. Identical sequences (the same
tokens deleted by two methods, or by two bins) are computed once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from alti_onnx.errors import InputError, RuntimeFailure
from alti_onnx.results.prediction import softmax
from alti_onnx.runtime.model_inputs import ModelInputs, declared_inputs
from alti_onnx.runtime.sessions import plain_session
from alti_onnx.runtime.text_inputs import Batch

__all__ = ["OnnxClassifier", "OnnxNextToken"]


class OnnxClassifier:
    """``predict(list of id sequences) -> [N, C] softmax probabilities`` for an exported classifier.

    ``model`` is the path of the .onnx file (external data resolves beside it); the graph must have
    a ``logits`` output [B, C]; ``input_map`` names input roles as for the Explainer. Results are
    memoized by sequence.
    """

    logits_rank = 2
    what = "evaluation needs a sequence classifier, whose logits are [batch, classes]"

    def __init__(
        self,
        model: str | Path,
        pad_id: int,
        providers: list[str] | None = None,
        batch_size: int = 64,
        input_map: dict[str, str] | None = None,
    ):
        self.session = plain_session(Path(model), providers)
        outputs = {o.name: o for o in self.session.get_outputs()}
        if "logits" not in outputs:
            raise InputError(f"{model} has no 'logits' output (outputs: {', '.join(outputs)}); evaluation needs a classifier")
        rank = len(outputs["logits"].shape or [])
        if rank != self.logits_rank:
            raise InputError(f"{self.what}; the logits of {model} have {rank} axes")
        self.inputs = ModelInputs(declared_inputs(onnx.load(str(model), load_external_data=False)), input_map)
        self.pad_id = int(pad_id)
        self.batch_size = int(batch_size)
        self.cache: dict[tuple[int, ...], np.ndarray] = {}
        self.runs = 0  # forward passes actually computed (cache misses), for reports and tests
        self.on_batch: Callable[[int], None] | None = None  # progress hook: called with the batch size

    def __call__(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        keys = [tuple(int(t) for t in s) for s in sequences]
        missing = sorted({k for k in keys if k not in self.cache}, key=len)
        for batch in self._batches(missing):
            for key, probs in zip(batch, self._run(batch)):
                self.cache[key] = probs
            self.runs += len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch))
        if not keys:
            return np.zeros((0, 0))
        return np.stack([self.cache[k] for k in keys])

    def _batches(self, ordered: list[tuple[int, ...]]) -> list[list[tuple[int, ...]]]:
        """Consecutive runs of at most ``batch_size`` sequences; of one length each when the model
        takes no attention mask (it would attend to the padding)."""
        batches: list[list[tuple[int, ...]]] = []
        for key in ordered:
            last = batches[-1] if batches else None
            if last is None or len(last) == self.batch_size or (not self.inputs.has_mask and len(last[0]) != len(key)):
                batches.append([key])
            else:
                last.append(key)
        return batches

    def pending(self, sequences: Sequence[Sequence[int]]) -> int:
        """How many distinct sequences among ``sequences`` are not computed yet (for progress totals)."""
        return len({tuple(int(t) for t in s) for s in sequences} - self.cache.keys())

    def _run(self, batch: list[tuple[int, ...]]) -> np.ndarray:
        padded = Batch.padded(batch, self.pad_id)
        width = padded.input_ids.shape[1]
        try:
            (logits,) = self.session.run(["logits"], self.inputs.feeds(padded))
        except Exception as exc:  # noqa: BLE001
            raise RuntimeFailure(f"onnxruntime failed on a batch of {len(batch)} x {width} tokens: {exc}") from None
        return self._read(np.asarray(logits), padded)

    def _read(self, logits: np.ndarray, padded: Batch) -> np.ndarray:
        return softmax(np.asarray(logits, dtype=np.float64))


class OnnxNextToken(OnnxClassifier):
    """``predict(list of id sequences) -> [N, V]``: a causal language model's next-token logits after
    each sequence's last token (memoized, batched as ``OnnxClassifier``)."""

    logits_rank = 3
    what = "the evidence task needs a causal language model, whose logits are [batch, positions, vocabulary]"

    def _read(self, logits: np.ndarray, padded: Batch) -> np.ndarray:
        last = np.asarray(padded.lengths) - 1
        return np.asarray(logits[np.arange(len(last)), last], dtype=np.float64)
