"""The one record: what ``explain --json``, ``batch`` and Ray write for an explanation (docs/records.md).

Every explanation class builds its record with ``to_record``; this module holds what the layouts
share: the schema version, the typed target, the error record and the strict-JSON line.
"""

from __future__ import annotations

import json
from typing import Literal, Union

#: Bumped whenever a key of the record changes meaning or goes away (docs/records.md).
RECORD_VERSION = 1

#: A target: a token position (negative counts from the end), or "mean", the average of every
#: position (what a mean-pooled sentence encoder's embedding is made of).
Target = Union[int, Literal["mean"]]
MEAN: Literal["mean"] = "mean"


def parse_target(value: object) -> Target | None:
    """A target as the user spelled it (an int, a numeric string, "mean", or None) as a ``Target``;
    anything else is a ValueError naming what a target is."""
    if value is None or value == MEAN:
        return value  # type: ignore[return-value]
    if isinstance(value, bool):
        raise ValueError(f"a target is a token position or 'mean', got {value!r}")
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    raise ValueError(f"a target is a token position or 'mean', got {value!r}")


def target_json(target: Target) -> int | str:
    """A target as JSON writes it: "mean", or a plain int (not a NumPy integer)."""
    return target if target == MEAN else int(target)


def error_record(index: int, record_id: object, line: int, message: str) -> dict[str, object]:
    """The record of an input that could not be explained: where it was, and why."""
    return {"record_version": RECORD_VERSION, "index": index, "id": record_id, "line": line, "error": message}


def json_line(payload: dict[str, object]) -> str:
    """Strict JSON (no NaN or Infinity); a record that cannot be becomes an error record."""
    try:
        return json.dumps(payload, allow_nan=False)
    except ValueError:  # the ids come from strict JSON, so only the numbers can be at fault
        line = int(payload["index"]) + 1
        return json.dumps(error_record(int(payload["index"]), payload["id"], line,
                                       f"line {line}: the explanation holds NaN or Infinity"))
