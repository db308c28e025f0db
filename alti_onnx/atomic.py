"""Files written whole or not at all: a reader (or a run killed halfway) never sees a partial file."""

from __future__ import annotations

import os
from pathlib import Path


PARTIAL_SUFFIX = ".partial"


def is_partial(name: str) -> bool:
    """Whether a file name is one ``write_atomically`` writes before its rename (left by a killed process)."""
    return name.startswith(".") and name.endswith(PARTIAL_SUFFIX)


def write_atomically(path: Path, text: str, sync: bool = True) -> None:
    """``text`` into ``path`` through a temporary file of this process beside it, renamed into place
    (synced to disk first with ``sync``: what a resumed run trusts must survive a crash)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            handle.write(text)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
