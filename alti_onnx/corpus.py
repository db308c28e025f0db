"""`alti-onnx batch`: explain a whole corpus, streaming JSON lines, resumable after interruption.

Input lines are JSON strings, JSON objects with a ``text`` (and optional ``id``), or plain text.
Texts are taken in chunks; inside a chunk they are sorted by token length so each onnxruntime
batch pads little, and the chunk's records are written in input order. Memory is bounded by
one onnxruntime run (at most ``batch_size`` texts and ``pairs_per_run`` token pairs) plus the
chunk's finished records. Output lines carry the input ``index``; because records are written in order, the
completed ones always form a prefix, so a rerun skips exactly those (a torn last line from the
interruption is cut off first): nothing is lost or duplicated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from .errors import AltiOnnxError, InputError
from .explainer import Explainer
from .explanation import Explanation


#: Token pairs one onnxruntime run may hold: its texts times the square of their padded length. The
#: exposed attention probabilities (L * H * S^2 numbers per text) are what grows fastest with
#: length; this budget is 32 texts of 128 tokens or 2 of 512 (about 1.3 GB for all-MiniLM-L6-v2,
#: where 32 texts of 512 tokens took 8.9 GB), and small batches cost no speed at such lengths.
PAIRS_PER_RUN = 32 * 128 * 128

#: Texts per chunk; with ``full`` each record carries 2 L S^2 numbers, so chunks are smaller.
CHUNK_SIZE = 512
FULL_CHUNK_SIZE = 32


@dataclass(frozen=True)
class CorpusRecord:
    """One input text and where it came from."""

    index: int
    text: str
    id: object = None


@dataclass(frozen=True)
class CorpusSummary:
    total: int
    skipped: int
    written: int
    failed: int


def read_records(path: Path) -> Iterator[CorpusRecord]:
    """Records from a .jsonl (strings or objects with 'text') or a plain text file, in order."""
    with open(path, encoding="utf-8") as handle:
        for index, line in enumerate(handle):
            line = line.rstrip("\n")
            if path.suffix in (".jsonl", ".json"):
                try:
                    value = json.loads(line) if line.strip() else ""
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{index + 1} is not JSON: {exc.msg}") from None
                if isinstance(value, dict):
                    yield CorpusRecord(index, str(value.get("text", "")), value.get("id"))
                else:
                    yield CorpusRecord(index, str(value))
            else:
                yield CorpusRecord(index, line)


def completed_prefix(path: Path) -> int:
    """How many records a previous run finished; a torn last line is cut off the file."""
    if not path.exists():
        return 0
    done, keep = 0, 0
    with open(path, "rb") as handle:
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                record = json.loads(raw)
            except json.JSONDecodeError:
                break
            if record.get("index") != done:
                raise AltiOnnxError(f"{path} is not a previous output of this corpus (record {done} has index {record.get('index')})")
            done, keep = done + 1, keep + len(raw)
    if keep != path.stat().st_size:
        with open(path, "r+b") as handle:
            handle.truncate(keep)
    return done


def explain_corpus(
    explainer: Explainer,
    input_path: Path,
    output_path: Path,
    batch_size: int = 32,
    chunk_size: int | None = None,
    target: int | None = None,
    full: bool = False,
    on_record: Callable[[int], None] | None = None,
    pairs_per_run: int = PAIRS_PER_RUN,
) -> CorpusSummary:
    """Explain every input record into ``output_path``, resuming where a previous run stopped.

    ``on_record`` is called with the number of records done so far (earlier runs included).
    """
    if chunk_size is None:
        chunk_size = FULL_CHUNK_SIZE if full else CHUNK_SIZE
    skip = completed_prefix(output_path)
    records = read_records(input_path)
    for _ in islice(records, skip):
        pass
    written = failed = 0
    with open(output_path, "a", encoding="utf-8") as out:
        while chunk := list(islice(records, chunk_size)):
            for payload in _explain_chunk(explainer, chunk, batch_size, pairs_per_run, target, full):
                out.write(json.dumps(payload) + "\n")
                written += 1
                failed += "error" in payload
                if on_record is not None:
                    on_record(skip + written)
            out.flush()
            os.fsync(out.fileno())
    return CorpusSummary(skip + written, skip, written, failed)


def run_groups(lengths: list[int], batch_size: int, pairs_per_run: int) -> list[range]:
    """Split ascending token lengths into consecutive onnxruntime runs: each at most ``batch_size``
    texts and, padded to its longest, at most ``pairs_per_run`` token pairs (a text over the budget
    on its own still gets a run)."""
    groups: list[range] = []
    start = 0
    for k in range(1, len(lengths)):
        size = k - start + 1  # the run [start, k] if text k joined it
        if size > batch_size or size * lengths[k] ** 2 > pairs_per_run:
            groups.append(range(start, k))
            start = k
    if lengths:
        groups.append(range(start, len(lengths)))
    return groups


def _explain_chunk(
    explainer: Explainer, chunk: list[CorpusRecord], batch_size: int, pairs_per_run: int, target: int | None,
    full: bool,
) -> list[dict[str, object]]:
    """Output records for a chunk, in input order; texts batched by similar token length."""
    lines: dict[int, dict[str, object]] = {}
    valid: list[tuple[int, CorpusRecord]] = []
    for record in chunk:
        try:
            length = len(explainer.encoder.encode([record.text]).input_ids[0])
            valid.append((length, record))
        except InputError as exc:
            lines[record.index] = {"index": record.index, "id": record.id, "error": str(exc)}
    valid.sort(key=lambda pair: pair[0])
    for run in run_groups([length for length, _ in valid], batch_size, pairs_per_run):
        group = [valid[k][1] for k in run]
        explanations = explainer.explain([r.text for r in group])
        for record, explanation in zip(group, explanations):
            lines[record.index] = _record(record, explanation, target, full)
    return [lines[r.index] for r in chunk]


def _record(record: CorpusRecord, explanation: Explanation, target: int | None, full: bool) -> dict[str, object]:
    target = explanation.default_target if target is None else target
    payload: dict[str, object] = {
        "index": record.index,
        "id": record.id,
        "tokens": explanation.tokens,
        "input_ids": explanation.input_ids,
        "target": target,
        "attribution": explanation.attribution(target).tolist(),
        "reconstruction_error": explanation.reconstruction_error.tolist(),
    }
    if explanation.prediction is not None:
        payload["prediction"] = {"label": explanation.prediction.label, "probability": explanation.prediction.probability}
    if full:
        payload["contributions"] = explanation.contributions.tolist()
        payload["rollout"] = explanation.rollout.tolist()
    return payload
