"""The prepared-model cache: the second run on a model skips the analysis, and no entry can be
wrong for the file it is used for (another file, changed weights, a damaged or unwritable cache)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from fixture_cases import FIXTURES

import alti_onnx.runtime.prepared as prepared_module
from alti_onnx import Explainer
from alti_onnx.runtime.prepared import prepare

TEXT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ALTI_ONNX_CACHE", str(root))
    return root / "prepared"


def _attribution(model) -> np.ndarray:
    return Explainer(model).explain(TEXT).attribution()


def test_the_second_run_uses_the_entry_and_gives_the_same_numbers(cache, tmp_path):
    first = Explainer(FIXTURES / "tiny-llama")
    assert not first.prepared.cached and first.prepared.directory.parent == cache
    second = Explainer(FIXTURES / "tiny-llama")
    assert second.prepared.cached and second.prepared.directory == first.prepared.directory
    assert [b.summary() for b in second.blocks] == [b.summary() for b in first.blocks]
    np.testing.assert_array_equal(second.explain(TEXT).attribution(), first.explain(TEXT).attribution())
    copy = tmp_path / "copy"
    shutil.copytree(FIXTURES / "tiny-llama", copy)  # the entry is the file's content, wherever it is
    assert Explainer(copy).prepared.directory == first.prepared.directory


def test_changed_external_weights_make_the_entry_stale(cache, tmp_path):
    import onnx

    folder = tmp_path / "external"
    shutil.copytree(FIXTURES / "tiny-bert", folder)
    model = onnx.load(str(folder / "model.onnx"))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    before = _attribution(folder)
    data = folder / "model.onnx.data"
    weights = np.fromfile(data, dtype=np.float32)
    (weights * np.float32(1.5)).tofile(data)  # the same size, in place, other numbers
    rebuilt = Explainer(folder)
    assert not rebuilt.prepared.cached  # stat changed: prepared again, from the new weights
    assert not np.array_equal(rebuilt.explain(TEXT).attribution(), before)


def test_a_damaged_entry_is_prepared_again(cache):
    entry = Explainer(FIXTURES / "tiny-bert").prepared.directory
    segment = sorted(entry.glob("segment_*.onnx"))[0]
    segment.write_bytes(b"\0" * segment.stat().st_size)  # same size, not ONNX
    again = Explainer(FIXTURES / "tiny-bert")
    assert not again.prepared.cached
    np.testing.assert_allclose(again.explain(TEXT).attribution(), _attribution(FIXTURES / "tiny-bert"))
    (entry / "manifest.json").write_text("{")  # a manifest cut short
    assert not Explainer(FIXTURES / "tiny-bert").prepared.cached


def test_an_unwritable_cache_still_explains(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("ALTI_ONNX_CACHE", str(blocker))
    explainer = Explainer(FIXTURES / "tiny-bert")
    assert not explainer.prepared.cached and explainer.explain(TEXT).attribution().sum() == pytest.approx(1.0)
    build = explainer.prepared.directory
    assert build.is_dir()
    del explainer
    import gc

    gc.collect()
    assert not build.exists()  # its private copy goes with it


def test_cache_false_neither_reads_nor_writes_entries(cache):
    Explainer(FIXTURES / "tiny-bert", cache=False)
    assert not cache.exists() or not any(p for p in cache.iterdir() if not p.name.startswith("."))


def test_only_the_most_recently_used_entries_stay(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(prepared_module, "KEEP", 2)
    entries = [prepare(FIXTURES / f"tiny-{arch}" / "model.onnx").directory for arch in ("bert", "roberta")]
    os.utime(entries[0] / "manifest.json", (1, 1))  # bert used long ago
    newest = prepare(FIXTURES / "tiny-electra" / "model.onnx").directory
    assert sorted(p for p in cache.iterdir() if not p.name.startswith(".")) == sorted([entries[1], newest])
    assert prepare(FIXTURES / "tiny-roberta" / "model.onnx").cached


def test_two_processes_publishing_the_same_model_keep_one_entry(cache):
    first = prepare(FIXTURES / "tiny-bert" / "model.onnx")
    building = prepared_module._workspace(cache)
    twin = prepared_module._build(first.source, building, first.directory.name)
    published = prepared_module._publish(twin, first.directory)
    assert published.directory == first.directory and published.cached and not building.exists()
    assert len(twin.segments) == len(first.segments)


def test_a_file_is_hashed_once_while_it_is_unchanged(cache, tmp_path, monkeypatch):
    model = tmp_path / "model.onnx"
    model.write_bytes((FIXTURES / "tiny-bert" / "model.onnx").read_bytes())
    memo = tmp_path / "memo"
    first = prepared_module.file_digest(model, memo)
    import hashlib

    assert first == hashlib.sha256(model.read_bytes()).hexdigest()
    calls = []
    real = hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(a) or real(*a))
    assert prepared_module.file_digest(model, memo) == first
    assert len(calls) == 2  # the fingerprint and its sampled blocks, not the file
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))  # same size, rewritten in place
    monkeypatch.undo()
    assert prepared_module.file_digest(model, memo) == hashlib.sha256(bytes(data)).hexdigest() != first


def _damages(path, rng) -> list[tuple[str, bytes | None]]:
    """Ways to damage one file: random bytes at the same size, one flipped bit, cut short, removed."""
    data = path.read_bytes()
    flipped = bytearray(data)
    if flipped:
        flipped[int(rng.integers(len(flipped)))] ^= 1 << int(rng.integers(8))
    return [("random", rng.integers(0, 256, len(data), dtype=np.uint8).tobytes()), ("bit", bytes(flipped)),
            ("cut", data[: len(data) // 2]), ("removed", None)]


@pytest.mark.parametrize("fixture", ["tiny-bert", "tiny-t5-seq2seq"])
def test_any_damage_to_any_file_of_an_entry_gives_a_fresh_caches_numbers(cache, fixture):
    """Every file an entry serves, damaged every way: the next explanation is identical to one from a
    fresh cache (the entry proves itself wrong and is prepared again), never a different number."""
    fresh = Explainer(FIXTURES / fixture).explain(TEXT)
    reference = fresh.to_record(full=True)
    rng = np.random.default_rng(0)
    entries = sorted(p for p in cache.iterdir() if not p.name.startswith("."))
    tried = 0
    for entry in entries:
        for path in sorted(entry.iterdir()):
            for how, damaged in _damages(path, rng):
                original = path.read_bytes()
                if damaged is None:
                    path.unlink()
                else:
                    path.write_bytes(damaged)
                again = Explainer(FIXTURES / fixture).explain(TEXT)
                assert again.to_record(full=True) == reference, (path.name, how)
                tried += 1
                current = next((e for e in cache.iterdir() if e.name == entry.name), None)
                assert current is not None and (entry / path.name).read_bytes() == original, (path.name, how)
    print(f"{fixture}: {tried} damages, each explained as from a fresh cache")
    assert tried >= 4 * 4


def test_a_digest_memo_pointing_at_another_models_entry_is_not_believed(cache):
    bert = Explainer(FIXTURES / "tiny-bert").explain(TEXT).attribution()
    llama_entry = Explainer(FIXTURES / "tiny-llama").prepared.directory
    for memo in (cache / ".digests").iterdir():  # every remembered digest now names tiny-llama's entry
        memo.write_text(llama_entry.name)
    again = Explainer(FIXTURES / "tiny-bert")
    assert again.prepared.directory != llama_entry
    np.testing.assert_array_equal(again.explain(TEXT).attribution(), bert)
    assert Explainer(FIXTURES / "tiny-llama").prepared.cached  # its entry was left alone


def test_an_encoder_decoder_whose_entry_onnxruntime_cannot_load_is_prepared_again(cache, monkeypatch):
    """A cached entry whose sessions fail to load is discarded and prepared again, once, on the
    encoder-decoder layout too."""
    from alti_onnx.errors import RuntimeFailure
    from alti_onnx.runtime import sessions

    expected = Explainer(FIXTURES / "tiny-t5-seq2seq").explain("the house", "das Haus").to_record(full=True)
    real, failed = sessions.SegmentedSession.__init__, []

    def failing_once(self, prepared, *args, **kwargs):
        if prepared.cached and not failed:
            failed.append(prepared.directory)
            raise RuntimeFailure("onnxruntime could not load the model: damaged")
        real(self, prepared, *args, **kwargs)

    monkeypatch.setattr(sessions.SegmentedSession, "__init__", failing_once)
    again = Explainer(FIXTURES / "tiny-t5-seq2seq")
    assert failed and again.explain("the house", "das Haus").to_record(full=True) == expected


def test_a_build_whose_process_was_killed_is_swept_at_the_next_build(cache):
    import subprocess
    import sys

    Explainer(FIXTURES / "tiny-bert")  # makes the cache folder
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = cache / f".building-{dead.pid}-{prepared_module._HOST}-x1"
    abandoned.mkdir()
    (abandoned / "weights.bin").write_bytes(b"\0" * 4096)
    alive = cache / f".building-{os.getpid()}-{prepared_module._HOST}-x2"
    elsewhere = cache / f".building-{dead.pid}-another_host-x3"  # another machine's build: not judged here
    elsewhere.mkdir()
    alive.mkdir()
    Explainer(FIXTURES / "tiny-llama")  # a build: sweeps what dead processes left
    assert not abandoned.exists() and alive.exists() and elsewhere.exists()
