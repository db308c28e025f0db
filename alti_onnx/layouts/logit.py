"""The logit decomposition of a model in one graph (docs/logit.md): which logit, which run, which math.

- A causal language model: ALTI-Logit (``decomposition.logit``). The model runs as for ALTI; each
  layer keeps its target row; the head (last MLP, final norm, unembedding) runs again on the target
  position alone with every tensor exposed, and the sweep through it gives the logit's adjoint at
  the final residual.
- Any other model with a logits output (a classifier): the whole model read linearly
  (``decomposition.linearized``), from one run of the model that exposes the tensors the sweep
  reads (every tensor on the first run, which finds them).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import numpy as np

from alti_onnx.decomposition.linearized import LinearizedGraph, Node
from alti_onnx.decomposition.logit import ADDITIVE_KINDS, LayerAtTarget, LogitParts, alti_logit, token_parts
from alti_onnx.errors import InputError, LinearizationError, SelfCheckError
from alti_onnx.results.logit import LogitExplanation, LogitItem, LogitQuery
from alti_onnx.runtime.devices import Device
from alti_onnx.runtime.linear_graph import HEAD, SegmentValues, last_residual_sum, named_parts, read_segment
from alti_onnx.runtime.prepared import PreparedModel
from alti_onnx.runtime.sessions import SegmentedSession, open_session, session_options

#: Largest reconstruction error of a logit decomposition (relative to the larger of 1 and the
#: logits' magnitude) before the self-check refuses it.
LOGIT_TOLERANCE = 1e-4
LOGITS = "logits"


@dataclass
class LogitRun:
    """What one batch run hands the decomposition: per row, the target position (in the padded row,
    and among the real tokens) and (decoders) each layer's target row; every exposed tensor of the run."""

    positions: list[int]
    token_positions: list[int]
    layers: list[list[LayerAtTarget]]
    collected: dict[str, np.ndarray]


class LogitDecomposer:
    """The logit decomposition of one prepared single-graph model (built on the first ``--logit``)."""

    def __init__(self, prepared: PreparedModel, providers: list[str] | None, input_map: dict[str, str],
                 causal: bool | None, labels: list[str] | None, tokenizer, device: Device | None = None):
        if LOGITS not in prepared.graph_outputs:
            raise InputError(f"--logit explains a classifier's class or a language model's next token, from the "
                             f"model's {LOGITS!r} output; this model outputs {', '.join(prepared.graph_outputs)}")
        self.prepared = prepared
        self.blocks = prepared.analysis.blocks
        self.labels = labels
        self.tokenizer = tokenizer
        self.decoder = bool(causal)
        self.loaded: dict[str, np.ndarray] = {}  # the graph's constants and weights, read on the first sweep
        self.providers = providers
        self.lens_session = None  # the logit lens (the head from its final residual on), made on first use
        self.lens_inputs: list[str] = []
        self.lens_rank, self.lens_dtype = 3, np.dtype(np.float32)
        head = len(prepared.segments) - 1
        if self.decoder:
            unfit = [b.layer for b in self.blocks if b.kind not in ADDITIVE_KINDS]
            if unfit:
                raise InputError(f"ALTI-Logit needs pre-LN, sandwich or parallel blocks; layer {unfit[0]} of this "
                                 "decoder is post-LN")
            if head < len(self.blocks):
                raise InputError("this decoder's graph has no head after its last attention block to decompose")
            self.head = read_segment(prepared.segments[head])
            self.head_nodes = [Node(n.op, n.inputs, n.outputs, n.attributes, HEAD) for n in self.head.nodes]
            #: the head read linearly and its last residual sum: made on the first run, then reused
            self.head_graph: LinearizedGraph | None = None
            self.head_sum: Node | None = None
            options = session_options()  # the head's weights are read from the prepared entry, as its segments' are
            options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                             str(prepared.weights_dir))
            self.head_session = open_session(self._head_model(head), providers, options, what="the head")
            self.session: SegmentedSession | None = None
        else:
            self.graphs = [read_segment(segment) for segment in prepared.segments]
            exposed = {number: graph.exposed for number, graph in enumerate(self.graphs)}
            # the block tensors go where ALTI is computed (``device``); what the sweep collects comes to the host
            self.session = SegmentedSession(prepared, providers, input_map, exposed=exposed, device=device)
            self._session_args = (providers, input_map)
            self._device = device
            #: the whole graph read linearly: made on the first run (its structure needs every
            #: tensor's type), then reused, the session narrowed to the tensors its sweep reads
            self.linear: LinearizedGraph | None = None
            self.also_exposed: set[str] = set()
            self.narrowed_to: set[str] | None = None

    def _head_model(self, head: int) -> bytes:
        import onnx

        model = onnx.load(str(self.prepared.segments[head].path), load_external_data=False)
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in self.head.exposed)
        return model.SerializeToString()

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.head_session = None

    # ------------------------------------------------------------------ which logit
    def resolve(self, query: LogitQuery, logits: np.ndarray) -> tuple[LogitItem, LogitItem | None]:
        """The target (default: the argmax of ``logits``, one row) and foil as classes or tokens, for a
        query ``require_fits`` accepted (the explainer asks before the run)."""
        width = int(np.shape(logits)[-1])
        target = self._item(query.target, "target", width) if query.target is not None \
            else self._named(int(np.argmax(logits)))
        foil = None if query.foil is None else self._item(query.foil, "foil", width)
        return target, foil

    def require_fits(self, query: LogitQuery) -> None:
        """A query for a class on a language model (or a token, or per-head terms, on a classifier) is
        refused, not read as something else. A position means nothing to a classifier's logit (it
        has one): ``batch --target N`` sets it for ALTI's sake, and it is not used."""
        if query.kind is not None and query.kind != ("token" if self.decoder else "class"):
            raise InputError(f"a {'class' if query.kind == 'class' else 'target token'} is asked for, but this model is "
                             f"{'a language model: give a target token' if self.decoder else 'a classifier: give a class'}")
        if not self.decoder and query.per_head:
            raise InputError("per-head terms are for language models (ALTI-Logit); this model is a classifier")
        for given in (query.target, query.foil):
            if given is not None and (isinstance(given, bool) or not isinstance(given, (str, Integral))):
                raise InputError(f"a class or token is a label, a token's text or an integer index, got {given!r}")

    def _item(self, given: int | str, role: str, width: int) -> LogitItem:
        if self.decoder:
            return self._named(self._token_id(given, role, width))
        labels = self.labels or []
        what = "class" if role == "target" else "foil"
        if isinstance(given, str) and given in labels:  # a label first: a label "1" is that class
            return self._named(labels.index(given))
        lowered = [label.lower() for label in labels]
        if isinstance(given, str) and given.lower() in lowered:
            return self._named(lowered.index(given.lower()))
        if isinstance(given, str) and not (given.isascii() and given.isdigit()):
            raise InputError(f"{what} {given!r} is no class of this model (its classes: "
                             f"{', '.join(labels) or ', '.join(map(str, range(width)))})")
        index = int(given)
        if not 0 <= index < width:
            raise InputError(f"{what} {index} is out of range: this model has {width} classes (0 to {width - 1})")
        return self._named(index)

    def _token_id(self, given: int | str, role: str, width: int) -> int:
        """A token id: an integer (or a string of ASCII digits) is an id; any other text is the
        token it spells exactly, or the one token it encodes to (" 5", with its space, is a token)."""
        option = "target token" if role == "target" else "foil"
        if not isinstance(given, str) or (given.isascii() and given.isdigit()):
            token = int(given)
            if not 0 <= token < width:
                raise InputError(f"{option} {given}: token ids of this model run from 0 to {width - 1}")
            return token
        try:
            exact = self.tokenizer.token_to_id(given)
            pieces = self.tokenizer.encode(given, add_special_tokens=False).ids if exact is None else [exact]
        except (UnicodeError, TypeError, ValueError):
            raise InputError(f"{option} {given!r} is not text the tokenizer can read") from None
        if exact is not None:
            return int(exact)
        if len(pieces) != 1:
            raise InputError(f"{option} {given!r} is {len(pieces)} tokens "
                             f"({', '.join(repr(self.tokenizer.id_to_token(p)) for p in pieces)}); give one token or its id")
        read = self.tokenizer.decode(pieces, skip_special_tokens=False)
        if read.strip() != given.strip():  # the unknown token, or a normalizer's change
            raise InputError(f"{option} {given!r} is not in the vocabulary (it reads as {read!r}); give one token or "
                             "its id")
        return int(pieces[0])

    def _named(self, index: int) -> LogitItem:
        if self.decoder:
            return LogitItem(index, self.tokenizer.decode([index], skip_special_tokens=False))
        label = self.labels[index] if self.labels and index < len(self.labels) else str(index)
        return LogitItem(index, label)

    # ------------------------------------------------------------------ the decompositions
    def decompose(self, queries: list[LogitQuery], run: LogitRun, outputs: dict[str, np.ndarray], kept: list,
                  contributions: list, check: bool) -> list[LogitExplanation]:
        """One LogitExplanation per row (``queries``: one per row). ``contributions[row](v, l)`` is
        v @ C^l of ALTI for that row."""
        logits = np.asarray(outputs[LOGITS], dtype=np.float64)
        if logits.ndim != (3 if self.decoder else 2):
            raise InputError(f"--logit reads a classifier's [batch, classes] or a causal language model's [batch, "
                             f"positions, vocabulary] logits; this model's are {logits.ndim}-dimensional"
                             + ("" if self.decoder else " (a language model needs config.json's architectures to "
                                "name a *ForCausalLM)"))
        rows = range(len(kept))
        wanted = []
        for row in rows:
            row_logits = logits[row, run.positions[row]] if self.decoder else logits[row]
            wanted.append(self.resolve(queries[row], row_logits))
        if self.decoder:
            found = self._alti_logit(run, logits, wanted, contributions)
        else:
            found = self._linearized(run, logits, wanted, kept)
        explanations = []
        for row, (parts, (target, foil)) in enumerate(zip(found, wanted)):
            if check and not parts.reconstruction_error <= LOGIT_TOLERANCE:
                raise SelfCheckError(
                    f"self-check failed: the logit's parts sum to within {parts.reconstruction_error:.2e} (relative) of "
                    f"the model's logit, above {LOGIT_TOLERANCE:g}: the decomposition does not hold for this model")
            explanations.append(LogitExplanation(
                "alti-logit" if self.decoder else "linearized", "token" if self.decoder else "class", target, foil,
                parts.value, parts.attribution, parts.parts, parts.reconstruction_error,
                run.token_positions[row] if self.decoder else None, parts.per_layer,
                parts.per_head if queries[row].per_head else None))
        return explanations

    def _seed(self, shape: tuple[int, ...], wanted: list, position: list[int] | None) -> np.ndarray:
        seed = np.zeros(shape)
        for row, (target, foil) in enumerate(wanted):
            at = (row,) if position is None else (row, position[row])
            seed[at + (target.index,)] += 1.0
            if foil is not None:
                seed[at + (foil.index,)] -= 1.0
        return seed

    @staticmethod
    def _value(row_logits: np.ndarray, target: LogitItem, foil: LogitItem | None) -> tuple[float, float]:
        """(the logit or difference, the scale its reconstruction error is relative to)."""
        value = row_logits[target.index] - (0.0 if foil is None else row_logits[foil.index])
        scale = max(1.0, abs(row_logits[target.index]), 0.0 if foil is None else abs(row_logits[foil.index]))
        return float(value), float(scale)

    def _linearized(self, run: LogitRun, logits: np.ndarray, wanted: list, kept: list) -> list[LogitParts]:
        values = SegmentValues(self.graphs, self.prepared.weights_dir, run.collected, self.loaded)
        source = self.blocks[0].residual
        first = self.linear is None
        if first:
            nodes = [node for graph in self.graphs for node in graph.nodes]
            self.linear = LinearizedGraph(nodes, [source], values)
            self.linear.nodes = named_parts(nodes, [b.residual for b in self.blocks], self.linear.live)
        read: set[str] = set()
        self.linear.value = _Reading(values, read) if first else values
        sweep = self.linear.sweep({LOGITS: self._seed(logits.shape, wanted, None)}, stops=[source], rows=len(kept))
        if first:
            self._narrow(read | {source, LOGITS})
        adjoint = sweep.adjoints.get(source, np.zeros(np.shape(values(source))))
        x0 = np.asarray(values(source), dtype=np.float64)
        found = []
        for row, (target, foil) in enumerate(wanted):
            every = token_parts(adjoint[row], x0[row])
            parts = {name: float(share[row]) for name, share in sorted(sweep.parts.items(), key=_part_order)}
            value, scale = self._value(logits[row], target, foil)
            total = float(every.sum() + sum(parts.values()))
            found.append(LogitParts(value, every[kept[row]], parts, abs(total - value) / scale))
        return found

    def _narrow(self, read: set[str]) -> None:
        """Expose only what the sweep read (and what ``ensure_exposed`` asked for): which tensors it
        reads is a property of the graph (each operator's carrier follows from the structure), not of
        the input, and onnxruntime keeps more of its own fusions and copies out less."""
        self.narrowed_to = read | self.also_exposed
        wanted = self.narrowed_to
        exposed = {number: [name for name in graph.exposed if name in wanted] for number, graph in enumerate(self.graphs)}
        narrowed = SegmentedSession(self.prepared, *self._session_args, exposed=exposed, device=self._device)
        self.session.close()
        self.session = narrowed

    def ensure_exposed(self, names: set[str]) -> None:
        """A classifier's run also hands over ``names`` (the routes' post-LN sums): every tensor is
        exposed until the first sweep narrows the session, which then keeps these too."""
        self.also_exposed |= set(names)
        if self.narrowed_to is not None and not names <= self.narrowed_to:
            self._narrow(self.narrowed_to)

    def _alti_logit(self, run: LogitRun, logits: np.ndarray, wanted: list, contributions: list) -> list[LogitParts]:
        head_values, at = self._run_head(run, logits)
        values = SegmentValues([self.head], self.prepared.weights_dir, head_values, self.loaded)
        graph, last = self._head_reading(values, head_values)
        seed = self._seed(np.shape(head_values[LOGITS]), wanted, at)
        sweep = graph.sweep({LOGITS: seed}, rows=len(wanted), stop_at=lambda node: node is last)
        final = last.outputs[0]
        gradient = sweep.adjoints.get(final)
        if gradient is None:
            raise LinearizationError("the logit does not depend on the final residual stream")
        # [B, S, D], also where the head flattens the positions ([B*S, D]: OPT) before the last sum
        batch, length = np.shape(head_values[LOGITS])[:2]
        z = np.asarray(head_values[final], dtype=np.float64).reshape(batch, length, -1)
        gradient = gradient.reshape(batch, length, -1)
        found = []
        for row, (target, foil) in enumerate(wanted):
            value, scale = self._value(logits[row, run.positions[row]], target, foil)
            found.append(alti_logit(self.blocks, run.layers[row], gradient[row, at[row]], z[row, at[row]],
                                    float(sweep.parts.get(HEAD, np.zeros(len(wanted)))[row]), value, scale,
                                    contributions[row]))
        return found

    def _head_reading(self, values: SegmentValues, head_values: dict[str, np.ndarray]) -> tuple[LinearizedGraph, Node]:
        """The head read linearly and its last residual sum (made on the first run, then reused),
        reading ``values``."""
        if self.head_graph is None:
            sources = [name for name in self.prepared.segments[-1].inputs
                       if np.issubdtype(np.asarray(head_values[name]).dtype, np.floating)]
            graph = LinearizedGraph(self.head_nodes, sources, values)
            last = last_residual_sum(self.head_nodes, graph.live)
            if last is None:
                raise LinearizationError("no residual sum before the decoder's head: the final residual stream is "
                                         "not found")
            self.head_graph, self.head_sum = graph, last
        self.head_graph.value = values
        return self.head_graph, self.head_sum

    def final_residual(self, collected: dict[str, np.ndarray], positions: list[int],
                       logits: np.ndarray) -> np.ndarray:
        """[B, D]: the final residual stream (the input of the final norm) at each row's position,
        from the head run again on those positions."""
        run = LogitRun(positions, positions, [], collected)
        head_values, at = self._run_head(run, logits)
        values = SegmentValues([self.head], self.prepared.weights_dir, head_values, self.loaded)
        _, last = self._head_reading(values, head_values)
        batch, length = np.shape(head_values[LOGITS])[:2]
        found = np.asarray(head_values[last.outputs[0]])
        self.lens_rank, self.lens_dtype = found.ndim, found.dtype  # [B, S, D], or [B*S, D] (flattened positions)
        final = found.astype(np.float64)
        return final.reshape(batch, length, -1)[np.arange(batch), at]

    def lens(self, vectors: np.ndarray, collected: dict[str, np.ndarray], batch: int, length: int,
             top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The logit lens of residual-stream vectors [N, D]: the model's own final norm and unembedding
        (the head from its final residual on) applied to each vector, kept as each row's ``top``
        highest and lowest logits: (ids, logits) [N, top] each, highest first, then lowest first.
        A head that reads the run's shapes from its other inputs (GPT-2 reshapes to its input's) gets
        the vectors as the run's first row, ``length`` positions at a time (``collected``: the head's
        inputs, of a run of ``batch`` rows); any other gets them in blocks of ``LENS_ROWS``."""
        if self.head_sum is None:
            raise LinearizationError("the logit lens needs the head's final residual, found on a first run")
        final = self.head_sum.outputs[0]
        if self.lens_session is None:
            self.lens_session, self.lens_inputs = self._lens_session(final)
        extra = {name: _first_row(np.asarray(collected[name]), batch) for name in self.lens_inputs}
        vectors = np.asarray(vectors, dtype=self.lens_dtype)
        if not extra:  # the head reads no shape of the run
            length = LENS_ROWS
        found: list[tuple[np.ndarray, ...]] = []
        for start in range(0, len(vectors), length):
            chunk = vectors[start:start + length]
            feed = chunk if not extra else np.concatenate([chunk, np.zeros((length - len(chunk), chunk.shape[-1]),
                                                                           dtype=chunk.dtype)])
            try:
                logits = self.lens_session.run([LOGITS], {final: feed[None] if self.lens_rank == 3 else feed,
                                                          **extra})[0]
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
                raise LinearizationError(f"the logit lens did not run: {str(exc).splitlines()[0]}") from None
            logits = np.asarray(logits).reshape(len(feed), -1)[:len(chunk)]
            found.append((*_extreme(logits, top), *_extreme(-logits, top)))
        high, high_logits, low, low_logits = (np.concatenate(parts) for parts in zip(*found))
        return high, high_logits, low, -low_logits

    def _lens_session(self, final: str):
        """The head from ``final`` to the logits, and the head's other inputs it still reads (for shapes)."""
        import onnx
        import onnx.utils

        model = onnx.load(str(self.prepared.segments[-1].path), load_external_data=False)
        if final not in {v.name for v in (*model.graph.value_info, *model.graph.input)}:  # the extractor needs its type
            model.graph.value_info.append(onnx.helper.make_tensor_value_info(
                final, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.lens_dtype)), None))
        others = [v.name for v in model.graph.input]
        lens = onnx.utils.Extractor(model).extract_model([final, *others], [LOGITS])
        read = {name for node in lens.graph.node for name in node.input}
        kept = [v for v in lens.graph.input if v.name == final or v.name in read]
        del lens.graph.input[:]
        lens.graph.input.extend(kept)
        options = session_options()
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(self.prepared.weights_dir))
        session = open_session(lens.SerializeToString(), self.providers, options, what="the logit lens")
        return session, [v.name for v in kept if v.name != final]

    def _run_head(self, run: LogitRun, logits: np.ndarray) -> tuple[dict[str, np.ndarray], list[int]]:
        """The head again, every tensor exposed, and where each row's target position is in its
        tensors. A decoder's head acts on each position by itself, so it first runs on the target
        positions alone; a head that does not (or cannot: a reshape fixed to the whole length), or
        whose logit then differs from the full run's, runs on every position."""
        segment = self.prepared.segments[-1]
        picks = np.asarray(run.positions)
        names = segment.outputs + self.head.exposed
        sliced = {}
        for name in segment.inputs:
            value = run.collected[name]
            if value.ndim >= 2 and value.shape[0] == len(picks) and value.shape[1] == logits.shape[1]:
                value = value[np.arange(len(picks)), picks][:, None]
            sliced[name] = value
        try:
            results = dict(zip(names, self.head_session.run(names, sliced)))
            head_logits = np.asarray(results[LOGITS], dtype=np.float64)[:, 0]
            if np.allclose(head_logits, logits[np.arange(len(picks)), picks], rtol=1e-5, atol=1e-5):
                return {**sliced, **results}, [0] * len(picks)
        except Exception:  # noqa: BLE001 - onnxruntime raises several types: the full run decides
            pass
        feeds = {name: run.collected[name] for name in segment.inputs}
        try:
            results = dict(zip(names, self.head_session.run(names, feeds)))
        except Exception as exc:  # noqa: BLE001
            raise LinearizationError(f"the decoder's head did not run again: {str(exc).splitlines()[0]}") from None
        return {**feeds, **results}, [int(p) for p in picks]


#: Vectors the logit lens reads at a time (a [rows, vocabulary] block of logits).
LENS_ROWS = 256


def _extreme(logits: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``top`` largest values and their columns, largest first, in float64."""
    top = min(top, logits.shape[-1])
    picked = np.argpartition(-logits, top - 1, axis=-1)[:, :top]
    values = np.take_along_axis(logits, picked, -1)
    order = np.argsort(-values, axis=-1, kind="stable")
    return np.take_along_axis(picked, order, -1), np.take_along_axis(values, order, -1).astype(np.float64)


def _first_row(value: np.ndarray, batch: int) -> np.ndarray:
    """The first row of a batched tensor of the run (others, scalars and shapes, as they are)."""
    return value[:1] if value.ndim and value.shape[0] == batch else value


class _Reading:
    """Values that remember which tensors were asked for (the first sweep's, to narrow the session)."""

    def __init__(self, values, read: set[str]):
        self.values, self.read = values, read

    def __call__(self, name: str) -> np.ndarray:
        self.read.add(name)
        return self.values(name)


def _part_order(item: tuple[str, np.ndarray]) -> tuple[int, int]:
    name = item[0]
    if name == HEAD:
        return (1, 0)
    return (0, int(name.split()[-1])) if name.startswith("layer ") else (2, 0)
