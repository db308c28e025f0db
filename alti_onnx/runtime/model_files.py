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


#: The names the two halves of an encoder-decoder export go by: optimum's text2text-generation
#: export first, then the shorter names third-party exports use.
ENCODER_NAMES = ("encoder_model.onnx", "encoder.onnx")
DECODER_NAMES = ("decoder_model.onnx", "decoder.onnx")
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
        """Where the side files are (config.json, generation_config.json, pooling): the config's folder."""
        return self.config.parent


def _first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / name for name in names if (folder / name).is_file()), None)


def is_encoder_decoder_export(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an encoder-decoder export."""
    path = Path(path)
    return path.is_dir() and _first_file(path, ENCODER_NAMES) is not None and (
        _first_file(path, DECODER_NAMES) is not None or (path / MERGED_DECODER_FILE).is_file())


def locate_model(model: str | Path, tokenizer: str | Path | None = None, encoder: str | Path | None = None,
                 decoder: str | Path | None = None) -> ModelFiles:
    """The files of an optimum-style directory (model.onnx, or encoder_model.onnx + decoder_model.onnx,
    beside tokenizer.json), of a directory with encoder.onnx + decoder.onnx, or of one .onnx path.
    ``encoder`` and ``decoder`` name the two halves of an encoder-decoder explicitly (a path, or a
    file name inside ``model``)."""
    path = Path(model)
    if not path.exists():
        raise ModelPathError(f"model not found: {path}")
    if (encoder is None) != (decoder is None):
        raise ModelPathError("an encoder-decoder needs both --encoder and --decoder (API: encoder=, decoder=)")
    if encoder is not None:
        folder = path if path.is_dir() else path.parent
        graphs = {role: _named_graph(folder, given, role) for role, given in (("encoder", encoder), ("decoder", decoder))}
        return _with_side_files(graphs, folder, tokenizer)
    elif is_encoder_decoder_export(path):
        decoder_file = _first_file(path, DECODER_NAMES)
        if decoder_file is None:
            raise ModelPathError(
                f"{path} has only {MERGED_DECODER_FILE} (the decoder with and without a cache merged under an If); "
                f"export with optimum's text2text-generation task without --monolith, keeping {DECODER_NAMES[0]}"
            )
        graphs = {"encoder": _first_file(path, ENCODER_NAMES), "decoder": decoder_file}
    elif path.is_dir():
        onnx_path = path / "model.onnx"
        if not onnx_path.is_file():
            candidates = sorted(path.glob("*.onnx"))
            if _first_file(path, ENCODER_NAMES) is not None:
                raise ModelPathError(f"{path} is an encoder-decoder export without a decoder ({' or '.join(DECODER_NAMES)}): "
                                     "export it with optimum's text2text-generation task, or name the two files with "
                                     "--encoder FILE --decoder FILE")
            if len(candidates) != 1:
                hint = (f" (an encoder-decoder? name its halves with --encoder FILE --decoder FILE: "
                        f"{', '.join(p.name for p in candidates[:4])})" if len(candidates) >= 2 else "")
                raise ModelPathError(f"no model.onnx in {path}{hint}")
            onnx_path = candidates[0]
        graphs = {"model": onnx_path}
    else:
        graphs = {"model": path}
    return _with_side_files(graphs, next(iter(graphs.values())).parent, tokenizer)


def _with_side_files(graphs: dict[str, Path], folder: Path, tokenizer: str | Path | None) -> ModelFiles:
    """The graphs with the tokenizer (given, else ``folder``'s) and ``folder``'s config.json."""
    tokenizer_path = Path(tokenizer) if tokenizer is not None else folder / "tokenizer.json"
    if tokenizer_path.is_dir():
        tokenizer_path = tokenizer_path / "tokenizer.json"
    return ModelFiles(graphs, tokenizer_path, folder / "config.json")


def _named_graph(folder: Path, given: str | Path, role: str) -> Path:
    """An --encoder or --decoder: a file of that name in the model's folder, else a path as given."""
    for candidate in (folder / given, Path(given)):
        if candidate.is_file():
            return candidate
    raise ModelPathError(f"--{role} {given} is neither a file nor a file in {folder}")


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
