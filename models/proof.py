"""Before a real model verifies anything, it proves it works: a known sentence is tokenized into its
expected pieces, and a known prompt gives its expected top token (a sentence encoder: a paraphrase is
nearer than an unrelated sentence). Two equally broken runs (a tokenizer that segments wrongly, say)
agree with each other; these checks catch what that comparison cannot.

Each recipe runs its proof on the ONNX export it built (onnxruntime only, seconds) and refuses to
hand back a model that fails it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ModelDoesNotWork(RuntimeError):
    """A built model failed its proof: it must not be used to verify anything."""


@dataclass(frozen=True)
class Proof:
    """What a model must do: ``pieces`` of ``sentence`` (special tokens left out), and either the top
    next token after ``prompt`` (a decoder) or ``close`` nearer ``anchor`` than ``far`` (an encoder)."""

    sentence: str
    pieces: tuple[str, ...]
    prompt: str | None = None
    next_token: str | None = None
    anchor: str | None = None
    close: str | None = None
    far: str | None = None


def prove(onnx_dir: Path, proof: Proof) -> Path:
    """``onnx_dir`` when its model passes ``proof``; else ModelDoesNotWork saying what it did instead."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    encoding = tokenizer.encode(proof.sentence)
    pieces = tuple(t for t, special in zip(encoding.tokens, encoding.special_tokens_mask) if not special)
    if pieces != proof.pieces:
        raise ModelDoesNotWork(f"{onnx_dir}: the tokenizer splits {proof.sentence!r} into {list(pieces)}, "
                               f"not {list(proof.pieces)}")
    if proof.prompt is not None:
        found = _next_token(onnx_dir, tokenizer, proof.prompt)
        if found != proof.next_token:
            raise ModelDoesNotWork(f"{onnx_dir}: after {proof.prompt!r} the model's top token is {found!r}, "
                                   f"not {proof.next_token!r}")
    if proof.anchor is not None:
        anchor, close, far = (_embedding(onnx_dir, tokenizer, text) for text in (proof.anchor, proof.close, proof.far))
        near, away = float(anchor @ close), float(anchor @ far)
        if not near > away:
            raise ModelDoesNotWork(f"{onnx_dir}: {proof.close!r} is no nearer {proof.anchor!r} ({near:.3f}) than "
                                   f"{proof.far!r} ({away:.3f})")
    return onnx_dir


def _session(onnx_dir: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def _feeds(session, ids: list[int]) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    row = np.asarray([ids], dtype=np.int64)
    feeds = {"input_ids": row, "attention_mask": np.ones_like(row)}
    if "position_ids" in names:
        feeds["position_ids"] = np.arange(len(ids), dtype=np.int64)[None]
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(row)
    return {name: feeds[name] for name in names}


def _next_token(onnx_dir: Path, tokenizer, prompt: str) -> str:
    session = _session(onnx_dir)
    ids = tokenizer.encode(prompt).ids
    logits = session.run(None, _feeds(session, ids))[0]
    return tokenizer.decode([int(np.argmax(logits[0, -1]))], skip_special_tokens=False)


def _embedding(onnx_dir: Path, tokenizer, text: str) -> np.ndarray:
    """The mean-pooled, unit-length sentence embedding (as sentence-transformers computes it)."""
    session = _session(onnx_dir)
    hidden = session.run(None, _feeds(session, tokenizer.encode(text).ids))[0][0]
    pooled = hidden.mean(0)
    return pooled / np.linalg.norm(pooled)
