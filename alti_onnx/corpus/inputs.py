"""Reading a corpus for ``batch``: every line becomes a record, the bad ones a record with an error.

Lines are split on ``\\n`` only (a lone ``\\r`` inside a line is text; a ``\\r\\n`` ending is dropped),
read as bytes with a bounded length and decoded as strict UTF-8. A ``.jsonl`` / ``.json`` /
``.ndjson`` file (any case) holds one JSON value per line: a string, or an object with a string
``text`` and an optional ``id`` (any JSON value); strict JSON, so ``NaN`` and ``Infinity`` are
errors. Any other file is plain text, one text per line. A line that cannot give a text gets a
record with ``error`` saying why and where, in its place: one bad line never stops a corpus.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: The longest line read (bytes); a longer one becomes an error record and is skipped.
MAX_LINE_BYTES = 16 * 1024 * 1024
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class CorpusRecord:
    """One input line: its 0-based ``index``, its text and id, or why it has no text (``error``)."""

    index: int
    text: str | None = None
    id: object = None
    error: str | None = None
    target: str | None = None  #: an encoder-decoder's output to explain (``{"text": ..., "target": ...}``)
    #: with ``batch --logit``: the record's own class (``"class"``) or next token (``"target_token"``), and ``"foil"``
    logit_target: str | int | None = None
    foil: str | int | None = None
    logit_kind: str | None = None  #: "class" or "token": which key the record used

    @property
    def line(self) -> int:
        return self.index + 1


def is_json_lines(path: Path) -> bool:
    return path.suffix.lower() in JSON_SUFFIXES


def read_records(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[CorpusRecord]:
    """Every line of ``path`` as a record, in order."""
    json_lines = is_json_lines(path)
    with open(path, "rb") as handle:
        for index, (raw, error) in enumerate(_lines(handle, max_line_bytes)):
            if error is not None:
                yield CorpusRecord(index, error=f"line {index + 1}: {error}")
                continue
            yield _record(index, raw, json_lines)


def count_lines(path: Path) -> int:
    """How many records ``read_records`` yields (for progress), without decoding anything."""
    count, last = 0, b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def _lines(handle: BinaryIO, limit: int) -> Iterator[tuple[bytes, str | None]]:
    """(line without its ending, None), or (b"", why) for a line over ``limit`` bytes."""
    while raw := handle.readline(limit + 1):
        if len(raw) > limit and not raw.endswith(b"\n"):
            while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass  # skip the remainder of the overlong line
            yield b"", f"longer than {limit:,} bytes"
            continue
        if raw.endswith(b"\n"):
            raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
        yield raw, None


def _record(index: int, raw: bytes, json_lines: bool) -> CorpusRecord:
    where = f"line {index + 1}"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return CorpusRecord(index, error=f"{where} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})")
    if not json_lines:
        return _checked(index, line, None)
    if not line.strip():
        return CorpusRecord(index, error=f"{where} is empty")
    try:
        value = json.loads(line, parse_constant=_no_constants)
    except ValueError as exc:
        return CorpusRecord(index, error=f"{where} is not JSON: {exc}")
    if isinstance(value, str):
        return _checked(index, value, None)
    if not isinstance(value, dict):
        return CorpusRecord(index, error=f"{where}: expected a JSON string or an object with a 'text', got {_kind(value)}")
    if "text" not in value:
        return CorpusRecord(index, id=value.get("id"), error=f"{where}: the object has no 'text'")
    if not isinstance(value["text"], str):
        return CorpusRecord(index, id=value.get("id"), error=f"{where}: 'text' must be a string, got {_kind(value['text'])}")
    target = value.get("target")
    if target is not None and not isinstance(target, str):
        return CorpusRecord(index, id=value.get("id"), error=f"{where}: 'target' must be a string, got {_kind(target)}")
    logit = {key: value.get(key) for key in ("class", "target_token", "foil")}
    if logit["class"] is not None and logit["target_token"] is not None:
        return CorpusRecord(index, id=value.get("id"), error=f"{where}: 'class' and 'target_token' cannot go together")
    for key, given in logit.items():
        if given is not None and (isinstance(given, bool) or not isinstance(given, (str, int))):
            return CorpusRecord(index, id=value.get("id"),
                                error=f"{where}: '{key}' must be a string or an integer, got {_kind(given)}")
    kind = "class" if logit["class"] is not None else "token" if logit["target_token"] is not None else None
    chosen = logit["class"] if logit["class"] is not None else logit["target_token"]
    return _checked(index, value["text"], value.get("id"), target, chosen, logit["foil"], kind)


def _checked(index: int, text: str, record_id: object, target: str | None = None,
             logit_target: str | int | None = None, foil: str | int | None = None,
             logit_kind: str | None = None) -> CorpusRecord:
    """A text that is Unicode throughout (JSON can spell lone surrogates, which encode to nothing)."""
    named = [(what, v) for what, v in (("class or target_token", logit_target), ("foil", foil)) if isinstance(v, str)]
    for what, value in (("text", text), ("target", target or ""), *named):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return CorpusRecord(index, id=record_id, error=f"line {index + 1}: the {what} holds a lone surrogate "
                                                           f"(\\u{ord(value[exc.start]):04x}), not Unicode text")
    return CorpusRecord(index, text, record_id, target=target, logit_target=logit_target, foil=foil,
                        logit_kind=logit_kind)


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _kind(value: object) -> str:
    return {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "an array",
            dict: "an object", str: "a string"}.get(type(value), type(value).__name__)
