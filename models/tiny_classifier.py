"""A tiny, seeded, random-init BERT sentence classifier: the evaluation tests' fixture.

    python -m models.tiny_classifier [--out tests/fixtures]

Same 2-layer, 32-wide BERT and offline tokenizer as the ``tiny-bert`` fixture of
:mod:`models.tiny` (random weights, biases and LayerNorm parameters), but with the
sequence-classification head (BERT's pooler + a linear layer reading ``[CLS]``), two classes,
``id2label = {0: "negative", 1: "positive"}``. The final linear layer is not random: it reads the
pooled output along its first principal direction over a seeded bank of random sentences
(centred, scaled so the logit difference has a standard deviation of ``LOGIT_STD``), so the
predictions split between the two classes and vary in confidence from sentence to sentence
(a random head gives the same confident class for every input, and the faithfulness metrics
would then test nothing).

It is exported with optimum (``task="text-classification"``, output ``logits``) into
``<out>/tiny-bert-classifier/`` together with ``expected.npz`` (the float64 reference ALTI of
``TEXTS``: ``input_ids_k``, ``contributions_k``, ``rollout_k``, as the other fixtures) and
``texts.json``.

``build_tiny_classifier_hf(out_dir)`` is importable (the gradient tests rebuild the Hugging Face
model with it); it is deterministic.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from models.families import family, randomize_biases_and_norms
from models.tiny import TEXTS, build_tokenizer, record_expected

__all__ = ["NAME", "ID2LABEL", "SEED", "TEXTS", "build_tiny_classifier_hf", "build_classifier_fixture", "main"]

NAME = "tiny-bert-classifier"
ID2LABEL = {0: "negative", 1: "positive"}
SEED = 11
#: Spread of the logit difference over random sentences.
LOGIT_STD = 3.0


def _random_sentences(n: int, seed: int) -> list[str]:
    from models.tiny import WORDS

    rng = np.random.default_rng(seed)
    words = [w for w in WORDS if w.isalpha()]
    return [" ".join(rng.choice(words, size=int(rng.integers(3, 16)))) for _ in range(n)]


def build_tiny_classifier_hf(out_dir: str | Path, seed: int = SEED) -> Path:
    """Build the seeded tiny BertForSequenceClassification and save it as a Hugging Face dir."""
    import torch
    from transformers import BertForSequenceClassification, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, special = build_tokenizer("bert")
    cfg = family("bert").config(tok.get_vocab_size())
    cfg.num_labels = 2
    cfg.id2label = dict(ID2LABEL)
    cfg.label2id = {v: k for k, v in ID2LABEL.items()}
    cfg.problem_type = "single_label_classification"

    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg).eval()
    randomize_biases_and_norms(model)
    with torch.no_grad():
        _fit_head(model, tok, seed)
    model.save_pretrained(out_dir, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=cfg.max_position_embeddings, **special)
    fast.save_pretrained(out_dir)
    return out_dir


def _fit_head(model, tok, seed: int) -> None:
    """Point the 2-class linear layer along the pooled outputs' first principal direction."""
    import torch

    pooled = []
    for text in _random_sentences(256, seed):
        ids = torch.tensor([tok.encode(text).ids])
        pooled.append(model.bert(input_ids=ids).pooler_output[0])
    p = torch.stack(pooled).double()
    mean = p.mean(0)
    direction = torch.linalg.svd(p - mean, full_matrices=False).Vh[0]
    scale = LOGIT_STD / float(((p - mean) @ direction).std())
    w = (scale / 2) * direction
    model.classifier.weight.copy_(torch.stack([-w, w]).float())
    b = float(mean @ w)
    model.classifier.bias.copy_(torch.tensor([b, -b]))


def build_classifier_fixture(out_root: str | Path = "tests/fixtures", texts=TEXTS) -> Path:
    """Build, export and write the expected ALTI of ``tiny-bert-classifier`` under ``out_root``."""
    from alti_onnx.export import export_model

    fixture = Path(out_root) / NAME
    if fixture.exists():
        shutil.rmtree(fixture)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = build_tiny_classifier_hf(Path(tmp) / "hf")
        export_model(hf_dir, fixture, task="text-classification")
        # The reference hooks the encoder; the base model of the classifier has the same weights.
        record_expected(fixture, hf_dir, texts)
    return fixture


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures", help="fixtures root (default: tests/fixtures)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    fixture = build_classifier_fixture(args.out)
    size = sum(p.stat().st_size for p in fixture.iterdir())
    print(f"{fixture}: {size / 1024:.0f} KiB in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
