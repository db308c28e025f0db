"""What every explainer shares, whatever the model's layout: finding its files, reading its config
and tokenizer, the load-time checks, and the interface callers use.

``Explainer(path)`` picks the layout from the graphs ``locate_model`` finds (one graph; encoder +
decoder) among the layouts registered here by subclassing (the ``alti_onnx.layouts`` package,
imported before this module, imports them all),
so ``Explainer(path)`` is always an ``Explainer`` and callers never branch on which one.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import ClassVar, TypeVar

from alti_onnx.decomposition.self_check import require_tolerance
from alti_onnx.errors import (
    InputError,
    LayerCountError,
    ModelPathError,
    ModelWarning,
    RuntimeFailure,
    TokenizerMismatchError,
)
from alti_onnx.results.base import ExplanationBase
from alti_onnx.results.record import Target
from alti_onnx.runtime.devices import Device, resolve_device
from alti_onnx.runtime.model_files import (
    ModelFiles,
    locate_model,
    other_graph_identities,
    read_config,
    read_json_object,
)
from alti_onnx.runtime.prepared import PreparedModel, prepare, source_digest, weights_identity
from alti_onnx.runtime.text_inputs import TextEncoder
from graph_rewrites import AttentionAnalysis

S = TypeVar("S")

#: Self-check tolerance, relative to the block output's magnitude (at least 1).
DEFAULT_SELF_CHECK_TOLERANCE = 1e-3

#: config.json keys that give the number of transformer layers, by family and graph role.
LAYER_COUNT_KEYS: dict[str, tuple[str, ...]] = {
    "model": ("num_hidden_layers", "n_layer", "n_layers", "num_layers"),
    "encoder": ("encoder_layers", "num_layers"),
    "decoder": ("decoder_layers", "num_decoder_layers", "num_layers"),
}

#: config.json keys that name special token ids. Those the explainer feeds the model itself (padding,
#: a decoder's first token) must be tokens; any other that is not is stale, and only a warning.
SPECIAL_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "cls_token_id", "sep_token_id", "unk_token_id",
                   "mask_token_id")
FED_ID_KEYS = frozenset({"pad_token_id"})
#: tokenizer_config.json keys that declare special tokens, which the tokenizer beside it must have.
DECLARED_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class Explainer(ABC):
    """Explains an exported transformer with ALTI (ALTI+ for encoder-decoders), running only
    onnxruntime and NumPy.

    ``model`` is an optimum-style export directory or an .onnx file; ``tokenizer`` a tokenizer.json
    (defaults to the one beside the model); ``providers`` onnxruntime execution providers (CUDA
    when available, else CPU); ``device`` where the decomposition is computed, "cpu", "cuda" (CuPy and
    a numba-cuda kernel; onnxruntime on the GPU too where its CUDA provider is installed) or "auto"
    (a GPU where one is usable, docs/gpu.md); ``self_check_tolerance`` the largest decomposition error accepted,
    relative to the block output's magnitude (at least 1); ``input_map`` the role of graph inputs
    whose names do not tell it (``{"in_1": "mask"}``; roles: ids, mask, segment, positions);
    ``cache`` whether the prepared model (blocks found, graph split per layer) is kept under
    ``<cache>/prepared`` for the next run on the same file (on by default). An encoder-decoder's
    halves may be named with ``encoder`` and ``decoder`` (paths, or file names in ``model``), and
    its first decoder token given with ``decoder_start_token_id`` when no config file gives it.

    Use it as a context manager, or call ``close()``, to release its threads and sessions at once.
    """

    #: The graph roles of the layout (keys of ``ModelFiles.graphs``) a subclass explains.
    graph_roles: ClassVar[tuple[str, ...]] = ()
    #: Whether ``explain`` takes the output to explain (``target_text``): an encoder-decoder's.
    takes_target_text: ClassVar[bool] = False
    _layouts: ClassVar[list[type[Explainer]]] = []

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.graph_roles:
            Explainer._layouts.append(cls)

    def __new__(cls, model: str | Path, *args: object, **kwargs: object) -> Explainer:
        if cls is Explainer:
            roles = tuple(locate_model(model, encoder=kwargs.get("encoder"), decoder=kwargs.get("decoder")).graphs)
            found = [layout for layout in Explainer._layouts if layout.graph_roles == roles]
            if not found:
                raise ModelPathError(f"{model}: no layout explains a model of graphs {', '.join(roles)}")
            cls = found[0]
        return super().__new__(cls)

    def __init__(self, model: str | Path, tokenizer: str | Path | None = None, providers: list[str] | None = None,
                 self_check_tolerance: float = DEFAULT_SELF_CHECK_TOLERANCE, input_map: dict[str, str] | None = None,
                 cache: bool = True, *, encoder: str | Path | None = None, decoder: str | Path | None = None,
                 decoder_start_token_id: int | None = None, device: str | Device = "auto"):
        require_tolerance(self_check_tolerance)
        #: where the model runs and the math is computed (``runtime.devices``); refused first, before any file is read
        self.device: Device = resolve_device(device, providers)
        self.files: ModelFiles = locate_model(model, tokenizer, encoder, decoder)
        self.config: dict = read_config(self.files)
        #: the tokenizer, read once the graphs are known good (``load_tokenizer``): a file that is no
        #: model is reported as such, not as a missing tokenizer beside it
        self.text_encoder: TextEncoder | None = None
        self.self_check_tolerance = self_check_tolerance
        self.input_map: dict[str, str] = dict(input_map or {})
        self.providers: list[str] = self.device.providers
        self.cache = cache
        self.closed = False

    def load_tokenizer(self) -> TextEncoder:
        self.text_encoder = TextEncoder(self.files.tokenizer, self.config)
        return self.text_encoder

    @property
    def tokenizer(self):
        return self.text_encoder.tokenizer

    # ------------------------------------------------------------------ the interface
    @abstractmethod
    def explain(self, text: str | Sequence[str], target_text: str | Sequence[str | None] | None = None, *,
                full: bool = True, targets: Sequence[Target] | None = None, check: bool = True,
                baselines: bool = False, max_new_tokens: int = 32,
                logit=None) -> ExplanationBase | list[ExplanationBase]:
        """Explain one text, or a list of texts run as one padded batch.

        ``target_text`` (encoder-decoders) is the output explained teacher-forced, one per text
        (None: the model's greedy output, at most ``max_new_tokens``). With ``full=False`` only the
        attributions of ``targets`` (default: the default target) are kept. With ``check`` (the
        default) a self-check error above the tolerance raises SelfCheckError; ``baselines`` also
        computes the norm-based matrices. ``logit`` (a ``results.logit.LogitQuery``, or one per
        text) adds the decomposition of a class's or next token's logit (docs/logit.md).
        """

    @property
    @abstractmethod
    def prepared_graphs(self) -> dict[str, PreparedModel]:
        """Each graph's prepared model, by role (as in ``files.graphs``)."""

    def close(self) -> None:
        """Release the threads and onnxruntime sessions (the explainer cannot be used after)."""
        if not self.closed:
            self.closed = True
            self._release()

    def _release(self) -> None:
        """What ``close`` frees: each layout's threads and sessions."""

    def require_open(self) -> None:
        if self.closed:
            raise InputError("this Explainer was closed: make a new one to explain more texts")

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def corpus_options(self) -> dict[str, object]:
        """What, besides the corpus, the tokenizer and ``files.onnx``, makes a batch job this job:
        the options the explainer was made with, and the identity of every other graph it reads."""
        return {"input_map": dict(sorted(self.input_map.items())), "self_check_tolerance": self.self_check_tolerance,
                **job_model_identity(self.files, self.prepared_graphs)}

    def sessions_of(self, prepared: PreparedModel, make: Callable[[PreparedModel], S]) -> tuple[PreparedModel, S]:
        """``make(prepared)``, the onnxruntime sessions of a prepared graph; a cached entry they cannot
        be made from (damaged on disk after it was checked) is discarded and the graph prepared
        again, once, on every layout."""
        try:
            return prepared, make(prepared)
        except RuntimeFailure:
            if not prepared.cached:
                raise
        prepared.discard()
        again = prepare(prepared.source, cache=self.cache)
        return again, make(again)

    def require_no_target_text(self, target_text: object) -> None:
        """A layout that explains no given output refuses one (None, or a list of Nones, is no output)."""
        given = [target_text] if target_text is None or isinstance(target_text, str) else list(target_text)
        if not self.takes_target_text and any(t is not None for t in given):
            raise InputError("--target-text (target_text, a record's 'target') is for encoder-decoder exports "
                             "(encoder_model.onnx + decoder_model.onnx)")

    # ------------------------------------------------------------------ shared checks
    def refuse_options(self, **options: object) -> None:
        """One line for each option given that this layout has no use for (None, False and () are not given)."""
        for name, value in options.items():
            if not (value is None or value is False or value == ()):
                raise InputError(f"{name} is not for {self.layout_name} models")

    @property
    def layout_name(self) -> str:
        return " + ".join(self.graph_roles).replace("model", "single-graph")


def require_texts(text: object) -> list[str]:
    """The texts of ``explain(text)``: one string, or a non-empty sequence of strings."""
    if isinstance(text, str):
        return [text]
    if isinstance(text, (bytes, bytearray, dict)) or not isinstance(text, Iterable):
        raise InputError(f"explain() takes a text or a list of texts, got {type(text).__name__}")
    texts = list(text)
    if not texts:
        raise InputError("explain() needs at least one text")
    for item in texts:
        if not isinstance(item, str):
            raise InputError(f"explain() takes a text or a list of texts, got a list holding {type(item).__name__}")
    return texts


def job_model_identity(files: ModelFiles, prepared: dict[str, PreparedModel]) -> dict[str, object]:
    """What a batch job's identity holds of the model besides ``files.onnx``'s own: the SHA-256 of
    every graph file (its inline weights: a fine-tune of the same size is another model), every
    other graph file, and every external weights file each graph reads (size and sampled blocks)."""
    others = other_graph_identities(files)
    digests = {role: source_digest(graph) for role, graph in prepared.items()}
    weights = {role: found for role, graph in prepared.items() if (found := weights_identity(graph))}
    return {"graph_sha256": digests, **({"graphs": others} if others else {}),
            **({"external_weights": weights} if weights else {})}


def check_tokenizer_fits(prepared: PreparedModel, ids_input: str, encoder: TextEncoder, files: ModelFiles) -> None:
    """The tokenizer's ids must all index the graph's token-embedding table: else it is another
    model's tokenizer."""
    vocabulary = encoder.tokenizer.get_vocab_size(with_added_tokens=True)
    rows = prepared.embedding_rows.get(ids_input)
    if rows is not None and vocabulary > rows:
        raise TokenizerMismatchError(
            f"{files.tokenizer} has {vocabulary} tokens but the token embedding of {prepared.source} has {rows} rows: "
            "the tokenizer belongs to another model"
        )


def check_special_tokens(encoder: TextEncoder, config: dict, files: ModelFiles) -> None:
    """The special tokens tokenizer_config.json declares must be tokens of the tokenizer, and so must
    the ids config.json names that the explainer feeds the model (the pad id): else it is another
    model's tokenizer. Another config id that is not a token (GPT-2's default bos_token_id 50256
    left in a config whose tokenizer has 49,152) is stale, not wrong: a ModelWarning. (An
    encoder-decoder's start and generation ids are checked where they are used.)"""
    vocabulary = encoder.tokenizer.get_vocab_size(with_added_tokens=True)
    declared = files.tokenizer.parent / "tokenizer_config.json"
    tokenizer_config = read_json_object(declared, "tokenizer config") if declared.is_file() else {}
    for key in DECLARED_TOKEN_KEYS:
        value = tokenizer_config.get(key)
        content = value.get("content") if isinstance(value, dict) else value
        if isinstance(content, str) and content and encoder.tokenizer.token_to_id(content) is None:
            raise TokenizerMismatchError(
                f"{declared} declares the {key} {content!r}, which {files.tokenizer} does not have: the tokenizer "
                "belongs to another model"
            )
    for key in SPECIAL_ID_KEYS:
        token_id = config.get(key)
        if isinstance(token_id, int) and not isinstance(token_id, bool) and not 0 <= token_id < vocabulary:
            message = f"config.json's {key} is {token_id}, not a token of {files.tokenizer} ({vocabulary} tokens)"
            if key in FED_ID_KEYS:
                raise TokenizerMismatchError(f"{message}: the tokenizer belongs to another model")
            warnings.warn(f"{message}; the explanation goes on without it (a stale config?)", ModelWarning,
                          stacklevel=2)


def check_layer_count(config: dict, analysis: AttentionAnalysis, keys: tuple[str, ...], role: str = "model") -> None:
    """When config.json says how many layers the graph has, it must have as many (self-attention) blocks."""
    declared = next((config[k] for k in keys if isinstance(config.get(k), int) and not isinstance(config[k], bool)),
                    None)
    found = len([b for b in analysis.blocks if not b.cross])
    if declared is None or declared == found:
        return
    graph = "the graph" if role == "model" else f"the {role}"
    message = f"config.json says the {'model' if role == 'model' else role} has {declared} layers, but {graph} has " \
              f"{found} attention blocks"
    if analysis.unmatched:
        first = analysis.unmatched[0]
        message += (f"; {len(analysis.unmatched)} Softmax node(s) are not blocks, the first {first.node} "
                    f"(step '{first.step}': {first.reason})")
    raise LayerCountError(message)
