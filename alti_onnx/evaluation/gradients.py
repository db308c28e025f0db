"""Gradient attributions on the same weights in PyTorch (optional: the ONNX path never imports torch).

ONNX Runtime has no autograd, so these baselines load the Hugging Face checkpoint the ONNX model
was exported from (``hf_dir``) in float32, eager attention, eval mode. Definitions, for a sentence
with word embeddings e_j (the output of the word-embedding lookup, before position / token-type
embeddings and the embedding LayerNorm are added, i.e. what ``inputs_embeds`` replaces) and the
score f = the logit of the class y predicted on the full input:

* gradient norm:        a_j = || df/de_j ||_2
* gradient x input:     a_j = (df/de_j) . e_j          (dot product over the embedding dimension; signed)
* integrated gradients: a_j = (e_j - e'_j) . mean_{m=1..M} df/de (e' + alpha_m (e - e'))_j,
  alpha_m = (m - 1/2) / M (midpoint Riemann sum, M = ``ig_steps``, default 20). The baseline e'
  keeps the special tokens' embeddings and sets every other token's word embedding to the zero
  vector, so sum_j a_j approximates f(x) - f(x') (completeness) and specials get a_j = 0.

Sentences are padded into batches (gradients of a padded row equal the unpadded ones: masked keys
get zero attention), the interpolation steps of several sentences of similar length share a batch.
Everything is importable without torch; torch and transformers load when a ``GradientModel``
is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["GRADIENT_METHODS", "GradientsUnavailable", "GradientModel"]

#: Method name -> the GradientModel method that computes it.
GRADIENT_METHODS = {
    "gradient norm": "gradient_norm",
    "gradient x input": "gradient_x_input",
    "integrated gradients": "integrated_gradients",
}


class GradientsUnavailable(Exception):
    """Why the gradient methods cannot run here (no torch, no checkpoint, different weights)."""


class GradientModel:
    """A PyTorch sequence classifier that returns per-token gradient attributions."""

    def __init__(self, hf_dir: str | Path, batch_size: int = 32, ig_steps: int = 20, ig_batch: int = 320):
        try:
            import torch
            from transformers import AutoModelForSequenceClassification
        except ImportError as exc:
            raise GradientsUnavailable(f"PyTorch/transformers not installed ({exc}); install the 'bench' extra") from None
        hf_dir = Path(hf_dir)
        if not (hf_dir / "config.json").is_file():
            raise GradientsUnavailable(f"no Hugging Face model (config.json) in {hf_dir}")
        self.torch = torch
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(
                str(hf_dir), attn_implementation="eager"
            ).float().eval()
        except Exception as exc:  # noqa: BLE001 - transformers raises many types
            raise GradientsUnavailable(f"could not load {hf_dir}: {exc}") from None
        self.embeddings = self.model.get_input_embeddings()
        self.pad_id = self.model.config.pad_token_id or 0
        self.batch_size = batch_size
        self.ig_steps = ig_steps
        self.ig_batch = ig_batch
        self.on_batch: Callable[[int], None] | None = None  # progress hook: sentences done
        self._last_gradients: tuple | None = None

    # ------------------------------------------------------------------ plumbing
    def _pad(self, sequences: Sequence[Sequence[int]]):
        torch = self.torch
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, s in enumerate(sequences):
            ids[row, : len(s)] = torch.tensor(list(s), dtype=torch.long)
            mask[row, : len(s)] = 1
        return ids, mask

    def _forward(self, embeds, mask):
        return self.model(inputs_embeds=embeds, attention_mask=mask, token_type_ids=self.torch.zeros_like(mask)).logits

    def _score_gradient(self, embeds, mask, targets):
        """d logit_y / d embeds for every row of a batch (rows are independent in eval mode)."""
        embeds = embeds.detach().requires_grad_(True)
        logits = self._forward(embeds, mask)
        score = logits.gather(1, targets[:, None]).sum()
        (grad,) = self.torch.autograd.grad(score, embeds)
        return grad

    @staticmethod
    def _chunks(lengths: Sequence[int], size: int) -> list[np.ndarray]:
        order = np.argsort(np.asarray(lengths), kind="stable")
        return [order[i : i + size] for i in range(0, len(order), size)]

    # ------------------------------------------------------------------ API
    def logits(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """[N, C] logits (to check that these are the ONNX model's weights)."""
        out = np.zeros((len(sequences), self.model.config.num_labels))
        with self.torch.inference_mode():
            for chunk in self._chunks([len(s) for s in sequences], self.batch_size):
                ids, mask = self._pad([sequences[i] for i in chunk])
                out[chunk] = self._forward(self.embeddings(ids), mask).double().numpy()
        return out

    def gradients(self, sequences: Sequence[Sequence[int]], targets: Sequence[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per sentence: (df/de [S, D], e [S, D]) with f the logit of ``targets[n]``.

        The last call's result is kept: gradient norm and gradient x input share one backward pass.
        """
        torch = self.torch
        key = (tuple(tuple(int(t) for t in s) for s in sequences), tuple(int(t) for t in targets))
        if self._last_gradients is not None and self._last_gradients[0] == key:
            if self.on_batch is not None:
                self.on_batch(len(sequences))
            return self._last_gradients[1]
        result: list = [None] * len(sequences)
        for chunk in self._chunks([len(s) for s in sequences], self.batch_size):
            ids, mask = self._pad([sequences[i] for i in chunk])
            with torch.no_grad():
                embeds = self.embeddings(ids)
            grad = self._score_gradient(embeds, mask, torch.tensor([targets[i] for i in chunk]))
            for row, n in enumerate(chunk):
                size = len(sequences[n])
                result[n] = (grad[row, :size].double().numpy(), embeds[row, :size].double().numpy())
            if self.on_batch is not None:
                self.on_batch(len(chunk))
        self._last_gradients = (key, result)
        return result

    def gradient_norm(self, sequences, special, targets) -> list[np.ndarray]:
        """a_j = ||df/de_j||_2."""
        return [np.linalg.norm(g, axis=-1) for g, _ in self.gradients(sequences, targets)]

    def gradient_x_input(self, sequences, special, targets) -> list[np.ndarray]:
        """a_j = (df/de_j) . e_j."""
        return [(g * e).sum(-1) for g, e in self.gradients(sequences, targets)]

    def integrated_gradients(self, sequences, special, targets) -> list[np.ndarray]:
        """a_j = (e_j - e'_j) . mean_m df/de(e' + alpha_m (e - e'))_j, baseline: zero word embeddings for non-specials."""
        torch = self.torch
        steps = self.ig_steps
        alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoints
        per_batch = max(1, self.ig_batch // steps)
        result: list = [None] * len(sequences)
        for chunk in self._chunks([len(s) for s in sequences], per_batch):
            ids, mask = self._pad([sequences[i] for i in chunk])
            with torch.no_grad():
                embeds = self.embeddings(ids)  # [c, S, D]
            keep = torch.zeros(ids.shape, dtype=torch.float32)  # 1 where the baseline keeps the token
            for row, n in enumerate(chunk):
                keep[row, : len(special[n])] = torch.tensor(np.asarray(special[n], dtype=np.float32))
            baseline = embeds * keep[..., None]
            delta = embeds - baseline
            path = baseline[:, None] + alphas[None, :, None, None] * delta[:, None]  # [c, M, S, D]
            c, S, D = embeds.shape
            grad = self._score_gradient(
                path.reshape(c * steps, S, D),
                mask.repeat_interleave(steps, dim=0),
                torch.tensor([targets[i] for i in chunk]).repeat_interleave(steps),
            ).reshape(c, steps, S, D)
            attribution = (delta.double() * grad.double().mean(1)).sum(-1)
            for row, n in enumerate(chunk):
                result[n] = attribution[row, : len(sequences[n])].numpy()
            if self.on_batch is not None:
                self.on_batch(len(chunk))
        return result
