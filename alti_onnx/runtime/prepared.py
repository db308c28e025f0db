"""The model made ready to explain, kept on disk so that the next run starts at once.

Preparing means: load the graph (weights kept in external data stay there), unfuse fused operators,
find the attention blocks, and split the graph into one segment per layer whose outputs include
that layer's block tensors (``graph_rewrites.split_model``), so that a run can hand each layer's
tensors over and drop them before the next layer runs. On a large model this takes seconds to
minutes; the result is saved under ``<cache>/prepared/<sha256 of the .onnx file>`` and reused.

Weights are never held twice. A model whose weights are inline has them written once into the
entry's ``weights.bin`` (page-aligned: onnxruntime maps them from the file, so a weight two segments
read, a tied embedding, is held once, and no protobuf of weights is parsed at start-up). External
weights are not copied: the segments refer to them beside the original model, and the entry
records their sizes, identities, times and sampled blocks, so a changed weights file makes the
entry stale.

Reading an entry imports neither onnx nor the analysis: a cached start costs onnxruntime's
sessions and little else.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import weakref
import zipfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from alti_onnx.atomic import write_atomically
from alti_onnx.defaults import cache_root
from graph_rewrites.block import AttentionAnalysis, AttentionBlock, UnmatchedSoftmax
from graph_rewrites.paths import require_model_file

from .model_inputs import DeclaredInput

#: Prepared models kept in the cache: the most recently used; older entries are removed.
KEEP = 8
#: Digests remembered for model files (see ``file_digest``), the most recent kept.
KEEP_DIGESTS = 256
#: Unfinished builds (a process killed while preparing) older than this many seconds are removed.
ABANDONED_AFTER_S = 24 * 3600

#: Bumped whenever what a prepared entry holds, or how it is made, changes: older entries are then rebuilt.
FORMAT = 4
_MANIFEST = "manifest.json"
_ARRAYS = "blocks.npz"
_WEIGHTS = "weights.bin"
_DIGESTS = ".digests"
_ARRAY_FIELDS = ("out_proj_weight", "out_proj_bias", "norm_weight", "norm_bias")


@dataclass(frozen=True)
class SegmentFile:
    """One saved segment: its file, the tensors it is fed and the tensors it hands on."""

    path: Path
    inputs: list[str]
    outputs: list[str]


@dataclass
class PreparedModel:
    """What explaining a model needs from its graph, without the graph itself.

    ``weights_dir`` is where the segments' external data is read from (the entry, for weights that
    were inline; the model's own folder, for external ones); ``graph_inputs`` the model's declared
    inputs; ``embedding_rows`` the rows of the token table each integer input indexes (None where
    the graph does not show one); ``cached`` whether this came from an earlier run.
    """

    source: Path
    weights_dir: Path
    analysis: AttentionAnalysis
    graph_inputs: list[DeclaredInput]
    graph_outputs: list[str]
    segments: list[SegmentFile]
    embedding_rows: dict[str, int | None]
    dynamically_quantized: bool
    directory: Path
    external_data: list[str]
    cached: bool = False
    #: the entry folder's inode when it was loaded (``discard`` removes only that folder)
    identity: int | None = None

    def discard(self) -> None:
        """Remove this entry from the cache (a run found it unusable), unless another process has put a
        new entry in its place since it was loaded: that one is left for its own checks."""
        try:
            if self.identity is not None and self.directory.stat().st_ino != self.identity:
                return
            stale = self.directory.with_name(f".stale-{self.directory.name}-{os.getpid()}")
            os.rename(self.directory, stale)
        except OSError:
            return
        shutil.rmtree(stale, ignore_errors=True)


def prepare(onnx_path: str | Path, cache: bool = True) -> PreparedModel:
    """The prepared model of ``onnx_path``: from the cache when an entry for this file exists, else
    made now (and saved for the next run when ``cache`` and the cache folder is writable)."""
    source = require_model_file(onnx_path)  # before hashing it: /dev/zero would be read for ever
    root = cache_root() / "prepared"
    digest, remembered = _digest(source, root / _DIGESTS) if cache else (None, False)
    entry = None if digest is None else root / digest
    if entry is not None:
        found = _load(entry, source)
        if found is not None:
            return found
        # The remembered digest may be what is wrong (a memo pointing at another model's entry): the
        # file is hashed in full before anything is built or published under its name.
        if remembered:
            digest = file_digest(source, root / _DIGESTS, trust_memo=False)
        if root / digest != entry:
            entry = root / digest
            found = _load(entry, source)
            if found is not None:
                return found
    building = _workspace(root if entry is not None else None)
    try:
        prepared = _build(source, building, digest)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if entry is not None and prepared.segments:  # refused models are analysed again next time, not stored
        try:
            published = _publish(prepared, entry)
        except OSError:
            published = None  # the cache cannot take it: this run goes on from its own copy
        if published is not None:
            _evict(root, keep=published.directory)
            return published
    weakref.finalize(prepared, shutil.rmtree, building, True)
    return prepared


def _build(source: Path, directory: Path, digest: str | None) -> PreparedModel:
    """Analyse and split the model into ``directory`` (segments first, the manifest last);
    ``digest`` is the source's SHA-256 (the entry's name), recorded in the manifest."""
    from alti_onnx.runtime.model_inputs import declared_inputs
    from graph_rewrites import analyse_file, is_dynamically_quantized, token_embedding_rows
    from graph_rewrites.model_io import SharedWeights, external_data_files

    analysed = analyse_file(source)
    model, analysis = analysed.model, analysed.analysis
    inputs = declared_inputs(model)
    external = external_data_files(model)
    prepared = PreparedModel(
        source=source,
        weights_dir=source.parent if external else directory,
        analysis=analysis,
        graph_inputs=inputs,
        graph_outputs=[o.name for o in model.graph.output],
        segments=[],
        embedding_rows={i.name: token_embedding_rows(model, i.name) for i in inputs},
        dynamically_quantized=is_dynamically_quantized(model),
        directory=directory,
        external_data=external,
    )
    if analysis.missed or not analysis.blocks:
        return prepared
    with SharedWeights(directory / _WEIGHTS) as weights:
        for number, segment in enumerate(analysed.segments()):
            if not external:  # inline weights go to the entry's weights.bin, each once
                weights.externalize(segment.model)
            path = directory / f"segment_{number:03d}.onnx"
            path.write_bytes(segment.model.SerializeToString())
            prepared.segments.append(SegmentFile(path, segment.inputs, segment.outputs))
    if external:
        (directory / _WEIGHTS).unlink()
    _save_manifest(prepared, source, digest)
    return prepared


def _save_manifest(prepared: PreparedModel, source: Path, digest: str | None) -> None:
    """The manifest, written last: what the entry holds, the source it was made from, the SHA-256 of
    every file it serves and of itself (``_load`` checks them all)."""
    arrays: dict[str, np.ndarray] = {}
    blocks = []
    for block in prepared.analysis.blocks:
        described = {f.name: getattr(block, f.name) for f in fields(block) if f.name not in _ARRAY_FIELDS}
        blocks.append(described)
        for name in _ARRAY_FIELDS:
            value = getattr(block, name)
            if value is not None:
                arrays[f"{block.layer}.{name}"] = value
    np.savez(prepared.directory / _ARRAYS, **arrays)
    manifest = {
        "format": FORMAT,
        "external_data": _stats(source, prepared.external_data),
        "weights": "source" if prepared.external_data else "entry",
        "inputs": [[i.name, i.elem_type, None if i.dims is None else list(i.dims)] for i in prepared.graph_inputs],
        "outputs": prepared.graph_outputs,
        "blocks": blocks,
        "unmatched": [u.summary() for u in prepared.analysis.unmatched],
        "segments": [{"file": s.path.name, "inputs": s.inputs, "outputs": s.outputs,
                      "bytes": s.path.stat().st_size} for s in prepared.segments],
        "embedding_rows": prepared.embedding_rows,
        "dynamically_quantized": prepared.dynamically_quantized,
        "source": {"sha256": digest, **_source_identity(source)},
        "files": {p.name: _sha256_of(p) for p in sorted(prepared.directory.iterdir()) if p.name != _MANIFEST},
    }
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    (prepared.directory / _MANIFEST).write_text(json.dumps(manifest))


def _manifest_digest(manifest: dict) -> str:
    """The SHA-256 of the manifest's content, its own digest left out."""
    content = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def _source_identity(source: Path) -> dict[str, object]:
    """What tells the source apart cheaply: its size and a fingerprint of sampled blocks."""
    size = source.stat().st_size
    return {"size": size, "sampled_sha256": _sampled_digest(source, size)}


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def _proves_itself(entry: Path, manifest: dict, source: Path) -> bool:
    """Whether the entry is whole and is ``source``'s: its manifest unaltered, made from a file of
    this digest (the entry's name), size and sampled content, and every file it serves as written."""
    recorded = manifest.get("source") or {}
    if manifest.get("manifest_sha256") != _manifest_digest(manifest) or recorded.get("sha256") != entry.name:
        return False
    if {key: recorded.get(key) for key in ("size", "sampled_sha256")} != _source_identity(source):
        return False
    files = manifest.get("files")
    return isinstance(files, dict) and all(_sha256_of(entry / name) == digest for name, digest in files.items())


def _load(entry: Path, source: Path) -> PreparedModel | None:
    """The entry's prepared model, or None when it is missing, of another format, damaged (any file
    it serves, or the manifest itself), another model's, or stale (external weights changed since it
    was made)."""
    try:
        manifest = json.loads((entry / _MANIFEST).read_text())
        if manifest.get("format") != FORMAT or not _proves_itself(entry, manifest, source):
            return None
        recorded = manifest["external_data"]
        if recorded != _stats(source, [location for location, *_ in recorded]):
            return None
        segments = [SegmentFile(entry / s["file"], list(s["inputs"]), list(s["outputs"])) for s in manifest["segments"]]
        if any(not s.path.is_file() or s.path.stat().st_size != m["bytes"] for s, m in zip(segments, manifest["segments"])):
            return None
        with np.load(entry / _ARRAYS, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        blocks = [
            AttentionBlock(**described, **{name: arrays.get(f"{described['layer']}.{name}") for name in _ARRAY_FIELDS})
            for described in manifest["blocks"]
        ]
        unmatched = [UnmatchedSoftmax(**u) for u in manifest["unmatched"]]
        inputs = [DeclaredInput(name, int(elem_type), None if dims is None else tuple(dims))
                  for name, elem_type, dims in manifest["inputs"]]
        prepared = PreparedModel(
            source=source,
            weights_dir=source.parent if manifest["weights"] == "source" else entry,
            analysis=AttentionAnalysis(blocks, unmatched),
            graph_inputs=inputs,
            graph_outputs=list(manifest["outputs"]),
            segments=segments,
            embedding_rows=dict(manifest["embedding_rows"]),
            dynamically_quantized=bool(manifest["dynamically_quantized"]),
            directory=entry,
            external_data=[location for location, *_ in recorded],
            cached=True,
            identity=entry.stat().st_ino,
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile):
        return None
    _touch(entry / _MANIFEST)  # its last use, for eviction
    return prepared


def source_digest(prepared: PreparedModel) -> str:
    """The SHA-256 of the graph file a prepared model was made from: its entry's name when it came
    from the cache, else computed (and remembered) once."""
    entry = prepared.directory
    if entry.parent == cache_root() / "prepared" and not entry.name.startswith("."):  # an entry, named by it
        return entry.name
    return file_digest(prepared.source, cache_root() / "prepared" / _DIGESTS)


def weights_identity(prepared: PreparedModel) -> list[list[object]]:
    """Each external data file the model reads, with its size and a fingerprint of sampled blocks:
    what a batch job's identity adds for the weights outside the .onnx (a sibling's weights swapped
    in make it another job). Inline weights are covered by the .onnx file's own identity."""
    return [[location, size, sampled] for location, size, _, _, sampled in _stats(prepared.source, prepared.external_data)]


def _stats(source: Path, locations: list[str]) -> list[list[object]]:
    """Each external data file with its size, file identity, modification time and a fingerprint of
    sampled blocks (a missing one as -1s). Hashing gigabytes of weights would cost seconds at every
    start; this notices a replaced file, and a rewrite in place even within one clock tick unless it
    changes none of the sampled bytes."""
    stats: list[list[object]] = []
    for location in locations:
        path = source.parent / location
        try:
            status = path.stat()
            stats.append([location, status.st_size, status.st_ino, status.st_mtime_ns, _sampled_digest(path, status.st_size)])
        except OSError:
            stats.append([location, -1, -1, -1, ""])
    return stats


#: A file's fingerprint: this many blocks of ``_SAMPLE_BYTES``, evenly spread.
_SAMPLES = 16
_SAMPLE_BYTES = 1 << 16


def _sampled_digest(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for k in range(_SAMPLES):
            handle.seek(max(0, (size - _SAMPLE_BYTES) * k // (_SAMPLES - 1)))
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def file_digest(path: Path, memo: Path | None = None, trust_memo: bool = True) -> str:
    """The SHA-256 of the file (see ``_digest``)."""
    return _digest(path, memo, trust_memo)[0]


def _digest(path: Path, memo: Path | None = None, trust_memo: bool = True) -> tuple[str, bool]:
    """The SHA-256 of the file, and whether it was remembered rather than computed. With ``memo`` (a
    folder), a digest computed before is reused while the file's path, size, identity, times and
    sampled blocks are unchanged: a 500 MB model is not hashed again at every start.
    ``trust_memo=False`` hashes the file and remembers the digest anew (the entry a remembered
    digest named did not hold this file)."""
    status = path.stat()
    seen = None
    if memo is not None:
        fingerprint = json.dumps([str(path.resolve()), status.st_size, status.st_ino, status.st_mtime_ns,
                                  status.st_ctime_ns, _sampled_digest(path, status.st_size)])
        seen = memo / hashlib.sha256(fingerprint.encode()).hexdigest()
        try:
            remembered = seen.read_text()
            if trust_memo and len(remembered) == 64:
                return remembered, True
        except OSError:
            pass
    found = _sha256_of(path)
    if seen is not None:
        try:
            memo.mkdir(parents=True, exist_ok=True)
            write_atomically(seen, found, sync=False)
        except OSError:  # an unwritable cache: hashed again next time
            pass
    return found, False


def _workspace(root: Path | None) -> Path:
    """A fresh folder to build in: inside the cache (so publishing is a rename) when it is writable,
    else a temporary folder."""
    if root is not None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            _sweep_abandoned(root)  # before this build adds its own copy of the weights
            return Path(tempfile.mkdtemp(prefix=f".building-{os.getpid()}-{_HOST}-", dir=root))
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix="alti-onnx-"))


def _publish(built: PreparedModel, entry: Path) -> PreparedModel | None:
    """Move a finished build into place. Another process may have published the same entry first
    (then its copy is kept and ours removed), or a stale entry may be in the way (then it is
    replaced). The build is not proved again: its manifest was written from these very files."""
    building = built.directory
    try:
        os.rename(building, entry)
    except OSError:
        theirs = _load(entry, built.source)
        if theirs is not None:
            shutil.rmtree(building, ignore_errors=True)
            return theirs
        stale = entry.with_name(f".stale-{entry.name}-{os.getpid()}")
        os.rename(entry, stale)
        os.rename(building, entry)
        shutil.rmtree(stale, ignore_errors=True)
    return replace(
        built, directory=entry, weights_dir=built.weights_dir if built.external_data else entry,
        segments=[SegmentFile(entry / s.path.name, s.inputs, s.outputs) for s in built.segments],
        identity=entry.stat().st_ino,
    )


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # a read-only cache is still used
        pass


def _evict(root: Path, keep: Path) -> None:
    """Remove all but the ``KEEP`` most recently used entries (``keep`` always stays), and unfinished
    builds abandoned long ago. Another process using a removed entry has its sessions loaded
    already, or prepares the model again."""
    _sweep_abandoned(root)
    entries = []
    try:
        found = list(root.iterdir())
    except OSError:
        return
    for path in found:
        try:
            if path.is_dir() and not path.name.startswith(".") and path != keep:
                entries.append(((path / _MANIFEST).stat().st_mtime, path))
        except OSError:
            continue
    for _, path in sorted(entries, reverse=True)[KEEP - 1:]:
        shutil.rmtree(path, ignore_errors=True)
    try:  # the digests remembered for files seen: a few bytes each, the newest kept
        memos = sorted(((p.stat().st_mtime, p) for p in (root / _DIGESTS).iterdir()), reverse=True)
    except OSError:
        return
    for _, path in memos[KEEP_DIGESTS:]:
        path.unlink(missing_ok=True)


def _sweep_abandoned(root: Path) -> None:
    """Remove unfinished builds whose process has ended (killed while preparing) or that were left
    long ago, and stale entries a replacement did not finish removing."""
    now = time.time()
    try:
        found = [p for p in root.iterdir() if p.name.startswith((".building-", ".stale-"))]
    except OSError:
        return
    for path in found:
        try:
            if now - path.stat().st_mtime > ABANDONED_AFTER_S or _builder_gone(path.name):
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


#: This machine, in the names of the builds it runs: a cache shared between machines (a network home)
#: has builds whose process this one cannot see, and only its own are judged by their process id.
_HOST = socket.gethostname().replace("-", "_") or "host"


def _builder_gone(name: str) -> bool:
    """Whether a ``.building-PID-HOST-...`` folder of this machine has lost its process (killed while
    preparing): its copy of the weights is removed at once instead of after ``ABANDONED_AFTER_S``."""
    parts = name.split("-")
    if not name.startswith(".building-") or len(parts) < 4 or not parts[1].isdigit() or parts[2] != _HOST:
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process: alive
        return False
    return False
