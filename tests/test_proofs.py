"""Every real-weights recipe proves its model works (models.proof) before it verifies anything: the
proofs pass on the built models and fail on what they exist to catch (a tokenizer that segments as
the model was not trained, as Gemma 3's did when its GGUF vocabulary was read as a Unigram model)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest

from models.proof import ModelDoesNotWork, prove

pytestmark = pytest.mark.slow

CACHE = Path(os.environ.get("ALTI_ONNX_CACHE", Path.home() / ".cache" / "alti-onnx"))


def _proofs():
    from models import gemma3, minilm, mpnet, smollm

    return {"all-minilm-l6-v2": minilm.PROOF, "all-mpnet-base-v2": mpnet.PROOF,
            "smollm2-135m-instruct": smollm.PROOF, "gemma-3-270m": gemma3.PROOF}


def _built(name: str) -> Path:
    folder = CACHE / "onnx" / name
    if not (folder / "model.onnx").is_file():
        pytest.skip(f"{folder} is built by the real-model tests (python -m models.*)")
    return folder


@pytest.mark.parametrize("name", ["all-minilm-l6-v2", "all-mpnet-base-v2", "smollm2-135m-instruct", "gemma-3-270m"])
def test_each_real_model_passes_its_proof(name):
    assert prove(_built(name), _proofs()[name]) == _built(name)


def test_a_proof_fails_on_pieces_or_a_next_token_the_model_does_not_give():
    folder = _built("smollm2-135m-instruct")
    proof = _proofs()["smollm2-135m-instruct"]
    with pytest.raises(ModelDoesNotWork, match="splits 'The capital of France is' into"):
        prove(folder, dataclasses.replace(proof, pieces=("The", "Ġcap", "ital")))
    with pytest.raises(ModelDoesNotWork, match="top token is ' Berlin', not ' Paris'"):
        prove(folder, dataclasses.replace(proof, next_token=" Paris"))
    minilm = _built("all-minilm-l6-v2")
    with pytest.raises(ModelDoesNotWork, match="is no nearer"):
        prove(minilm, dataclasses.replace(_proofs()["all-minilm-l6-v2"], close="The stock market fell sharply today.",
                                           far="Someone plays the guitar."))


def test_gemma3s_vocabulary_read_as_unigram_fails_the_proof(tmp_path):
    """The tokenizer transformers made from the GGUF (Unigram, the negated merge ranks as scores)
    splits 'capital' into pieces; the rebuilt BPE does not. The proof tells them apart."""
    folder = _built("gemma-3-270m")
    described = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = described["model"]
    scores = _gguf_scores()
    by_id = sorted(model["vocab"].items(), key=lambda item: item[1])
    described["model"] = {"type": "Unigram", "unk_id": model["vocab"][model["unk_token"]], "byte_fallback": True,
                          "vocab": [[piece, scores[index]] for piece, index in by_id]}
    unigram = tmp_path / "unigram"
    unigram.mkdir()
    (unigram / "tokenizer.json").write_text(json.dumps(described, ensure_ascii=False), encoding="utf-8")
    for name in os.listdir(folder):
        if name != "tokenizer.json":
            os.symlink(folder / name, unigram / name)
    with pytest.raises(ModelDoesNotWork, match="'▁c', 'ap', 'it', 'al'"):
        prove(unigram, _proofs()["gemma-3-270m"])
    shutil.rmtree(unigram)


def _gguf_scores() -> list[float]:
    pytest.importorskip("gguf")
    from gguf import GGUFReader

    path = CACHE / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if not path.is_file():
        pytest.skip(f"{path} is fetched by python -m models.gemma3")
    field = GGUFReader(str(path)).fields["tokenizer.ggml.scores"]
    return [float(field.parts[index][0]) for index in field.data]
