"""What a sentence encoder's "sentence" is: sentence-transformers models are mean-pooled, so their
sentence embedding is the average of every position's output, not the first position's.

Read from the files a sentence-transformers model (and its export) carries: ``modules.json`` naming
a Pooling module, whose folder (``1_Pooling``) holds ``config.json`` with the pooling mode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pooling:
    """A pooling the model's files declare: ``mode`` ("mean", "cls", "max", ...) and the file that says so."""

    mode: str
    source: Path


def declared_pooling(folder: Path) -> Pooling | None:
    """The pooling of the sentence-transformers model in ``folder``, or None when it declares none
    (any file that cannot be read counts as none: the default target is then position 0)."""
    candidates = [folder / "1_Pooling" / "config.json"]
    modules = folder / "modules.json"
    try:
        listed = json.loads(modules.read_text()) if modules.is_file() else []
        candidates = [folder / m["path"] / "config.json" for m in listed
                      if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling") and m.get("path")] or candidates
    except (OSError, ValueError, TypeError):
        pass
    for config in candidates:
        try:
            settings = json.loads(config.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(settings, dict):
            continue
        for mode in ("mean", "cls", "max", "lasttoken", "weightedmean"):
            if settings.get(f"pooling_mode_{mode}_tokens") is True or settings.get("pooling_mode") == mode:
                return Pooling(mode, config)
    return None
