"""What every tiny fixture folder holds, written the same way by every recipe (any framework).

A fixture is ``model.onnx``, ``tokenizer.json``, ``tokenizer_config.json`` (the length limit),
``texts.json`` and ``expected.npz`` (per text k: ``input_ids_k``, ``contributions_k``, ``rollout_k``
from a float64 reference). Needs NumPy and tokenizers only, so every recipe environment can use it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Randomized biases and norm parameters (frameworks initialize them to 0 / 1 / 0), so that the
#: fixtures really exercise b_O, gamma and beta: kind -> (distribution, parameters).
PERTURBATION = {"bias": ("normal", 0.0, 0.2), "norm_scale": ("uniform", 0.5, 1.5), "norm_shift": ("normal", 0.0, 0.1)}


#: Every other weight (matrices, embeddings) is drawn like the tiny PyTorch models' initializer_range.
WEIGHT_STD = 0.2


def perturbed(kind: str | None, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """New float32 values for a weight of ``kind`` (a key of PERTURBATION; None: any other weight).
    Drawing every weight from one seeded NumPy generator makes a recipe's model the same on every
    run, whatever its framework's own initializers do."""
    if kind is None:
        return rng.normal(0.0, WEIGHT_STD, shape).astype(np.float32)
    distribution, a, b = PERTURBATION[kind]
    values = rng.normal(a, b, shape) if distribution == "normal" else rng.uniform(a, b, shape)
    return values.astype(np.float32)


def write_tokenizer(folder: Path, tokenizer, max_length: int) -> None:
    """tokenizer.json and a tokenizer_config.json that states the model's length limit."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": max_length}, indent=1) + "\n")


def expected_arrays(input_ids: list, results: list) -> dict[str, np.ndarray]:
    """What expected.npz holds: per text k, ``input_ids_k``, ``contributions_k`` and ``rollout_k``."""
    arrays: dict[str, np.ndarray] = {}
    for k, (ids, result) in enumerate(zip(input_ids, results)):
        arrays[f"input_ids_{k}"] = np.asarray(ids, dtype=np.int64)
        arrays[f"contributions_{k}"] = result.contributions
        arrays[f"rollout_{k}"] = result.rollout
    return arrays


def write_expected(folder: Path, texts, input_ids: list, results: list) -> None:
    """expected.npz and texts.json; ``results`` hold ``contributions`` and ``rollout`` per text."""
    np.savez_compressed(folder / "expected.npz", **expected_arrays(input_ids, results))
    (folder / "texts.json").write_text(json.dumps(list(texts), indent=1) + "\n")


def check_reference(result, name: str, tolerance: float = 1e-10) -> None:
    """The float64 reference must rebuild the model's own block outputs exactly (float64 rounding)."""
    worst = float(np.max(result.block_outputs_error))
    if not worst < tolerance:
        raise AssertionError(f"{name}: the reference rebuilds the model's block outputs only within {worst:.3g}")


def record_references(folder: Path, texts, tokenizer, reference: Callable) -> None:
    """Run ``reference`` (a tokenizers Encoding -> its float64 ReferenceResult) on every text, check
    that each rebuilds the model's own block outputs, and write expected.npz and texts.json."""
    encodings = [tokenizer.encode(text) for text in texts]
    results = [reference(encoding) for encoding in encodings]
    for result in results:
        check_reference(result, folder.name)
    write_expected(folder, texts, [e.ids for e in encodings], results)
