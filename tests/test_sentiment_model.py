"""The fine-tuned MiniLM sentiment classifier (models.sentiment), run as ONNX on the Rotten Tomatoes test split."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from models.rotten_tomatoes import (  # noqa: E402
    SEED,
    _extract_ground_truth,
    download_source,
    load_split,
    make_split,
    read_ground_truth,
    split_paths,
)
from models.sentiment import build_sentiment_classifier  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]

BATCH = 64


@pytest.fixture(scope="module")
def onnx_dir():
    return build_sentiment_classifier()


@pytest.fixture(scope="module")
def record(onnx_dir) -> dict:
    return json.loads((onnx_dir / "training.json").read_text(encoding="utf-8"))


def _onnx_predictions(onnx_dir, texts: list[str], max_length: int) -> np.ndarray:
    tokenizer = Tokenizer.from_file(str(onnx_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")
    session = ort.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    input_names = {i.name for i in session.get_inputs()}
    preds = []
    for start in range(0, len(texts), BATCH):
        encodings = tokenizer.encode_batch(texts[start : start + BATCH])
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (logits,) = session.run(["logits"], {k: v for k, v in feeds.items() if k in input_names})
        assert logits.shape == (len(encodings), 2)
        preds.append(logits.argmax(-1))
    return np.concatenate(preds)


def test_onnx_accuracy_matches_training_and_beats_probe(onnx_dir, record: dict) -> None:
    test = load_split("test")
    labels = np.array([ex.label for ex in test])
    accuracy = float((_onnx_predictions(onnx_dir, [ex.text for ex in test], record["max_length"]) == labels).mean())
    assert abs(accuracy - record["test_accuracy"]) <= 0.005, (accuracy, record["test_accuracy"])
    assert accuracy >= record["linear_probe"]["test_accuracy"] + 0.05, (accuracy, record["linear_probe"])


def test_config_labels(onnx_dir) -> None:
    config = json.loads((onnx_dir / "config.json").read_text(encoding="utf-8"))
    assert {int(k): v for k, v in config["id2label"].items()} == {0: "negative", 1: "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}


def test_split_is_reproducible(record: dict) -> None:
    meta = json.loads(split_paths()["split"].read_text(encoding="utf-8"))
    assert meta["seed"] == SEED
    loaded = {name: load_split(name) for name in ("train", "dev", "test")}
    assert {name: len(exs) for name, exs in loaded.items()} == meta["sizes"] == record["split_sizes"]
    assert loaded["test"][0].text == meta["first"]["test"]
    resplit = make_split(read_ground_truth(_extract_ground_truth(download_source())), SEED)
    assert {name: len(exs) for name, exs in resplit.items()} == meta["sizes"]
    for name in ("train", "dev", "test"):
        assert resplit[name][0].text == meta["first"][name]
        assert [ex.label for ex in resplit[name]] == [ex.label for ex in loaded[name]]
    assert [ex.text for ex in resplit["test"]] == [ex.text for ex in loaded["test"]]
