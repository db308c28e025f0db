"""Export a Hugging Face checkpoint to ONNX with optimum (needs the ``export`` extra).

Everything heavy (torch, transformers, optimum) is imported inside :func:`export_model`, so
importing this module never pulls in PyTorch.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ExportError", "ExportUnavailableError", "export_model"]


class ExportError(Exception):
    """optimum could not export the checkpoint (its message, one line)."""


class ExportUnavailableError(Exception):
    """Raised when optimum / torch / transformers are not installed."""

    def __init__(self, msg: str = "export needs the 'export' extra: pip install 'alti-onnx[export]'"):
        super().__init__(msg)


def export_model(
    model_dir: str | Path, out_dir: str | Path, task: str | None = None, *, library: str | None = None
) -> Path:
    """Export the Hugging Face model in ``model_dir`` (a local dir or hub id) to ``out_dir``.

    ``task`` is passed to optimum (``"feature-extraction"``, ``"text-classification"``, ...);
    ``None`` lets optimum infer it. ``library`` (``"transformers"``, ``"sentence_transformers"``, ...)
    likewise; note that optimum picks ``sentence_transformers`` for a dir with a ``modules.json``,
    which exports pooled outputs instead of ``last_hidden_state``. ``out_dir`` ends up with ``model.onnx``, ``config.json`` and
    ``tokenizer.json``. Returns ``out_dir``.
    """
    try:
        import torch  # noqa: F401
        from optimum.exporters.onnx import main_export
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExportUnavailableError() from exc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        main_export(
            str(model_dir),
            output=out_dir,
            task=task or "auto",
            device="cpu",
            library_name=library,
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:  # optimum's and transformers' refusals
        lines = str(exc).strip().splitlines()
        raise ExportError(f"optimum could not export {model_dir}: {lines[0] if lines else type(exc).__name__}") from None
    if not (out_dir / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
        if not getattr(tok, "is_fast", False):
            raise RuntimeError(f"no fast tokenizer (tokenizer.json) available for {model_dir}")
        tok.save_pretrained(str(out_dir))
    return out_dir
