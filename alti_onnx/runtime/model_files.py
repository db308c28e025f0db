"""Where a model's files are (``locate_model``), and reading the files beside it (config.json,
tokenizer_config.json, tokenizer.json) with bounds
and one-line errors: a device, a directory, a huge or corrupt file is refused before it is read."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

from alti_onnx.errors import ModelPathError

#: The largest JSON side file read (config.json, tokenizer_config.json).
MAX_CONFIG_BYTES = 16 * 1024 * 1024
#: The largest tokenizer.json read (real ones are a few MB; the largest vocabularies tens of MB).
MAX_TOKENIZER_BYTES = 1024 * 1024 * 1024


def require_regular(path: Path, what: str, max_bytes: int | None = None) -> None:
    """``path`` is a regular file of at most ``max_bytes`` (not a device, a pipe, a directory)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ModelPathError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ModelPathError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelPathError(f"{what} {path} is not a regular file")
    if max_bytes is not None and info.st_size > max_bytes:
        raise ModelPathError(f"{what} {path} is {info.st_size:,} bytes, more than the {max_bytes:,} read")


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from a side file; a file that is not one is a ModelPathError naming it."""
    require_regular(path, what, MAX_CONFIG_BYTES)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelPathError(f"{what} {path} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ModelPathError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ModelPathError(f"{what} {path} holds JSON but not an object")
    return value


#: What optimum names the two halves of a text2text-generation export.
ENCODER_FILE, DECODER_FILE = "encoder_model.onnx", "decoder_model.onnx"
#: Merged decoders (an If over the cache) are refused: the plain decoder is what ALTI+ reads.
MERGED_DECODER_FILE = "decoder_model_merged.onnx"


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's graphs, tokenizer and config live.

    ``graphs`` maps each graph's role to its file: ``{"model": ...}`` for a model in one graph,
    ``{"encoder": ..., "decoder": ...}`` for an encoder-decoder export. The roles are what picks
    the explainer's layout (``alti_onnx.layouts``).
    """

    graphs: dict[str, Path]
    tokenizer: Path
    config: Path

    @property
    def onnx(self) -> Path:
        """The graph whose outputs are the model's prediction: the model, or the decoder."""
        return self.graphs["decoder"] if "decoder" in self.graphs else self.graphs["model"]

    @property
    def folder(self) -> Path:
        return self.onnx.parent


def is_encoder_decoder_export(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an encoder-decoder export."""
    path = Path(path)
    return path.is_dir() and (path / ENCODER_FILE).is_file() and (
        (path / DECODER_FILE).is_file() or (path / MERGED_DECODER_FILE).is_file())


def locate_model(model: str | Path, tokenizer: str | Path | None = None) -> ModelFiles:
    """The files of an optimum-style directory (model.onnx, or encoder_model.onnx + decoder_model.onnx,
    beside tokenizer.json) or of one .onnx path."""
    path = Path(model)
    if not path.exists():
        raise ModelPathError(f"model not found: {path}")
    if is_encoder_decoder_export(path):
        if not (path / DECODER_FILE).is_file():
            raise ModelPathError(
                f"{path} has only {MERGED_DECODER_FILE} (the decoder with and without a cache merged under an If); "
                f"export with optimum's text2text-generation task without --monolith, keeping {DECODER_FILE}"
            )
        graphs = {"encoder": path / ENCODER_FILE, "decoder": path / DECODER_FILE}
    elif path.is_dir():
        onnx_path = path / "model.onnx"
        if not onnx_path.is_file():
            candidates = sorted(path.glob("*.onnx"))
            if (path / ENCODER_FILE).is_file():
                raise ModelPathError(f"{path} is an encoder-decoder export without {DECODER_FILE}: export it with "
                                     "optimum's text2text-generation task")
            if len(candidates) != 1:
                raise ModelPathError(f"no model.onnx in {path}")
            onnx_path = candidates[0]
        graphs = {"model": onnx_path}
    else:
        graphs = {"model": path}
    folder = next(iter(graphs.values())).parent
    tokenizer_path = Path(tokenizer) if tokenizer is not None else folder / "tokenizer.json"
    if tokenizer_path.is_dir():
        tokenizer_path = tokenizer_path / "tokenizer.json"
    return ModelFiles(graphs, tokenizer_path, folder / "config.json")


def read_config(files: ModelFiles) -> dict:
    """config.json beside the model, or {} when there is none."""
    return read_json_object(files.config, "config") if files.config.exists() else {}


def other_graph_identities(files: ModelFiles) -> dict[str, dict[str, object]]:
    """Path, size and modification time of every graph besides ``files.onnx`` (an encoder-decoder's
    encoder), by role: what a batch job's identity adds for them."""
    found = {}
    for role, path in files.graphs.items():
        if path != files.onnx:
            stat = path.stat()
            found[role] = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return found
