"""The ONNX default operator domain, which exporters spell "" or "ai.onnx": one test for it."""

from __future__ import annotations

DEFAULT_SPELLINGS = ("", "ai.onnx")


def canonical_domain(domain: str) -> str:
    """``domain`` with the default domain spelled "" (other domains as they are)."""
    return "" if domain in DEFAULT_SPELLINGS else domain


def is_default_domain(domain: str) -> bool:
    """Whether ``domain`` is the default ONNX domain, however spelled."""
    return domain in DEFAULT_SPELLINGS
