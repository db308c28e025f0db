"""Faithfulness evaluation: metrics against hand-computed numbers and direct computations (no torch)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from alti_onnx import Explainer
from alti_onnx.evaluation import (
    BINS,
    OnnxClassifier,
    evaluate,
    faithfulness,
    k_for_bin,
    perturbed_inputs,
    rank_tokens,
    read_texts,
    write_report,
)
from alti_onnx.errors import InputError
from alti_onnx.evaluation import attributions as attr
from alti_onnx.evaluation.metrics import FaithfulnessScores
from alti_onnx.results.logit import LogitQuery

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-bert-classifier"
CLS, SEP = 101, 102
SENTENCES = [
    "the movie was great fun",
    "a terrible boring film",
    "the dog likes the big red car",
    "she loves the old book",
    "the cat sat",
    "a quick brown fox jumps over the lazy dog .",
    "she said that the small house near the river was very old and quiet , but the people there were happy .",
    "the blorptastic movie was great",
]


# --------------------------------------------------------------------------- a hand-made classifier
WEIGHTS = {1: 0.3, 2: 0.2, 3: 0.1, 11: -0.15}


class LexiconClassifier:
    """q = p(class 1) = 0.2 + sum of the tokens' weights; records every sequence it is asked."""

    def __init__(self):
        self.seen: list[list[int]] = []

    def __call__(self, sequences):
        self.seen.extend(list(s) for s in sequences)
        q = np.array([0.2 + sum(WEIGHTS.get(t, 0.0) for t in s) for s in sequences])
        return np.stack([1 - q, q], axis=1)


# sentence A: ids 1..10 between [CLS] and [SEP]; q = 0.8 -> y = 1, p(y|x) = 0.8
IDS_A = [CLS, *range(1, 11), SEP]
SPECIAL_A = [True] + [False] * 10 + [True]
#                     CLS  p1   p2   p3   p4   p5   p6   p7   p8   p9   p10  SEP  (specials ranked high on purpose)
ATTR_A = np.array([9.0, 0.1, 0.9, 0.5, 0.3, 0.2, 0.0, 0.8, 0.4, 0.6, 0.7, 5.0])
# sentence B: q = 0.05 -> y = 0, p(y|x) = 0.95
IDS_B = [CLS, 11, 12, SEP]
SPECIAL_B = [True, False, False, True]
ATTR_B = np.array([0.0, 0.2, 0.1, 0.0])


def test_k_rounds_up():
    assert [k_for_bin(b, 10) for b in BINS] == [1, 1, 1, 2, 5]
    assert [k_for_bin(b, 30) for b in BINS] == [1, 2, 3, 6, 15]  # 0.1 * 30 is 3, not 4
    assert [k_for_bin(b, 2) for b in BINS] == [1, 1, 1, 1, 1]
    assert k_for_bin(0.5, 3) == 2 and k_for_bin(0.2, 11) == 3 and k_for_bin(0.01, 101) == 2


def test_ranking_excludes_specials_and_is_stable():
    assert rank_tokens(ATTR_A, SPECIAL_A).tolist() == [2, 7, 10, 9, 3, 8, 4, 5, 1, 6]
    assert rank_tokens(np.array([0.0, 1.0, 1.0, 0.5, 3.0]), [True, False, False, False, True]).tolist() == [1, 2, 3]


def test_perturbed_sequences_delete_tokens_and_keep_specials():
    removed, kept = perturbed_inputs(IDS_A, SPECIAL_A, ATTR_A)
    assert removed[0] == removed[1] == removed[2] == [CLS, 1, 3, 4, 5, 6, 7, 8, 9, 10, SEP]
    assert kept[0] == kept[1] == kept[2] == [CLS, 2, SEP]
    assert removed[3] == [CLS, 1, 3, 4, 5, 6, 8, 9, 10, SEP]
    assert kept[3] == [CLS, 2, 7, SEP]
    assert removed[4] == [CLS, 1, 4, 5, 6, 8, SEP]
    assert kept[4] == [CLS, 2, 3, 7, 9, 10, SEP]
    # specials in the middle (a sentence pair) stay where they are
    removed, kept = perturbed_inputs([CLS, 5, SEP, 6, SEP], [True, False, True, False, True], np.array([0, 1, 0, 2, 0.0]), (0.5,))
    assert removed == [[CLS, 5, SEP, SEP]] and kept == [[CLS, SEP, 6, SEP]]


def test_metrics_by_hand():
    predict = LexiconClassifier()
    full = predict([IDS_A, IDS_B])
    targets = full.argmax(1)
    assert targets.tolist() == [1, 0]
    p_full = full[[0, 1], targets]
    np.testing.assert_allclose(p_full, [0.8, 0.95])
    predict.seen.clear()
    scores = faithfulness(predict, [IDS_A, IDS_B], [SPECIAL_A, SPECIAL_B], [ATTR_A, ATTR_B], targets, p_full)
    assert len(predict.seen) == 2 * 2 * len(BINS)  # one call, all sequences
    np.testing.assert_allclose(scores.comprehensiveness, [[0.2, 0.2, 0.2, 0.2, 0.3], [0.15] * 5], atol=1e-12)
    np.testing.assert_allclose(scores.sufficiency, [[0.4, 0.4, 0.4, 0.4, 0.3], [0.0] * 5], atol=1e-12)
    np.testing.assert_allclose(scores.comprehensiveness_aopc, [0.22, 0.15], atol=1e-12)
    np.testing.assert_allclose(scores.sufficiency_aopc, [0.38, 0.0], atol=1e-12)
    mean = scores.mean()
    assert mean["comprehensiveness_aopc"] == pytest.approx(0.185, abs=1e-12)
    assert mean["sufficiency_aopc"] == pytest.approx(0.19, abs=1e-12)
    assert mean["comprehensiveness"] == pytest.approx([0.175, 0.175, 0.175, 0.175, 0.225], abs=1e-12)


def test_leave_one_out_by_hand():
    predict = LexiconClassifier()
    loo = attr.leave_one_out(predict, [IDS_A, IDS_B], [SPECIAL_A, SPECIAL_B], [1, 0], [0.8, 0.95])
    np.testing.assert_allclose(loo[0], [0, 0.3, 0.2, 0.1, 0, 0, 0, 0, 0, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(loo[1], [0, 0.15, 0, 0], atol=1e-12)


def test_random_is_seeded():
    a = attr.random_attributions([5, 7], seed=3, draws=4)
    b = attr.random_attributions([5, 7], seed=3, draws=4)
    c = attr.random_attributions([5, 7], seed=4, draws=4)
    assert len(a) == 4 and [len(x) for x in a[0]] == [5, 7]
    for da, db, dc in zip(a, b, c):
        for x, y, z in zip(da, db, dc):
            np.testing.assert_array_equal(x, y)
            assert not np.allclose(x, z)
    assert not np.allclose(a[0][0], a[1][0])  # draws differ


# --------------------------------------------------------------------------- the tiny ONNX classifier
@pytest.fixture(scope="module")
def explainer():
    return Explainer(FIXTURE)


@pytest.fixture(scope="module")
def session():
    return ort.InferenceSession(str(FIXTURE / "model.onnx"), providers=["CPUExecutionProvider"])


def direct_probs(session, ids: list[int]) -> np.ndarray:
    """One unpadded sequence through a plain session."""
    x = np.asarray([ids], dtype=np.int64)
    (logits,) = session.run(["logits"], {"input_ids": x, "attention_mask": np.ones_like(x), "token_type_ids": np.zeros_like(x)})
    e = np.exp(logits[0] - logits[0].max())
    return e / e.sum()


def test_classifier_fixture_alti_matches_reference(explainer):
    texts = json.loads((FIXTURE / "texts.json").read_text())
    npz = np.load(FIXTURE / "expected.npz")
    for k, e in enumerate(explainer.explain(texts)):  # a padded batch
        assert e.input_ids == npz[f"input_ids_{k}"].tolist()
        np.testing.assert_allclose(e.contributions, npz[f"contributions_{k}"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(e.rollout, npz[f"rollout_{k}"], atol=1e-4, rtol=0)
    single = explainer.explain(texts[2])
    np.testing.assert_allclose(single.rollout, npz["rollout_2"], atol=1e-4, rtol=0)
    assert explainer.labels == ["negative", "positive"]


def test_fixture_predictions_vary(explainer):
    labels = {e.prediction.label for e in explainer.explain(SENTENCES)}
    assert labels == {"negative", "positive"}


def test_onnx_classifier_batches_match_single_runs(explainer, session):
    clf = OnnxClassifier(FIXTURE / "model.onnx", explainer.text_encoder.pad_id, batch_size=3, providers=["CPUExecutionProvider"])
    seqs = [e.input_ids for e in explainer.explain(SENTENCES)]
    seqs += [seqs[0], seqs[1][:3] + seqs[1][-1:]]
    probs = clf(seqs)
    assert clf.runs == len(SENTENCES) + 1  # the repeated sequence is computed once
    for s, p in zip(seqs, probs):
        np.testing.assert_allclose(p, direct_probs(session, s), atol=1e-5)
    clf(seqs[:2])
    assert clf.runs == len(SENTENCES) + 1


def test_onnx_classifier_of_a_model_without_mask_runs_one_length_at_a_time(explainer, session, tmp_path):
    """Padding would be attended to: each batch holds sequences of one length, unpadded."""
    from fixture_cases import without_mask_input

    folder = without_mask_input(FIXTURE, tmp_path / "no-mask")
    clf = OnnxClassifier(folder / "model.onnx", explainer.text_encoder.pad_id, batch_size=4, providers=["CPUExecutionProvider"])
    assert not clf.inputs.has_mask
    seqs = [e.input_ids for e in explainer.explain(SENTENCES)]
    assert len({len(s) for s in seqs}) > 2
    for s, p in zip(seqs, clf(seqs)):
        np.testing.assert_allclose(p, direct_probs(session, s), atol=1e-5)


@pytest.fixture(scope="module")
def result(explainer):
    return evaluate(explainer, SENTENCES, labels=[1, 0, 1, 1, 0, 1, 1, 1], batch_size=5, explain_batch=3)


def test_evaluate_matches_direct_computation(explainer, session, result):
    tok = explainer.tokenizer
    explanations = explainer.explain(SENTENCES)
    for n, (text, e) in enumerate(zip(SENTENCES, explanations)):
        enc = tok.encode(text)
        ids, special = enc.ids, [bool(s) for s in enc.special_tokens_mask]
        assert special[0] and special[-1] and not any(special[1:-1])
        full = direct_probs(session, ids)
        y = int(full.argmax())
        assert result.targets[n] == y and result.full_probability[n] == pytest.approx(full[y], abs=1e-5)
        a = e.rollout[-1, 0]
        ranked = sorted((j for j in range(len(ids)) if not special[j]), key=lambda j: -a[j])
        comp, suff = [], []
        for b in BINS:
            top = set(ranked[: math.ceil(b * len(ranked) - 1e-9)])
            removed = [t for j, t in enumerate(ids) if j not in top]
            kept = [t for j, t in enumerate(ids) if j in top or special[j]]
            comp.append(full[y] - direct_probs(session, removed)[y])
            suff.append(full[y] - direct_probs(session, kept)[y])
        scores = result.methods["ALTI"].scores
        np.testing.assert_allclose(scores.comprehensiveness[n], comp, atol=1e-5)
        np.testing.assert_allclose(scores.sufficiency[n], suff, atol=1e-5)


def test_leave_one_out_matches_direct_computation(explainer, session, result):
    clf = OnnxClassifier(FIXTURE / "model.onnx", explainer.text_encoder.pad_id, providers=["CPUExecutionProvider"])
    loo = attr.leave_one_out(clf, result.input_ids, [[j in (0, len(s) - 1) for j in range(len(s))] for s in result.input_ids],
                             result.targets, result.full_probability)
    for ids, y, p, a in zip(result.input_ids, result.targets, result.full_probability, loo):
        want = [0.0] + [p - direct_probs(session, ids[:j] + ids[j + 1 :])[y] for j in range(1, len(ids) - 1)] + [0.0]
        np.testing.assert_allclose(a, want, atol=1e-5)


def test_attention_rollout_and_norm_based_match_direct_computation(explainer):
    e = explainer.explain(SENTENCES[5], baselines=True)
    L, S, _ = e.attention.shape
    r = None
    for layer in range(L):
        m = [[0.5 * e.attention[layer, i, j] + (0.5 if i == j else 0.0) for j in range(S)] for i in range(S)]
        m = np.array([np.array(row) / sum(row) for row in m])
        r = m if r is None else m @ r
    np.testing.assert_allclose(attr.attention_rollout(e), r[0], atol=1e-12)
    assert attr.attention_rollout(e).sum() == pytest.approx(1.0)
    nb = e.norm_based[0]
    for layer in range(1, L):
        nb = e.norm_based[layer] @ nb
    np.testing.assert_allclose(attr.norm_based(e), nb[0], atol=1e-12)
    np.testing.assert_allclose(attr.last_layer_attention(e), e.attention[-1, 0])
    np.testing.assert_allclose(attr.alti(e), e.rollout[-1, 0])


def test_evaluate_random_is_reproducible(explainer, result):
    again = evaluate(explainer, SENTENCES, methods=["random"], seed=0)
    other = evaluate(explainer, SENTENCES, methods=["random"], seed=1)
    np.testing.assert_array_equal(again.methods["random"].scores.comprehensiveness, result.methods["random"].scores.comprehensiveness)
    assert not np.allclose(other.methods["random"].scores.comprehensiveness, result.methods["random"].scores.comprehensiveness)


def test_gradient_rows_say_why(result):
    for name in ("gradient norm", "gradient x input", "integrated gradients"):
        m = result.methods[name]
        assert not m.computed and "not computed" in m.reason and "--hf-model" in m.reason
    assert all(result.methods[name].computed for name in ("ALTI", "attention rollout", "norm-based", "leave-one-out", "random"))
    assert result.accuracy is not None


def test_report_files(result, tmp_path):
    paths = write_report(result, tmp_path / "out")
    md = paths["markdown"].read_text()
    assert "| ALTI |" in md and "comprehensiveness AOPC" in md and "not computed" in md
    data = json.loads(paths["json"].read_text())
    assert data["bins"] == list(BINS) and data["n_sentences"] == len(SENTENCES)
    alti = data["methods"]["ALTI"]
    assert alti["comprehensiveness_aopc"] == pytest.approx(np.mean(alti["comprehensiveness"]))
    assert len(alti["per_sentence"]["sufficiency"]) == len(SENTENCES)
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_read_texts(tmp_path):
    tsv = tmp_path / "split.tsv"
    tsv.write_text("label\trating\ttext\n1\t0.5\tgood film\n0\t-1\tbad\tfilm with a tab\n1\t1\t \n0\t-2\tdull\n")
    d = read_texts(tsv)
    assert d.texts == ["good film", "bad\tfilm with a tab", "dull"] and d.labels == [1, 0, 0]
    assert read_texts(tsv, n=2).texts == ["good film", "bad\tfilm with a tab"]
    plain = tmp_path / "plain.txt"
    plain.write_text("first sentence\n\nsecond one\n")
    d = read_texts(plain)
    assert d.texts == ["first sentence", "second one"] and d.labels is None


def test_cli_evaluate(tmp_path):
    from typer.testing import CliRunner

    from alti_onnx.cli.app import app

    data = tmp_path / "s.txt"
    data.write_text("\n".join(SENTENCES[:4]) + "\n")
    res = CliRunner().invoke(app, ["evaluate", str(FIXTURE), "--data", str(data), "--n", "3", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "| ALTI |" in res.output
    assert json.loads((tmp_path / "o" / "results.json").read_text())["n_sentences"] == 3
    assert (tmp_path / "o" / "faithfulness.png").is_file()
    # a model without logits: one line, exit code 2
    res = CliRunner().invoke(app, ["evaluate", str(FIXTURE.parent / "tiny-bert"), "--data", str(data), "--out", str(tmp_path / "p")])
    assert res.exit_code == 2 and "logits" in res.output and "Traceback" not in res.output


def test_onnx_path_does_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from alti_onnx import Explainer\n"
        "from alti_onnx.evaluation import evaluate, write_report\n"
        f"r = evaluate(Explainer({str(FIXTURE)!r}), ['the cat sat', 'a good film'])\n"
        f"write_report(r, {str(tmp_path)!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_logit_decomposition_method_ranks_by_the_predicted_class(explainer, session, result):
    """The method's attribution is the predicted class's logit decomposition; its scores are those of
    deleting the tokens it ranks first."""
    for n, text in enumerate(SENTENCES):
        y = int(result.targets[n])
        parts = explainer.explain(text, logit=LogitQuery(target=y)).logit.attribution
        ids = result.input_ids[n]
        ranked = sorted(range(1, len(ids) - 1), key=lambda j: -parts[j])
        top = set(ranked[: math.ceil(BINS[-1] * len(ranked) - 1e-9)])
        removed = [t for j, t in enumerate(ids) if j not in top]
        full = result.full_probability[n]
        assert result.methods["logit decomposition"].scores.comprehensiveness[n, -1] == pytest.approx(
            full - direct_probs(session, removed)[y], abs=1e-5)


def test_paper_protocol_follows_aupc_py():
    """aupc.py's loop, written out: the running minimum (maximum) of p(y) from k = 0, summed over the bins, / 6."""
    rng = np.random.default_rng(0)
    full, removed, kept, empty = rng.uniform(0.5, 1, 9), rng.uniform(0, 1, (9, 5)), rng.uniform(0, 1, (9, 5)), rng.uniform(0, 1, 9)
    scores = FaithfulnessScores(BINS, full[:, None] - removed, full[:, None] - kept, full - empty, "paper")
    for n in range(9):
        lowest, comp = 1.0, []
        for p in [full[n], *removed[n]]:
            lowest = p if p <= lowest else lowest
            comp.append(lowest)
        highest, suff = 0.0, []
        for p in [empty[n], *kept[n]]:
            highest = p if p > highest else highest
            suff.append(highest)
        assert scores.comprehensiveness_aopc[n] == pytest.approx(sum(full[n] - c for c in comp[1:]) / 6)
        assert scores.sufficiency_aopc[n] == pytest.approx(sum(full[n] - s for s in suff[1:]) / 6)
    deyoung = FaithfulnessScores(BINS, full[:, None] - removed, full[:, None] - kept)
    np.testing.assert_allclose(deyoung.comprehensiveness_aopc, (full[:, None] - removed).mean(1))


def test_paper_protocol_end_to_end(explainer, session):
    paper = evaluate(explainer, SENTENCES[:4], methods=["ALTI", "random"], protocol="paper", random_draws=2)
    scores = paper.methods["ALTI"].scores
    for n, ids in enumerate(paper.input_ids):
        y = int(paper.targets[n])
        alone = [ids[0], ids[-1]]  # the specials alone: k = 0 of the sufficiency curve
        assert scores.empty[n] == pytest.approx(paper.full_probability[n] - direct_probs(session, alone)[y], abs=1e-5)
    assert paper.meta["protocol"] == "paper"
    draws = paper.methods["random"].scores
    assert draws.averaged is not None and draws.comprehensiveness_aopc.shape == (4,)
    with pytest.raises(InputError, match="--protocol"):
        evaluate(explainer, SENTENCES[:2], protocol="other")
