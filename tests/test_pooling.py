"""The mean target: a mean-pooled sentence encoder's sentence is the average of its positions, so its
attribution is the mean of the final rollout's rows over the real tokens (alti_onnx.runtime.pooling)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from alti_onnx import Explainer
from alti_onnx.cli.app import _target_option as target_option
from alti_onnx.errors import InputError
from alti_onnx.runtime.pooling import declared_pooling
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.fixture_cases import FIXTURES

TEXTS = ["the cat sat", "a quick brown fox jumps over the lazy dog ."]
MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]


def sentence_encoder(tmp_path: Path, mode: str = "mean") -> Path:
    """tiny-bert with the files a sentence-transformers export carries beside it."""
    folder = tmp_path / f"tiny-bert-{mode}"
    shutil.copytree(FIXTURES / "tiny-bert", folder)
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": mode == "cls", "pooling_mode_mean_tokens": mode == "mean"}))
    (folder / "modules.json").write_text(json.dumps(MODULES))
    return folder


def test_a_mean_pooled_encoder_is_explained_for_the_mean_of_its_positions(tmp_path):
    explainer = Explainer(sentence_encoder(tmp_path), cache=False)
    assert explainer.pooling.mode == "mean"
    full = explainer.explain(TEXTS[1])
    assert full.default_target == "mean"
    np.testing.assert_allclose(full.attribution(), full.rollout[-1].mean(0), atol=0)
    assert full.attribution().sum() == pytest.approx(1.0)
    streamed = explainer.explain(TEXTS[1], full=False)  # the mean row carried back through the layers
    np.testing.assert_allclose(streamed.attribution(), full.attribution(), atol=1e-14)
    padded = explainer.explain(TEXTS)  # the mean is over real tokens: padding changes nothing
    np.testing.assert_allclose(padded[1].attribution(), full.attribution(), atol=1e-6)
    short = explainer.explain(TEXTS[0])
    np.testing.assert_allclose(padded[0].attribution(), short.attribution(), atol=1e-6)
    assert len(padded[0].attribution()) == len(short.tokens)
    np.testing.assert_allclose(full.attribution(0), full.rollout[-1][0], atol=0)  # a position can still be asked for
    from alti_onnx.report import report_data

    with pytest.raises(ValueError, match="target=N"):
        report_data(full)  # the report draws one position: it says so rather than failing on "mean"
    assert report_data(full, target=0)["target"] == 0


def test_other_poolings_and_plain_encoders_keep_the_first_position(tmp_path):
    assert Explainer(sentence_encoder(tmp_path, "cls"), cache=False).explain(TEXTS[0]).default_target == 0
    assert Explainer(FIXTURES / "tiny-bert", cache=False).explain(TEXTS[0]).default_target == 0
    broken = sentence_encoder(tmp_path / "broken")
    (broken / "modules.json").write_text("{not json")
    (broken / "1_Pooling" / "config.json").write_text("[]")
    assert declared_pooling(broken) is None  # unreadable files declare nothing


def test_the_cli_says_which_target_it_chose_and_takes_mean(tmp_path):
    folder = sentence_encoder(tmp_path)
    explanation = Explainer(folder, cache=False).explain(TEXTS[0])
    result = run_cli("explain", folder, "--text", TEXTS[0], "--json", tmp_path / "out.json", "--attribution-only")
    assert result.returncode == 0, result.stderr
    assert "target: the mean of all 5 tokens (the model is mean-pooled: 1_Pooling/config.json" in result.stdout
    payload = json.loads((tmp_path / "out.json").read_text())
    assert payload["target"] == "mean"
    np.testing.assert_allclose(payload["attribution"], explanation.attribution(), atol=1e-12)
    plain = run_cli("explain", FIXTURES / "tiny-bert", "--text", TEXTS[0], "--target", "mean")
    assert plain.returncode == 0 and "mean of all 5 tokens" in plain.stdout
    assert_one_line_error(run_cli("explain", folder, "--text", TEXTS[0], "--target", "middle"), "--target", "'mean'")
    assert_one_line_error(run_cli("explain", folder, "--text", TEXTS[0], "--html", tmp_path / "r.html"), "--target N")
    with pytest.raises(IndexError, match="'mean'"):
        explanation.attribution("middle")
    with pytest.raises(InputError):
        target_option("1.5")


def test_all_minilm_l6_v2_is_explained_for_its_mean_pooled_sentence():
    """The real all-MiniLM-L6-v2 export carries its 1_Pooling config: the default target is the mean
    of the final rollout rows over the real tokens."""
    folder = Path(os.environ.get("ALTI_ONNX_CACHE", Path.home() / ".cache" / "alti-onnx")) / "onnx" / "all-minilm-l6-v2"
    if not (folder / "model.onnx").is_file():
        pytest.skip("all-MiniLM-L6-v2 is built by tests/test_minilm.py")
    from models.minilm import build_minilm

    build_minilm(folder.parent.parent)  # adds the pooling files to an export made before they were kept
    explainer = Explainer(folder)
    texts = ["A man is playing a guitar on the stage.", "Cats sleep."]
    batch = explainer.explain(texts)
    for text, explanation in zip(texts, batch):
        assert explanation.default_target == "mean"
        alone = explainer.explain(text)
        np.testing.assert_allclose(explanation.attribution(), alone.rollout[-1].mean(0), atol=1e-5)
        assert len(explanation.attribution()) == len(alone.tokens)
