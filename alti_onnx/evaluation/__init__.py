"""Faithfulness of token attributions: comprehensiveness, sufficiency and AOPC (DeYoung et al. 2020).

``evaluate(explainer, texts)`` scores ALTI and the baselines of docs/alti.md (attention, attention
rollout, norm-based, leave-one-out, random; gradient methods when PyTorch and the checkpoint are
available) on an exported sentence classifier, running every perturbed input through
onnxruntime. ``write_report`` writes results.md, results.json and faithfulness.png.

Modules: ``perturbation`` (ranking, bins, deletions), ``metrics`` (the scores, against any
``predict`` callable), ``predict`` (the batched onnxruntime classifier), ``attributions`` (the
methods without autograd), ``gradients`` (the PyTorch ones, imported lazily), ``data`` (reading
sentences), ``runner`` (``evaluate``), ``report`` (output files).
"""

from .data import Dataset, read_texts
from .metrics import FaithfulnessScores, Predict, faithfulness, perturbed_inputs
from .perturbation import BINS, k_for_bin, only_tokens, rank_tokens, top_k, without_tokens
from .predict import OnnxClassifier
from .report import markdown_table, plot, write_report
from .runner import METHODS, EvaluationResult, MethodResult, evaluate

__all__ = [
    "BINS",
    "METHODS",
    "Dataset",
    "EvaluationResult",
    "FaithfulnessScores",
    "MethodResult",
    "OnnxClassifier",
    "Predict",
    "evaluate",
    "faithfulness",
    "k_for_bin",
    "markdown_table",
    "only_tokens",
    "perturbed_inputs",
    "plot",
    "rank_tokens",
    "read_texts",
    "top_k",
    "without_tokens",
    "write_report",
]
