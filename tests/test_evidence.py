"""``evaluate --task evidence`` on the tiny decoder: every reciprocal rank recomputed from its definition."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from alti_onnx import Explainer
from alti_onnx.errors import InputError
from alti_onnx.evaluation.evidence import evaluate_evidence, read_cases
from alti_onnx.evaluation.predict import OnnxNextToken
from alti_onnx.results.logit import LogitQuery

FIXTURES = Path(__file__).parent / "fixtures"
ROWS = {
    "agreement": [("the cats sat on the", "mat", "dog", "cats"), ("a man saw the big", "dog", "cat", "man"),
                  ("those people said", "that", "this", "those"), ("the dog ran", "to", "to", "dog"),
                  ("she was happy", "and", "but", "NA")],
    "names": [("the man gave the book to the", "woman", "man", "book"), ("we went to the city", "at", "in", "city")],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evidence")
    for name, rows in ROWS.items():
        with open(folder / f"{name}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["", "one_prefix_prefix", "one_prefix_word_good", "one_prefix_word_bad", "target"])
            writer.writerows([k, *row] for k, row in enumerate(rows))
    return folder


@pytest.fixture(scope="module")
def llama() -> Explainer:
    return Explainer(FIXTURES / "tiny-llama")


def _rank(values: np.ndarray, evidence: list[int], candidates: list[int]) -> float:
    better = [sum(values[j] > values[e] or (values[j] == values[e] and j < e) for j in candidates) for e in evidence]
    return 1.0 / (1 + min(better))


def test_reciprocal_ranks_from_their_definition(llama: Explainer, data: Path) -> None:
    result = evaluate_evidence(llama, read_cases(data), seed=3)
    assert result.skipped == {"agreement": 2}  # the same first token ("to"), and no evidence ("NA")
    assert result.cases == {"agreement": 3, "names": 2}
    assert "gradient x input" in result.reasons  # no checkpoint given
    tokenizer = llama.tokenizer
    model = OnnxNextToken(FIXTURES / "tiny-llama" / "model.onnx", llama.text_encoder.pad_id)
    expected: dict[str, dict[str, list[float]]] = {}
    for phenomenon, rows in ROWS.items():
        for prefix, good, bad, evidence in rows[:4] if phenomenon == "agreement" else rows:
            if good == bad:
                continue
            encoding = tokenizer.encode(prefix)
            good_id, bad_id = (tokenizer.encode(" " + w, add_special_tokens=False).ids[0] for w in (good, bad))
            words = prefix.split()
            where = [k for k, token in enumerate(encoding.tokens) if not encoding.special_tokens_mask[k]
                     and words[encoding.word_ids[k]] == evidence]
            candidates = [k for k in range(len(encoding.ids)) if not encoding.special_tokens_mask[k]]
            alti_logit = llama.explain(prefix, logit=LogitQuery(target=good_id, foil=bad_id)).logit.attribution
            ids = encoding.ids
            contrast = lambda s: model([s])[0][good_id] - model([s])[0][bad_id]  # noqa: E731
            erasure = np.full(len(ids), -np.inf)
            for k in candidates:
                erasure[k] = contrast(ids) - contrast(ids[:k] + ids[k + 1:])
            found = expected.setdefault(phenomenon, {"ALTI-Logit (contrastive)": [], "erasure": []})
            found["ALTI-Logit (contrastive)"].append(_rank(alti_logit, where, candidates))
            found["erasure"].append(_rank(erasure, where, candidates))
    for phenomenon, methods in expected.items():
        for method, ranks in methods.items():
            assert result.mrr[phenomenon][method] == pytest.approx(np.mean(ranks)), (phenomenon, method)
        assert 0 < result.mrr[phenomenon]["random"] <= 1
    again = evaluate_evidence(llama, read_cases(data), seed=3)
    assert again.mrr == result.mrr  # the random floor is seeded


def test_evidence_refusals(data: Path, tmp_path: Path) -> None:
    with Explainer(FIXTURES / "tiny-bert-classifier") as classifier, pytest.raises(InputError, match="causal"):
        evaluate_evidence(classifier, read_cases(data))
    with pytest.raises(InputError, match="no .csv files"):
        read_cases(tmp_path)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="lacks the column"):
        read_cases(tmp_path)
    header = ",one_prefix_prefix,one_prefix_word_good,one_prefix_word_bad,target\n"
    (tmp_path / "bad.csv").write_bytes((header + "0,caf\xe9 is,good,bad,caf\xe9\n").encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        read_cases(tmp_path)
    (tmp_path / "bad.csv").write_text(header + "0,the cat\n1,the cat sat on the,mat,dog,cat\n")
    with Explainer(FIXTURES / "tiny-llama") as llama:
        result = evaluate_evidence(llama, read_cases(tmp_path))
    assert result.cases == {"bad": 1} and result.skipped == {"bad": 1}  # the short row is skipped, counted


def test_cli_evidence(data: Path, tmp_path: Path) -> None:
    from tests.cli_helpers import assert_one_line_error, run_cli

    result = run_cli("evaluate", FIXTURES / "tiny-llama", "--task", "evidence", "--data", data, "--out", tmp_path / "o")
    assert result.returncode == 0, result.stderr
    assert "| agreement | 3 |" in result.stdout
    written = json.loads((tmp_path / "o" / "evidence.json").read_text())
    assert written["cases"] == {"agreement": 3, "names": 2} and written["skipped"] == {"agreement": 2}
    assert_one_line_error(run_cli("evaluate", FIXTURES / "tiny-llama", "--task", "nope", "--data", data), "--task")
    assert_one_line_error(run_cli("evaluate", FIXTURES / "tiny-llama", "--task", "evidence", "--protocol", "paper",
                                  "--data", data), "--protocol")
