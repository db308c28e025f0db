"""onnxruntime sessions over the prepared model: run it, getting its outputs and each layer's block tensors in turn."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Container, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort

from alti_onnx.decomposition.arrays import Array, namespace, to_numpy
from alti_onnx.errors import RuntimeFailure

from .devices import Device, default_providers, host
from .model_inputs import FLOAT_TYPES, DeclaredInput, ModelInputs
from .prepared import PreparedModel, SegmentFile
from .text_inputs import Batch


def shared_arena() -> None:
    """Register one CPU memory arena for the process, once, for sessions that ask for it.

    Each onnxruntime session otherwise grows an arena of its own to its peak and keeps it: a model
    split into 31 segments then held 31 peaks (23 GB for SmolLM2 at 2,048 tokens, where one is
    0.7 GB). With one arena the segments, which run one after another, reuse the same memory.
    It grows by what is asked for, not in doubling chunks.
    """
    global _ARENA_REGISTERED
    if _ARENA_REGISTERED:
        return
    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    try:
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, _SAME_AS_REQUESTED, -1, -1))
    except Exception:  # noqa: BLE001 - already registered by the caller's own code: use theirs
        pass
    _ARENA_REGISTERED = True


_ARENA_REGISTERED = False
_SAME_AS_REQUESTED = 1  # OrtArenaCfg's arena_extend_strategy: kSameAsRequested


#: Batches of at least this many token pairs (batch x S x S) hand the arena's memory back to the
#: system after each segment. At such lengths one segment's scores are gigabytes, and an arena
#: that keeps them holds the largest shapes of every segment at once (SmolLM2 at 8,192 tokens grew
#: past 20 GB); below, reusing the arena is 10-20% faster than asking the system again.
RETURN_MEMORY_FROM = 4096 * 4096


def _returning_memory() -> ort.RunOptions:
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def session_options() -> ort.SessionOptions:
    """How every onnxruntime session of the package runs a model."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: failures reach the user as one RuntimeFailure line
    # onnxruntime's workers otherwise spin after each run, taking the cores NumPy needs next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Weight-only int8 (DequantizeLinear -> MatMul) is fused into MatMulNBits, by default computing with
    # int8-rounded activations (accuracy level 4): the model would no longer be the float function its
    # graph states, and the decomposition would miss by ~1e-3. Level 1 keeps the fusion, in float32.
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return options


def open_session(model: Path | bytes, providers: list[str] | None = None,
                 options: ort.SessionOptions | None = None, what: str | None = None) -> ort.InferenceSession:
    """Every onnxruntime session of the package starts here: ``model`` (a file, or a serialized
    segment) with the package's options (or ``options`` made from them), on ``providers`` (default:
    ``default_providers``); an unknown provider, or a model onnxruntime cannot load, is one
    RuntimeFailure line."""
    providers = providers or default_providers()
    known, available = ort.get_all_providers(), ort.get_available_providers()
    for provider in (p[0] if isinstance(p, tuple) else p for p in providers):
        if provider not in known:
            raise RuntimeFailure(f"unknown onnxruntime provider {provider!r}; this onnxruntime has {', '.join(available)}")
        if provider not in available:  # onnxruntime would warn and quietly run on the CPU
            raise RuntimeFailure(f"onnxruntime provider {provider!r} is not available here; this onnxruntime has "
                                 f"{', '.join(available)}")
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, options or session_options(), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        name = what or (str(model) if isinstance(model, Path) else "the model")
        raise RuntimeFailure(f"onnxruntime could not load {name}: {_first_line(exc)}") from None


def plain_session(onnx_path: Path, providers: list[str] | None = None) -> ort.InferenceSession:
    """The model file as its users run it: one onnxruntime session, the package's options, nothing exposed."""
    return open_session(Path(onnx_path), providers)


@dataclass(frozen=True)
class BlockTensors:
    """One block's run-time tensors for a batch: float arrays straight from onnxruntime, NumPy's or,
    on a GPU, the namespace the math runs in (``devices.Device.xp``)."""

    probs: Array
    values: Array
    residual: Array
    output: Array

    @property
    def nbytes(self) -> int:
        """The bytes of the probabilities (what a run's buffer of pending layers is measured by)."""
        return math.prod(self.probs.shape) * (8 if self.probs.dtype == namespace(self.probs).float64 else 4)

    def example(self, row: int, keep: slice | np.ndarray) -> tuple[Array, Array, Array, Array]:
        """Row ``row``'s probs [H, S, S], values [H_kv, S, dh], residual and output [S, D] at the positions
        ``keep`` only (a slice: views; the positions' indices: copies), in the tensors' namespace."""
        if isinstance(keep, slice):
            return (self.probs[row, :, keep, keep], self.values[row, :, keep, :], self.residual[row, keep, :],
                    self.output[row, keep, :])
        xp = namespace(self.probs)
        at = xp.asarray(keep)
        probs = xp.take(xp.take(self.probs[row, ...], at, axis=1), at, axis=2)
        return (probs, xp.take(self.values[row, ...], at, axis=1), xp.take(self.residual[row, ...], at, axis=0),
                xp.take(self.output[row, ...], at, axis=0))

    def to_host(self) -> BlockTensors:
        """The same tensors as NumPy arrays (itself when they are)."""
        if all(isinstance(a, np.ndarray) for a in (self.probs, self.values, self.residual, self.output)):
            return self
        return BlockTensors(*(to_numpy(a) for a in (self.probs, self.values, self.residual, self.output)))


def block_tensors(probs: Array, values: Array, residual: Array, output: Array) -> BlockTensors:
    """One block's tensors, widened to at least float32, with heads on their own axis: a block that
    folds its heads into the batch axis ([B*H, S, S], [B*H_kv, S, dh]) is read as [B, H, S, S], [B, H_kv, S, dh]."""
    xp = namespace(probs, values, residual, output)
    batch = residual.shape[0]
    if probs.ndim == 3:
        probs = xp.reshape(probs, (batch, -1, *probs.shape[1:]))
    if values.ndim == 3:
        values = xp.reshape(values, (batch, -1, *values.shape[1:]))
    return BlockTensors(*(_widen(a, xp) for a in (probs, values, residual, output)))


class SegmentedSession:
    """The prepared model on onnxruntime, one session per segment (one per layer, and the head).

    A run feeds the segments in order, hands each layer's block tensors to the caller as soon as
    its segment has run, and keeps only the tensors a later segment still reads: one layer's
    probabilities are alive at a time, never all of them. The model's own outputs are computed by
    the same nodes as in the whole graph.
    """

    def __init__(self, prepared: PreparedModel, providers: list[str] | None = None,
                 input_map: dict[str, str] | None = None, fed_by_caller: Iterable[str] = (),
                 exposed: dict[int, list[str]] | None = None, device: Device | None = None):
        #: where the segments leave their outputs and the math reads the block tensors (``devices``):
        #: None, or a device on the host, runs ``session.run`` and hands NumPy arrays over
        self.device = None if device is None or device.on_host else device
        #: per segment, intermediate tensors it also hands out (a logit decomposition reads them):
        #: ``stream_feeds(..., collect=...)`` gathers them with the segment's own outputs
        self.exposed = {number: list(names) for number, names in (exposed or {}).items()}
        self.blocks = prepared.analysis.blocks
        self.original_outputs = list(prepared.graph_outputs)
        self.cache_inputs = cache_inputs(prepared.graph_inputs)
        #: inputs that are no token role (an encoder's output fed to a decoder): ``stream_feeds`` gets them
        self.fed_by_caller = list(fed_by_caller)
        self.inputs = session_inputs(prepared, input_map, self.fed_by_caller)
        self.segments = prepared.segments
        options = session_options()
        shared_arena()  # the segments run one after another: one CPU arena for all of them
        options.add_session_config_entry("session.use_env_allocators", "1")
        # External weights (the model's own, or the prepared entry's weights.bin) are mapped from their file.
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(prepared.weights_dir))

        def load(number: int, segment: SegmentFile) -> ort.InferenceSession:
            try:
                model = segment.path.read_bytes()
            except OSError as exc:
                raise RuntimeFailure(f"onnxruntime could not load the model: {exc.strerror or exc}") from None
            if self.exposed.get(number):
                model = _with_outputs(model, self.exposed[number])
            return open_session(model, providers, options, what="the model")

        # onnxruntime optimizes each graph with the GIL released: the segments load in parallel
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            self.sessions = list(pool.map(load, range(len(self.segments)), self.segments))
        if self.device is not None and self.device.bound_outputs == "cuda" and \
                any(s.get_providers()[0] != "CUDAExecutionProvider" for s in self.sessions):
            # onnxruntime fell back to the CPU (no cuDNN, say): its outputs are the host's, copied to the GPU once
            self.device = replace(self.device, bound_outputs=None)
        produced = {name: number for number, s in enumerate(self.segments) for name in s.outputs}
        #: the segment after which each block's tensors all exist
        self.ready_after = [max(produced[name] for name in b.tensor_names()) for b in self.blocks]
        #: the tensors some later segment reads, after each segment (everything else is dropped)
        self.read_later: list[set[str]] = []
        later: set[str] = set()
        for segment in reversed(self.segments):
            self.read_later.insert(0, set(later))
            later.update(segment.inputs)

    def close(self) -> None:
        """Drop the onnxruntime sessions (their memory and threads go with them)."""
        self.sessions = []

    def stream(self, batch: Batch, on_block: Callable[[int, BlockTensors], None],
               collect: dict[str, np.ndarray] | None = None, collect_from: Iterable[int] = (),
               only: Container[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model on ``batch``, calling ``on_block(layer, tensors)`` for each block in layer
        order as soon as its tensors exist; returns the model's own outputs by name (``collect``:
        see ``stream_feeds``)."""
        return self.stream_feeds(self.batch_feeds(batch), on_block, collect, collect_from, only)

    def batch_feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        """Every graph input for ``batch``: its token inputs and, for a KV-cache export, an empty cache."""
        return {**self.inputs.feeds(batch), **self.empty_cache(len(batch.input_ids))}

    def stream_feeds(self, feeds: dict[str, np.ndarray], on_block: Callable[[int, BlockTensors], None],
                     collect: dict[str, np.ndarray] | None = None,
                     collect_from: Iterable[int] = (), only: Container[str] | None = None) -> dict[str, np.ndarray]:
        """``stream`` from the graph inputs themselves (every one the graph declares, by name).
        ``collect`` receives every tensor (inputs, outputs, exposed) of the segments with exposed
        tensors and of those numbered in ``collect_from`` (``only`` those named in ``only``, when given:
        a segment's outputs hold its layer's attention, which the caller may keep already)."""
        collect_from = set(collect_from) | {number for number, names in self.exposed.items() if names}
        live: dict[str, np.ndarray] = dict(feeds)
        # token pairs of the run: rows x the longest sequence any [B, S] input (ids, masks) spans, squared
        pairs = max((a.shape[0] * a.shape[1] ** 2 for a in live.values() if a.ndim == 2), default=0)
        outputs: dict[str, np.ndarray] = {}
        layer = 0
        options = _returning_memory() if pairs >= RETURN_MEMORY_FROM else None
        for number, (segment, session) in enumerate(zip(self.segments, self.sessions)):
            extra = self.exposed.get(number, [])
            results = self._run_segment(session, segment.outputs + extra, {name: live[name] for name in segment.inputs},
                                        options)
            if collect is not None and number in collect_from:
                collect.update((n, host(v)) for n, v in zip(segment.outputs + extra, results) if only is None or n in only)
                collect.update((name, host(live[name])) for name in segment.inputs if only is None or name in only)
            live.update(zip(segment.outputs, results))
            del results
            outputs.update((name, host(live[name])) for name in segment.outputs if name in self.original_outputs)
            while layer < len(self.blocks) and self.ready_after[layer] <= number:
                tensors = block_tensors(*(self._to_math(live[name]) for name in self.blocks[layer].tensor_names()))
                on_block(layer, tensors)
                del tensors
                layer += 1
            for name in [name for name in live if name not in self.read_later[number]]:
                del live[name]
        return outputs

    def _run_segment(self, session: ort.InferenceSession, names: list[str], feeds: dict[str, object],
                     options: ort.RunOptions | None) -> list[np.ndarray | ort.OrtValue]:
        """One segment's outputs: NumPy arrays, or on a device OrtValues left where the device wants them."""
        try:
            if self.device is not None and self.device.bound_outputs is not None:
                return run_bound(session, names, feeds, self.device.bound_outputs, options)
            return session.run(names, {n: host(v) for n, v in feeds.items()}, options)
        except Exception as exc:  # noqa: BLE001
            raise RuntimeFailure(f"onnxruntime failed to run the model: {_first_line(exc)}") from None

    def _to_math(self, value: np.ndarray | ort.OrtValue) -> Array:
        """A block tensor as the math reads it: itself on the host, else moved by the device."""
        return value if self.device is None else self.device.to_math(value)

    def run(self, batch: Batch) -> tuple[dict[str, np.ndarray], list[BlockTensors]]:
        """The model's own outputs by name, and every block's tensors in layer order (all of them
        kept: for tests and small inputs; ``stream`` keeps one layer at a time)."""
        return self.run_feeds(self.batch_feeds(batch))

    def run_feeds(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[BlockTensors]]:
        """``run`` from the graph inputs themselves."""
        tensors: list[BlockTensors] = []
        outputs = self.stream_feeds(feeds, lambda layer, t: tensors.append(t))
        return outputs, tensors

    def empty_cache(self, batch_size: int) -> dict[str, np.ndarray]:
        """Zero-length past keys/values for a KV-cache export, so it runs on the full sequence."""
        return empty_cache(self.cache_inputs, batch_size)


def session_inputs(prepared: PreparedModel, input_map: dict[str, str] | None = None,
                   fed_by_caller: Iterable[str] = ()) -> ModelInputs:
    """The token inputs of a prepared graph: every declared input but a KV cache and those the caller feeds."""
    return ModelInputs(prepared.graph_inputs, input_map, skip=[*cache_inputs(prepared.graph_inputs), *fed_by_caller])


def empty_cache(cache: dict[str, tuple[int, int, type]], batch_size: int) -> dict[str, np.ndarray]:
    """Zero-length past keys/values for the KV-cache inputs ``cache`` (see ``cache_inputs``)."""
    return {name: np.zeros((batch_size, heads, 0, head_size), dtype=dtype) for name, (heads, head_size, dtype) in cache.items()}




def cache_inputs(declared: list[DeclaredInput]) -> dict[str, tuple[int, int, type]]:
    """Graph inputs that are a KV cache: float [batch, heads, past_length, head_size], fixed heads and size.

    Recognised by type and shape, not name: token inputs are integer, and a float rank-4 input of
    a text model can only be past keys or values.
    """
    found = {}
    for value in declared:
        dims = value.dims or ()
        if value.elem_type not in FLOAT_TYPES or len(dims) != 4:
            continue
        if not (isinstance(dims[1], int) and isinstance(dims[3], int)):
            raise RuntimeFailure(
                f"input {value.name!r} looks like a KV cache with unknown head count or size; export the model "
                "without past (alti-onnx export HF_DIR OUT --task text-generation)"
            )
        found[value.name] = (dims[1], dims[3], FLOAT_TYPES[value.elem_type])
    return found


def _with_outputs(serialized: bytes, names: list[str]) -> bytes:
    """A segment that also outputs the tensors ``names`` (onnx is imported only for this)."""
    import onnx

    model = onnx.ModelProto.FromString(serialized)
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in names)
    return model.SerializeToString()


def _widen(array: Array, xp: ModuleType) -> Array:
    """Half-precision block tensors are read as they ran and computed on in float32."""
    half = getattr(xp, "float16", None)  # not a dtype of the array API standard
    return xp.astype(array, xp.float32) if half is not None and array.dtype == half else array


def run_bound(session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray | ort.OrtValue],
              device: str, options: ort.RunOptions | None = None) -> list[ort.OrtValue]:
    """``session.run`` through IO binding: the feeds bound where they lie (NumPy arrays on the CPU,
    OrtValues where onnxruntime left them), the outputs left on ``device`` ("cuda" or "cpu") as
    OrtValues, so that a GPU run's tensors never pass through the host."""
    binding = session.io_binding()
    for name, value in feeds.items():
        if isinstance(value, ort.OrtValue):
            binding.bind_ortvalue_input(name, value)
        else:
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in names:
        binding.bind_output(name, device, 0)
    session.run_with_iobinding(binding, options)
    return binding.get_outputs()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
