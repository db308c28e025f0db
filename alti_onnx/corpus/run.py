"""`alti-onnx batch`: explain a whole corpus, streaming JSON lines, resumable after interruption.

Texts are taken in chunks; inside a chunk they are sorted by token length so each onnxruntime
batch pads little, and the chunk's records are written in input order. Memory is bounded by one
onnxruntime run (at most ``batch_size`` texts and ``pairs_per_run`` token pairs) plus the chunk's
finished records. Every input line gets exactly one record, in its place: the explanation, or an
``error`` saying why that text could not be explained (``corpus_input`` reads the lines; a text
that fails inside a batch is run again alone, so one bad text costs only its own record). Records
are strict JSON. ``corpus_output`` makes sure the output belongs to this job and resumes it: the
finished records always form a prefix, so a rerun skips exactly those.
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

from alti_onnx.errors import InputError, RuntimeFailure, SelfCheckError
from alti_onnx.layouts.base import Explainer
from alti_onnx.results.base import ExplanationBase
from alti_onnx.results.logit import LogitQuery
from alti_onnx.results.record import Target, error_record, json_line
from alti_onnx.results.routes import RouteQuery

from .inputs import CorpusRecord, read_records
from .outputs import Job, corpus_output

#: Token pairs one onnxruntime run may hold: its texts times the square of their padded length. The
#: exposed attention probabilities (L * H * S^2 numbers per text) are what grows fastest with
#: length; this budget is 32 texts of 128 tokens or 2 of 512 (about 1.3 GB for all-MiniLM-L6-v2,
#: where 32 texts of 512 tokens took 8.9 GB), and small batches cost no speed at such lengths.
PAIRS_PER_RUN = 32 * 128 * 128

#: Texts per chunk; with ``full`` each record carries 2 L S^2 numbers, so chunks are smaller.
CHUNK_SIZE = 512
FULL_CHUNK_SIZE = 32

#: What one text can fail with (the model itself loaded fine): its own record says so.
TEXT_ERRORS = (InputError, RuntimeFailure, SelfCheckError)


@dataclass(frozen=True)
class CorpusSummary:
    """Records in the output (``total``), left from earlier runs, written now, written as errors now,
    and the first of those errors."""

    total: int
    skipped: int
    written: int
    failed: int
    first_error: str | None = None


def explain_corpus(
    explainer: Explainer,
    input_path: Path,
    output_path: Path | str,
    batch_size: int = 32,
    chunk_size: int | None = None,
    target: Target | None = None,
    full: bool = False,
    on_record: Callable[[int], None] | None = None,
    pairs_per_run: int = PAIRS_PER_RUN,
    max_new_tokens: int = 32,
    words: bool = False,
    logit: dict[str, object] | None = None,
    routes: dict[str, object] | None = None,
) -> CorpusSummary:
    """Explain every input record into ``output_path`` ("-": stdout), resuming where a previous run
    of the same job stopped.

    ``on_record`` is called with the number of records done so far (earlier runs included). A
    record's ``target`` (an encoder-decoder's output) is explained teacher-forced, or the model's
    greedy output (at most ``max_new_tokens``) where the record has none. ``logit`` (the fields of a
    ``results.logit.LogitQuery``) adds each record's logit decomposition; a record's own ``class`` /
    ``target_token`` and ``foil`` take the place of the query's. ``routes`` (the fields of a
    ``results.routes.RouteQuery``) adds each record's routes to its prediction.
    """
    input_path = Path(input_path)
    require_corpus(input_path)
    if chunk_size is None:
        chunk_size = FULL_CHUNK_SIZE if full else CHUNK_SIZE
    options = {"full": full, "target": target, "words": words, **explainer.corpus_options()}
    if logit is not None:
        options["logit"] = dict(logit)
    if routes is not None:
        options["routes"] = dict(routes)
    if explainer.takes_target_text:  # what bounds a generated output
        options["max_new_tokens"] = max_new_tokens
    job = Job.of(input_path, explainer.files.onnx, explainer.files.tokenizer, options)
    with corpus_output(output_path, input_path, job) as out:
        records = read_records(input_path)
        skip = out.done
        for _ in islice(records, skip):
            pass
        written = failed = 0
        first_error = None
        while chunk := list(islice(records, chunk_size)):
            payloads = explain_chunk(explainer, chunk, batch_size, pairs_per_run, target, full, max_new_tokens, words,
                                     logit, routes)
            out.write_chunk([json_line(payload) for payload in payloads])
            for payload in payloads:
                written += 1
                if "error" in payload:
                    failed += 1
                    first_error = first_error or str(payload["error"])
                if on_record is not None:
                    on_record(skip + written)
    return CorpusSummary(skip + written, skip, written, failed, first_error)


def require_corpus(path: Path) -> None:
    """The corpus must be a regular file: a resumed run reads it again from the start."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"input not found: {path}") from None
    except OSError as exc:
        raise InputError(f"input {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise InputError(f"input {path} is not a regular file (a resumable run reads its corpus twice)")


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


def explain_chunk(
    explainer: Explainer, chunk: list[CorpusRecord], batch_size: int, pairs_per_run: int,
    target: Target | None, full: bool, max_new_tokens: int = 32, words: bool = False,
    logit: dict[str, object] | None = None, routes: dict[str, object] | None = None,
) -> list[dict[str, object]]:
    """Output records for a chunk, in input order; texts batched by similar token length."""
    payloads: dict[int, dict[str, object]] = {}
    valid: list[tuple[int, CorpusRecord]] = []
    for record in chunk:
        if record.error is not None:
            payloads[record.index] = _error(record, record.error)
            continue
        if record.target is not None and not explainer.takes_target_text:
            payloads[record.index] = _error(record, f"line {record.line}: a 'target' (the output to explain) is for "
                                                    "encoder-decoder exports")
            continue
        if logit is None and (record.logit_target is not None or record.foil is not None):
            payloads[record.index] = _error(record, f"line {record.line}: 'class', 'target_token' and 'foil' choose the "
                                                    "logit explained: run batch with --logit")
            continue
        try:
            valid.append((explainer.text_encoder.token_count(record.text), record))
        except InputError as exc:
            payloads[record.index] = _error(record, f"line {record.line}: {exc}")
    valid.sort(key=lambda pair: pair[0])
    for run in run_groups([length for length, _ in valid], batch_size, pairs_per_run):
        group = [valid[k][1] for k in run]
        for record, outcome in zip(group, _explain_records(explainer, group, target, full, max_new_tokens, logit,
                                                            routes)):
            payloads[record.index] = (
                _record(record, outcome, target, full, words) if isinstance(outcome, ExplanationBase)
                else _error(record, f"line {record.line}: {outcome}")
            )
    return [payloads[r.index] for r in chunk]


def _explain_records(explainer: Explainer, records: list[CorpusRecord], target: Target | None, full: bool,
                     max_new_tokens: int, logit: dict[str, object] | None = None,
                     routes: dict[str, object] | None = None) -> list[ExplanationBase | str]:
    """Each record's explanation (every layer's matrices with ``full``, else the target's row alone), or
    why it failed: a batch that fails is run again one record at a time."""
    targets = None if all(r.target is None for r in records) else [r.target for r in records]
    extra: dict[str, object] = {} if logit is None else {"logit": [_query(logit, r) for r in records]}
    if routes is not None:
        extra["routes"] = RouteQuery(**routes)
    try:
        return explainer.explain([r.text for r in records], targets, full=full,
                                 targets=None if target is None else [target], max_new_tokens=max_new_tokens, **extra)
    except TEXT_ERRORS as exc:
        if len(records) == 1:
            return [str(exc)]
    return [outcome for record in records
            for outcome in _explain_records(explainer, [record], target, full, max_new_tokens, logit, routes)]


def _query(logit: dict[str, object], record: CorpusRecord) -> LogitQuery:
    """The record's logit query: the run's, with the record's own class or token and foil in their place."""
    query = LogitQuery(**logit)
    if record.logit_target is not None:
        query = replace(query, target=record.logit_target, kind=record.logit_kind)
    if record.foil is not None:
        query = replace(query, foil=record.foil)
    return query


def _record(record: CorpusRecord, explanation: ExplanationBase, target: Target | None, full: bool,
            words: bool) -> dict[str, object]:
    try:
        return {"index": record.index, "id": record.id, **explanation.to_record(target, full=full, words=words)}
    except (IndexError, ValueError) as exc:
        return _error(record, f"line {record.line}: {exc}")


def _error(record: CorpusRecord, message: str) -> dict[str, object]:
    return error_record(record.index, record.id, record.line, message)
