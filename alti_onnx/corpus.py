"""`alti-onnx batch`: explain a whole corpus, streaming JSON lines, resumable after interruption.

Input lines are JSON strings, JSON objects with a ``text`` (and optional ``id``), or plain text.
Texts are taken in chunks; inside a chunk they are sorted by token length so each onnxruntime
batch pads little, and the chunk's records are written in input order. Memory is bounded by
the chunk. Output lines carry the input ``index``; because records are written in order, the
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
    chunk_size: int = 512,
    target: int | None = None,
    full: bool = False,
    on_record: Callable[[int], None] | None = None,
) -> CorpusSummary:
    """Explain every input record into ``output_path``, resuming where a previous run stopped.

    ``on_record`` is called with the number of records done so far (earlier runs included).
    """
    skip = completed_prefix(output_path)
    records = read_records(input_path)
    for _ in islice(records, skip):
        pass
    written = failed = 0
    with open(output_path, "a", encoding="utf-8") as out:
        while chunk := list(islice(records, chunk_size)):
            for payload in _explain_chunk(explainer, chunk, batch_size, target, full):
                out.write(json.dumps(payload) + "\n")
                written += 1
                failed += "error" in payload
                if on_record is not None:
                    on_record(skip + written)
            out.flush()
            os.fsync(out.fileno())
    return CorpusSummary(skip + written, skip, written, failed)


def _explain_chunk(
    explainer: Explainer, chunk: list[CorpusRecord], batch_size: int, target: int | None, full: bool
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
    for start in range(0, len(valid), batch_size):
        group = [record for _, record in valid[start : start + batch_size]]
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
