"""Export a Hugging Face checkpoint to ONNX with optimum (needs the ``export`` extra).

Everything heavy (torch, transformers, optimum) is imported inside :func:`export_model`, so
importing this module never pulls in PyTorch.
"""

from __future__ import annotations

import shutil
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

    A model whose scaled-dot-product attention would compute something else than its eager
    attention (Gemma 2's soft-capped scores: SDPA skips the capping) is loaded with eager attention
    and exported from that, so the ONNX model is the real one.
    """
    try:
        import torch  # noqa: F401
        from optimum.exporters.onnx import main_export
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ExportUnavailableError() from exc

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if _needs_eager_attention(model_dir):
            _export_from_eager(model_dir, out_dir, task, library)
        else:
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
    copy_pooling_files(Path(model_dir), out_dir)
    if not (out_dir / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
        if not getattr(tok, "is_fast", False):
            raise RuntimeError(f"no fast tokenizer (tokenizer.json) available for {model_dir}")
        tok.save_pretrained(str(out_dir))
    return out_dir


def _needs_eager_attention(model_dir: str | Path) -> bool:
    """Whether the model's attention soft-caps its scores, which transformers' SDPA path leaves out."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError):  # main_export reports an unreadable model in its own words
        return False
    configs = [config, getattr(config, "text_config", None)]
    return any(getattr(c, "attn_logit_softcapping", None) for c in configs if c is not None)


def _export_from_eager(model_dir: str | Path, out_dir: Path, task: str | None, library: str | None) -> None:
    """optimum's export of the model loaded with ``attn_implementation="eager"``."""
    from optimum.exporters.onnx import onnx_export_from_model
    from optimum.exporters.tasks import TasksManager

    library = library or "transformers"
    if task in (None, "auto"):
        task = TasksManager.infer_task_from_model(str(model_dir), library_name=library)
    model = TasksManager.get_model_from_task(
        task, str(model_dir), framework="pt", library_name=library, device="cpu", attn_implementation="eager"
    )
    onnx_export_from_model(model, out_dir, task=task)


#: A sentence-transformers model's description of its pooling, kept beside the export so that
#: ``explain`` knows the sentence is the mean of the positions (alti_onnx.runtime.pooling).
POOLING_FILES = ("modules.json", "1_Pooling/config.json", "sentence_bert_config.json")


def copy_pooling_files(model_dir: Path, out_dir: Path) -> None:
    """Copy the pooling description (``POOLING_FILES``) of a local model directory beside its export."""
    for name in POOLING_FILES:
        source = model_dir / name
        if source.is_file() and not (out_dir / name).exists():
            (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, out_dir / name)
