"""Where ``batch`` writes: a file that only the same job ever writes to, resumed after any
interruption, or a stream (stdout, a pipe) written once.

A run to a regular file keeps a sidecar ``<output>.alti-job.json`` that identifies its job: the
corpus (a hash of its first MiB, so appending texts is the same job and editing them is not), the
model and tokenizer files, and the options that shape the records. A run refuses an output that
exists without that sidecar (it is somebody else's file), one whose sidecar names another job, and
one that is its own input. It holds an exclusive lock (fcntl) on the output while it writes, so a
second process on the same output stops at once. Records are appended, flushed and synced chunk
by chunk, so a run killed at any moment leaves complete records, at most a torn last line; the
next run cuts that line, skips the finished records and goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

from alti_onnx.atomic import write_atomically
from alti_onnx.errors import OutputPathError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None  # type: ignore[assignment]

SIDECAR_SUFFIX = ".alti-job.json"
#: How much of the corpus (and of the model file) the job's identity hashes.
PREFIX_BYTES = 1 << 20
#: Bumped with the record (results.record.RECORD_VERSION): a resumed output never mixes two schemas.
FORMAT = "alti-onnx batch 2"


@dataclass(frozen=True)
class Job:
    """What makes two runs the same job: the corpus, the model, the tokenizer, the options."""

    corpus: dict
    model: dict
    tokenizer: dict
    options: dict

    @classmethod
    def of(cls, corpus: Path, model: Path, tokenizer: Path, options: dict) -> Job:
        prefix = min(PREFIX_BYTES, corpus.stat().st_size)
        return cls(
            corpus={"path": str(corpus.resolve()), "prefix_bytes": prefix, "prefix_sha256": _sha256(corpus, prefix)},
            model={"path": str(model.resolve()), "size": model.stat().st_size, "head_sha256": _sha256(model, PREFIX_BYTES)},
            tokenizer={"path": str(tokenizer.resolve()), "sha256": _sha256(tokenizer, None)},
            options=dict(options),
        )

    def difference(self, recorded: dict) -> str | None:
        """Why the job ``recorded`` in a sidecar is not this one (None: it is)."""
        if recorded.get("format") != FORMAT:
            return f"its sidecar is not an {FORMAT} record"
        corpus = recorded.get("corpus", {})
        prefix = corpus.get("prefix_bytes")
        if not isinstance(prefix, int) or _sha256(Path(self.corpus["path"]), prefix) != corpus.get("prefix_sha256"):
            return f"its corpus was another file (the first {prefix} bytes of {corpus.get('path')} do not match this input)"
        model = recorded.get("model", {})
        if (model.get("size"), model.get("head_sha256")) != (self.model["size"], self.model["head_sha256"]):
            return f"its model was another one ({model.get('path')})"
        if recorded.get("tokenizer", {}).get("sha256") != self.tokenizer["sha256"]:
            return f"its tokenizer was another one ({recorded.get('tokenizer', {}).get('path')})"
        earlier = recorded.get("options", {})
        for name in [*self.options, *(name for name in earlier if name not in self.options)]:
            before, value = earlier.get(name), self.options.get(name)  # an option given once and dropped differs too
            if before != value:
                return f"it ran with {name}={before!r}, this run has {name}={value!r}"
        return None

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1, allow_nan=False) + "\n"


@dataclass
class Output:
    """An open output: where records go, and how many records a previous run of the job finished."""

    handle: IO[str]
    done: int
    resumable: bool

    def write_chunk(self, lines: list[str]) -> None:
        self.handle.write("".join(line + "\n" for line in lines))
        self.handle.flush()
        if self.resumable:
            os.fsync(self.handle.fileno())


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


@contextlib.contextmanager
def corpus_output(path: str | Path, corpus: Path, job: Job) -> Iterator[Output]:
    """The output of ``job`` at ``path`` ("-" is stdout), locked and ready to append to."""
    if str(path) == "-":
        yield Output(sys.stdout, 0, resumable=False)
        return
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"--output {path} is a directory")
    if path.exists() and not path.is_file():  # a pipe, a terminal, /dev/stdout: written once, never resumed
        with open(path, "w", encoding="utf-8") as stream:
            yield Output(stream, 0, resumable=False)
        return
    if path.exists() and _same_file(path, corpus):
        raise OutputPathError(f"--output {path} is the input corpus itself; write the results to another file")
    _check_owner(path, job)  # before anything is created or locked: refuse without touching the file
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        _lock(handle, path)
        _check_owner(path, job)  # again, now that no other run can change it
        _write_sidecar(path, job)
        done = completed_prefix(path)
        handle.seek(0, os.SEEK_END)
        yield Output(handle, done, resumable=True)


def _check_owner(path: Path, job: Job) -> None:
    """Refuse an output that holds somebody else's data or another job's records (an empty or
    missing file has nothing to lose)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    sidecar = sidecar_of(path)
    if not sidecar.exists():
        raise OutputPathError(
            f"{path} exists and is no output of alti-onnx batch (no {sidecar.name} beside it): "
            "choose another --output, or remove it yourself"
        )
    try:
        recorded = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputPathError(f"{sidecar} cannot be read ({exc}); remove it and {path} to start over") from None
    reason = job.difference(recorded) if isinstance(recorded, dict) else "its sidecar is not a job record"
    if reason is not None:
        raise OutputPathError(f"{path} holds the results of another batch job: {reason}; choose another --output")


def _write_sidecar(path: Path, job: Job) -> None:
    """The job's record beside its output (atomically), unless the output already holds its records."""
    sidecar = sidecar_of(path)
    if sidecar.exists() and path.stat().st_size > 0:
        return
    write_atomically(sidecar, job.to_json())


def _lock(handle: IO[str], path: Path) -> None:
    if fcntl is None:  # pragma: no cover
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OutputPathError(f"another alti-onnx batch is writing {path}; wait for it, or choose another --output") from None


def completed_prefix(path: Path) -> int:
    """How many records a previous run finished; a torn last line is cut off the file."""
    done, keep = 0, 0
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                break
            if not isinstance(record, dict) or record.get("index") != done:
                found = record.get("index") if isinstance(record, dict) else type(record).__name__
                raise OutputPathError(f"{path} is damaged: record {done + 1} should have index {done}, it has {found!r}")
            done, keep = done + 1, keep + len(raw)
    if keep != path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(keep)
    return done


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _sha256(path: Path, limit: int | None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        remaining = limit
        while remaining is None or remaining > 0:
            chunk = handle.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            digest.update(chunk)
            if remaining is not None:
                remaining -= len(chunk)
    return digest.hexdigest()
