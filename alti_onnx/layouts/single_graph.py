"""A model in one graph (an encoder, a decoder, a classifier): ALTI from one onnxruntime run.

The prepared model runs segment by segment (``runtime.sessions``); each layer's block tensors are
decomposed as they arrive (``decomposition``) and dropped, a few layers at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from alti_onnx.decomposition.arrays import namespace
from alti_onnx.decomposition.contributions import (
    LayerContributions,
    batch_contributions,
    layer_contributions,
    one_blas_thread,
    rollout,
)
from alti_onnx.decomposition.layer_store import LayerStore
from alti_onnx.decomposition.logit import capture_layer
from alti_onnx.decomposition.self_check import check_layer
from alti_onnx.errors import InputError, NonFiniteError, RuntimeFailure
from alti_onnx.layouts.base import (
    DEFAULT_SELF_CHECK_TOLERANCE,
    LAYER_COUNT_KEYS,
    Explainer,
    check_layer_count,
    check_special_tokens,
    check_tokenizer_fits,
    require_texts,
)
from alti_onnx.layouts.logit import LOGITS, LogitDecomposer, LogitRun
from alti_onnx.layouts.routes import RouteRecorder, StreamSites, require_finite
from alti_onnx.results.explanation import Explanation
from alti_onnx.results.logit import LogitExplanation, LogitQuery
from alti_onnx.results.prediction import class_labels, classify, next_token
from alti_onnx.results.record import MEAN, Target
from alti_onnx.results.routes import RouteExplanation, RouteQuery
from alti_onnx.runtime.devices import Device, on_device
from alti_onnx.runtime.pooling import Pooling, declared_pooling
from alti_onnx.runtime.prepared import PreparedModel, prepare
from alti_onnx.runtime.sessions import BlockTensors, SegmentedSession
from alti_onnx.runtime.text_inputs import Batch
from graph_rewrites import AttentionAnalysis, AttentionBlock


class SingleGraphExplainer(Explainer):
    """ALTI of a model in one graph: ``Explainer(path)`` for an export with one .onnx file."""

    graph_roles = ("model",)

    def __init__(self, model: str | Path, tokenizer: str | Path | None = None, providers: list[str] | None = None,
                 self_check_tolerance: float = DEFAULT_SELF_CHECK_TOLERANCE, input_map: dict[str, str] | None = None,
                 cache: bool = True, *, encoder: str | Path | None = None, decoder: str | Path | None = None,
                 decoder_start_token_id: int | None = None, device: str | Device = "auto"):
        super().__init__(model, tokenizer, providers, self_check_tolerance, input_map, cache, device=device)
        self.refuse_options(decoder_start_token_id=decoder_start_token_id)
        # Fused attention/norm operators hide the probabilities: the unfused (same numbers) model runs,
        # split into one segment per layer.
        self.prepared: PreparedModel = prepare(self.files.onnx, cache=cache)
        self.prepared.analysis.require_complete()
        check_layer_count(self.config, self.prepared.analysis, LAYER_COUNT_KEYS["model"])
        self.load_tokenizer()
        self.prepared, self.session = self.sessions_of(
            self.prepared, lambda prepared: SegmentedSession(prepared, self.providers, self.input_map, device=self.device))
        check_tokenizer_fits(self.prepared, self.session.inputs.ids_name, self.text_encoder, self.files)
        check_special_tokens(self.text_encoder, self.config, self.files)
        self.int8 = self.prepared.dynamically_quantized
        self.labels = class_labels(self.config)
        self.causal = _causal_from_config(self.config)
        #: a sentence-transformers model's pooling, read from the files beside it: mean-pooled
        #: encoders are explained for the mean of their positions unless a target is given
        self.pooling: Pooling | None = declared_pooling(self.files.folder)
        # NumPy releases the GIL in its kernels, so layers and examples run in parallel threads.
        self._workers = os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self._workers)
        self._logit: LogitDecomposer | None = None  # built by the first explanation of a logit
        #: where the stream after the feed-forward blocks is found (on the first routes), and the
        #: session that hands it over
        self._sites: tuple[bool, StreamSites] | None = None
        self._routes_session: SegmentedSession | None = None

    @property
    def analysis(self) -> AttentionAnalysis:
        return self.prepared.analysis

    @property
    def blocks(self) -> list[AttentionBlock]:
        """Every attention block, in layer order (the prepared model's: the one the sessions run)."""
        return self.prepared.analysis.blocks

    @property
    def prepared_graphs(self) -> dict[str, PreparedModel]:
        return {"model": self.prepared}

    def _release(self) -> None:
        self._pool.shutdown(wait=True)
        self.session.close()
        if self._routes_session is not None:
            self._routes_session.close()
        if self._logit is not None:
            self._logit.close()

    def logit_decomposer(self) -> LogitDecomposer:
        """The logit decomposition's sessions and graphs, made on first use (docs/logit.md)."""
        if self._logit is None:
            self._logit = LogitDecomposer(self.prepared, self.providers, self.input_map, self.causal, self.labels,
                                          self.tokenizer, self.device)
        return self._logit

    @property
    def mean_pooled(self) -> bool:
        """Whether the model's files declare mean pooling (its default target is then "mean")."""
        classifier = any("logits" in name for name in self.prepared.graph_outputs)  # a head reads one position
        return self.pooling is not None and self.pooling.mode == "mean" and not self.causal and not classifier

    def explain(self, text: str | Sequence[str], target_text: str | Sequence[str | None] | None = None, *,
                full: bool = True, targets: Sequence[Target] | None = None, check: bool = True,
                baselines: bool = False, max_new_tokens: int = 32,
                logit: LogitQuery | Sequence[LogitQuery] | None = None,
                routes: RouteQuery | Sequence[RouteQuery] | None = None) -> Explanation | list[Explanation]:
        """Explain one text, or a list of texts run as one padded batch (``Explainer.explain``).

        With ``full=False`` only the attributions of ``targets`` (default: the default target) are
        kept, carried through the layers as row vectors: no L x S x S stack is held, which is what
        long inputs need (``contributions``, ``rollout`` and ``attention`` are then None). A target
        is a token position or "mean" (the average of every position: the default for a model whose
        files declare mean pooling, as sentence-transformers models do). With ``logit`` each
        explanation also holds the decomposition of that logit (``Explanation.logit``, docs/logit.md);
        a list gives one query per text. With ``routes`` each also holds the routes to its prediction
        (``Explanation.routes``, docs/routes.md).
        """
        self.require_open()
        self.require_no_target_text(target_text)
        texts = require_texts(text)
        logit = _queries(logit, len(texts))
        explanations = self.explain_batch(self.text_encoder.encode(texts), check=check, baselines=baselines, full=full,
                                          targets=None if targets is None else list(targets), logit=logit,
                                          routes=_queries(routes, len(texts), RouteQuery))
        return explanations[0] if isinstance(text, str) else explanations

    def routes(self, text: str | Sequence[str],
               query: RouteQuery | Sequence[RouteQuery] = RouteQuery()) -> RouteExplanation | list[RouteExplanation]:
        """The routes to the prediction alone (docs/routes.md): one run of the model, no ALTI, only the
        rows on a route decomposed: what long prompts need."""
        self.require_open()
        texts = require_texts(text)
        if query is None:
            raise InputError("routes() takes a RouteQuery, or one per text")
        found = self.explain_batch(self.text_encoder.encode(texts), full=False, routes=_queries(query, len(texts),
                                                                                             RouteQuery), alti=False)
        routes = [explanation.routes for explanation in found]
        return routes[0] if isinstance(text, str) else routes

    def explain_batch(self, batch: Batch, check: bool = True, baselines: bool = False, full: bool = True,
                      targets: list[int | str] | None = None, logit: list[LogitQuery] | None = None,
                      routes: list[RouteQuery] | None = None, alti: bool = True) -> list[Explanation]:
        """Explain a tokenized, right-padded batch in one onnxruntime run (one per length when the
        model takes no attention mask: it would attend to the padding)."""
        lengths = batch.lengths
        if self.session.inputs.has_mask or len(set(lengths)) <= 1:
            return self._explain_run(batch, check, baselines, full, targets, logit, routes, alti)
        explanations: list[Explanation | None] = [None] * len(lengths)
        for length in sorted(set(lengths)):
            rows = [row for row, n in enumerate(lengths) if n == length]
            queries = None if logit is None else [logit[row] for row in rows]
            wanted = None if routes is None else [routes[row] for row in rows]
            for row, explanation in zip(rows, self._explain_run(batch.rows(rows), check, baselines, full, targets,
                                                                queries, wanted, alti)):
                explanations[row] = explanation
        return explanations  # type: ignore[return-value]

    @one_blas_thread
    def _explain_run(self, batch: Batch, check: bool, baselines: bool, full: bool,
                     targets: list[int | str] | None, logit: list[LogitQuery] | None = None,
                     routes: list[RouteQuery] | None = None, alti: bool = True) -> list[Explanation]:
        """One onnxruntime run, the layers decomposed as their tensors arrive and then dropped: a few
        at a time (up to ``BUFFER_BYTES`` of attention), so that short texts keep every core busy
        with whole layers while long ones hold one layer at a time. OpenBLAS keeps one thread for
        the whole run, not only inside the decomposition: its worker, woken by a product on this
        thread (the rollout), spins for a while afterwards and takes a core from the next layers."""
        rows = range(len(batch.lengths))
        kept = [_kept_positions(batch.attention_mask[row]) for row in rows]
        layers: list[list[LayerContributions]] = [[] for _ in rows]
        stores = [LayerStore() for _ in rows] if not full else None
        causal = self.causal
        pending: list[tuple[int, BlockTensors]] = []
        decomposer = self.logit_decomposer() if logit is not None else None
        for query in logit or []:
            decomposer.require_fits(query)
        logit_run = None if decomposer is None else self._logit_run(batch, kept, logit)
        recorder = None if routes is None else RouteRecorder(self.blocks, kept, routes,
                                                             self.self_check_tolerance if check else None)
        head = self._route_head() if routes is not None else None
        post = None if routes is None else self._stream_sites(head is not None)
        if post is not None and post.names and decomposer is not None and decomposer.session is not None:
            decomposer.ensure_exposed(post.names)
        collected: dict[str, np.ndarray] = {} if logit_run is None else logit_run.collected

        def decompose_pending() -> None:
            nonlocal causal
            if causal is None:
                causal = _causal_attention(pending[0][1], kept)
            for (layer, tensors), computed_rows in zip(pending, self._decompose(pending, kept, baselines, full)):
                for row, computed in zip(rows, computed_rows):
                    _require_finite(layer, computed, tensors, row, kept[row])
                    if check:
                        self._self_check(layer, computed, batch.tokens[row])
                    if stores is not None:
                        stores[row].append(computed.contributions)
                        computed = LayerContributions(None, None, None, computed.reconstruction_error,
                                                      computed.output_scale)
                    layers[row].append(computed)
            pending.clear()

        def on_block(layer: int, tensors: BlockTensors) -> None:
            on_host = tensors.to_host() if logit_run is not None or recorder is not None else None  # their math is NumPy's
            if logit_run is not None and decomposer.decoder:
                for row, keep in zip(rows, kept):
                    logit_run.layers[row].append(capture_layer(
                        self.blocks[layer], *on_host.example(row, keep), logit_run.token_positions[row]))
            if recorder is not None:
                recorder.on_block(layer, on_host)
            if not alti:
                return
            pending.append((layer, tensors))
            if sum(t.nbytes for _, t in pending) >= BUFFER_BYTES or layer == len(self.blocks) - 1:
                decompose_pending()

        try:
            outputs = self._run(batch, on_block, decomposer, logit_run, collected, post, head is not None)
            if not alti:
                causal = bool(self.causal) if self.causal is not None else _causal_from_recorder(recorder)
            logits: list[LogitExplanation | None] = [None] * len(kept)
            if decomposer is not None:
                times = [_times_contributions(layers[row], None if stores is None else stores[row]) for row in rows]
                logits = decomposer.decompose(logit, logit_run, outputs, kept, times, check)
            found = [None] * len(kept) if recorder is None else \
                self._routes(recorder, batch, outputs, collected, head, causal, post)
            if not alti:
                return [_routes_only(batch, row, kept[row], found[row]) for row in rows]
            return [self._explanation(batch, row, kept[row], outputs, layers[row], causal,
                                      None if stores is None else stores[row], targets, logits[row], found[row])
                    for row in rows]
        finally:
            for store in stores or []:
                store.close()
            if recorder is not None:
                recorder.close()

    def _route_head(self) -> LogitDecomposer | None:
        """A language model's head (the last feed-forward block's share, the logit lens), or None."""
        if not self.causal or LOGITS not in self.prepared.graph_outputs or \
                len(self.prepared.segments) <= len(self.blocks) or \
                any(block.kind == "post" for block in self.blocks):
            return None
        return self.logit_decomposer()

    def _stream_sites(self, head: bool) -> StreamSites:
        """Where the run must hand over the stream after the feed-forward blocks (found once; the last
        layer's only where no language-model head gives it)."""
        if self._sites is None or self._sites[0] != head:
            found = StreamSites.find(self.prepared, [b.output for b in self.blocks], [b.kind for b in self.blocks],
                                     with_last=not head)
            self._sites = (head, found)
            if self._routes_session is not None:
                self._routes_session.close()
                self._routes_session = None
        return self._sites[1]

    def _routes(self, recorder: RouteRecorder, batch: Batch, outputs: dict[str, np.ndarray],
                collected: dict[str, np.ndarray], head: LogitDecomposer | None,
                causal: bool | None, post: StreamSites) -> list[RouteExplanation]:
        rows = range(len(recorder.kept))
        defaults = [self._default_target(len(batch.tokens[row]), causal) for row in rows]
        positions = [recorder.positions(row, defaults[row]) for row in rows]
        if head is None or not causal:
            return [recorder.explain(row, positions[row], None, None, self._decode,
                                     *post.of_row(collected, row, recorder.kept[row])) for row in rows]
        if any(len(at) != 1 for at in positions):
            raise InputError("a language model's routes lead to one next-token prediction: give a position (--target N), "
                             "not 'mean'")
        # the final residual at each row's prediction, from one run of the head; the lens through it
        padded = [int(np.arange(batch.attention_mask.shape[1])[keep][at[0]]) for keep, at in zip(recorder.kept, positions)]
        finals = head.final_residual(collected, padded, outputs[LOGITS])
        require_finite(finals, where="the final residual stream")

        def lens(vectors: np.ndarray, top: int) -> tuple[np.ndarray, ...]:
            return head.lens(vectors, collected, len(batch.lengths), batch.attention_mask.shape[1], top)

        return [recorder.explain(row, positions[row], finals[row], lens, self._decode) for row in rows]

    def _post_session(self, post: StreamSites) -> SegmentedSession:
        """The sessions that also hand over the stream after the feed-forward blocks (made once)."""
        if self._routes_session is None:
            self._routes_session = SegmentedSession(self.prepared, self.providers, self.input_map,
                                                    exposed=post.exposed(self.prepared), device=self.device)
        return self._routes_session

    def _logit_run(self, batch: Batch, kept: list, logit: list[LogitQuery]) -> LogitRun:
        """Where each row's logit is read: its last real token, or its query's ``position`` among its tokens."""
        positions, token_positions = [], []
        for row, keep in enumerate(kept):
            real = np.arange(batch.attention_mask.shape[1])[keep]
            at = len(real) - 1 if logit[row].position is None else logit[row].position
            if not -len(real) <= at < len(real):
                raise InputError(f"position {at} is outside the text's {len(real)} tokens")
            at %= len(real)
            positions.append(int(real[at]))
            token_positions.append(int(at))
        return LogitRun(positions, token_positions, [[] for _ in kept], {})

    def _run(self, batch: Batch, on_block, decomposer: LogitDecomposer | None = None,
             logit_run: LogitRun | None = None, collected: dict[str, np.ndarray] | None = None,
             post: StreamSites | None = None, head: bool = False) -> dict[str, np.ndarray]:
        try:
            if decomposer is None and post is not None and post.segments:  # the stream after the feed-forward blocks
                return self._post_session(post).stream(batch, on_block, collected, post.segments, post.names)
            if decomposer is None and head:  # the head's inputs, for the routes' last layer
                return self.session.stream(batch, on_block, collected, [len(self.prepared.segments) - 1])
            if decomposer is None:
                return self.session.stream(batch, on_block)
            if decomposer.session is not None:  # the whole model read linearly: what its sweep reads exposed
                every = range(len(self.prepared.segments))
                return decomposer.session.stream(batch, on_block, logit_run.collected, every)
            return self.session.stream(batch, on_block, logit_run.collected, [len(self.prepared.segments) - 1])
        except RuntimeFailure as exc:
            if self.text_encoder.max_length is None:  # nothing told us the limit, so the text may be too long
                raise RuntimeFailure(
                    f"the text may be longer than the model takes ({batch.input_ids.shape[1]} tokens, and no "
                    f"config.json or tokenizer_config.json beside the model gives the limit): {exc}"
                ) from None
            raise

    def _decompose(self, pending: list[tuple[int, BlockTensors]], kept: list, baselines: bool,
                   full: bool) -> list[list[LayerContributions]]:
        """The contributions of each pending layer for every row of the batch: for short right-padded
        texts, each layer's batch at once (``batch_contributions``), layers in parallel threads; else
        (layer, row) pairs in parallel threads when there are enough of them or the texts are short,
        else each text's rows of S split into blocks run in parallel."""
        workers = self._workers

        def one(index: int, row: int, map_blocks=map, parts: int = 1) -> LayerContributions:
            layer, tensors = pending[index]
            return layer_contributions(
                self.blocks[layer], *tensors.example(row, kept[row]),
                with_norms=baselines, with_attention=full, map_blocks=map_blocks, parts=parts,
            ).to_host()

        def whole_layer(index: int) -> list[LayerContributions]:
            layer, tensors = pending[index]
            return [c.to_host() for c in batch_contributions(
                self.blocks[layer], tensors.probs, tensors.values, tensors.residual, tensors.output,
                [k.stop for k in kept], with_norms=baselines, with_attention=full)]

        on_host = isinstance(pending[0][1].probs, np.ndarray)
        size = pending[0][1].probs.shape[-1]
        # (one BLAS thread each: ``_explain_run``, the only caller, holds OpenBLAS at one for the whole run)
        if len(kept) > 1 and size < _LONG and all(isinstance(k, slice) and k.start == 0 for k in kept):
            # short right-padded texts: each layer's block terms in one pass over the batch
            if on_host:
                return list(self._pool.map(whole_layer, range(len(pending))))
            return [on_device(lambda: whole_layer(index)) for index in range(len(pending))]
        jobs = [(index, row) for index in range(len(pending)) for row in range(len(kept))]
        if not on_host:  # a device takes one layer at a time, whole
            done = [on_device(lambda: one(index, row)) for index, row in jobs]
        elif len(jobs) >= 2 * workers or (len(jobs) > 1 and size < _LONG):
            done = list(self._pool.map(lambda job: one(*job), jobs))
        else:
            # several blocks a thread: a causal mask makes later rows costlier, and the queue evens that out
            done = [one(index, row, self._pool.map, 4 * workers) for index, row in jobs]
        return [done[index * len(kept):(index + 1) * len(kept)] for index in range(len(pending))]

    def _explanation(
        self,
        batch: Batch,
        row: int,
        keep: slice | np.ndarray,
        outputs: dict[str, np.ndarray],
        layers: list[LayerContributions],
        causal: bool | None,
        store: LayerStore | None,
        targets: list[int | str] | None,
        logit: LogitExplanation | None = None,
        routes: RouteExplanation | None = None,
    ) -> Explanation:
        causal = bool(causal)
        size = len(batch.tokens[row])
        default_target = self._default_target(size, causal)
        row_outputs = {name: value[row] for name, value in outputs.items()}
        last = int(np.flatnonzero(batch.attention_mask[row])[-1])  # its last real token, in the padded row
        common = dict(
            offsets=None if batch.offsets is None else batch.offsets[row],
            word_ids=None if batch.word_ids is None else batch.word_ids[row],
            text=None if batch.texts is None else batch.texts[row],
            tokens=batch.tokens[row],
            input_ids=[int(i) for i in batch.input_ids[row, keep]],
            reconstruction_error=np.array([layer.reconstruction_error for layer in layers]),
            default_target=default_target,
            outputs=row_outputs,
            prediction=None if causal else classify(row_outputs, self.labels),
            next_token=next_token(row_outputs, last, self._decode) if causal else None,
            logit=logit,
            routes=routes,
        )
        if store is not None:
            wanted = [default_target] if targets is None else list(targets)
            positions = list(dict.fromkeys(t % size for t in wanted if t != MEAN and -size <= t < size)) if size else []
            found = dict(zip(positions, store.rollout_rows(positions) if positions else np.zeros((0, size))))
            if MEAN in wanted and size:
                found[MEAN] = store.rollout_of(np.full((1, size), 1.0 / size))[0]
            return Explanation(contributions=None, rollout=None, attributions=found, **common)
        contributions = np.stack([layer.contributions for layer in layers])
        return Explanation(
            contributions=contributions,
            rollout=rollout(contributions),
            attention=np.stack([layer.attention for layer in layers]),
            norm_based=np.stack([layer.norms for layer in layers]) if layers[0].norms is not None else None,
            **common,
        )

    def _default_target(self, size: int, causal: bool | None) -> int | str:
        """What an explanation of ``size`` tokens is for by default: a decoder's last token, a mean-pooled
        encoder's mean, any other encoder's first token."""
        return size - 1 if causal else MEAN if self.mean_pooled else 0

    def _decode(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _self_check(self, layer: int, computed: LayerContributions, tokens: list[str]) -> None:
        check_layer(f"layer {layer}", computed, tokens, self.self_check_tolerance, self.int8)


def _queries(given, count: int, kind: type = LogitQuery) -> list | None:
    """One query per text (the same one for all, or one each): ``LogitQuery`` or ``RouteQuery``."""
    if given is None or isinstance(given, kind):
        return None if given is None else [given] * count
    queries = list(given) if isinstance(given, Sequence) and not isinstance(given, str) else [given]
    if len(queries) != count or not all(isinstance(q, kind) for q in queries):
        raise InputError(f"{'logit' if kind is LogitQuery else 'routes'} takes one {kind.__name__}, or one per text "
                         f"({count}); got {given!r:.80}")
    return queries


def _routes_only(batch: Batch, row: int, keep, routes: RouteExplanation) -> Explanation:
    """An explanation holding only its routes (``Explainer.routes``: no ALTI was computed)."""
    return Explanation(tokens=batch.tokens[row], input_ids=[int(i) for i in batch.input_ids[row, keep]],
                       contributions=None, rollout=None, reconstruction_error=np.zeros(0), routes=routes)


def _causal_from_recorder(recorder: RouteRecorder) -> bool:
    """Whether the first layer's attention is causal, from the kept probabilities (no ALTI ran to tell)."""
    kept = [slice(None)] * len(recorder.kept)
    first = [store.rows(0, np.arange(len(tensors[0][1])))[None] for store, tensors in
             zip(recorder.stores, recorder.tensors)]
    return any(_causal_attention(probs, kept[:1]) for probs in first)


def _times_contributions(layers: list[LayerContributions], store: LayerStore | None):
    """v @ C^l of one row's ALTI, from its layers or its layer store."""
    if store is not None:
        return lambda vector, layer: store.times_layer(vector[None], layer)[0]
    return lambda vector, layer: vector @ layers[layer].contributions


#: Texts at least this long have their rows split over the threads; shorter ones run a text and layer per thread.
_LONG = 256
#: Attention probabilities (bytes) of the layers decomposed together: all of a short text's layers,
#: one at a time for long texts or large batches.
BUFFER_BYTES = 64 << 20


def _require_finite(layer: int, computed: LayerContributions, t: BlockTensors, row: int, keep) -> None:
    """NaN or Inf anywhere in a block's tensors makes its decomposition error non-finite: refuse the
    explanation (NaN would otherwise be normalized into zero rows), naming the tensor."""
    if not (np.isfinite(computed.reconstruction_error) and np.all(np.isfinite(computed.contributions))):
        names = ("attention probabilities", "values", "block input", "block output")
        parts = dict(zip(names, t.to_host().example(row, keep)))
        bad = [name for name, array in parts.items() if not np.all(np.isfinite(array))] or ["decomposition"]
        raise NonFiniteError(
            f"the model produced NaN or Inf in layer {layer} ({', '.join(bad)}): no explanation of this text is "
            "meaningful (a float16 overflow, or NaN weights?)"
        )




def _causal_from_config(config: dict) -> bool | None:
    """A causal language model by config.json's architectures (``*ForCausalLM``, ``*LMHeadModel``);
    None when the config does not say, and the attention itself has to tell."""
    architectures = config.get("architectures")
    if not isinstance(architectures, list) or not architectures:
        return None
    return any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)


def _causal_attention(tensors: BlockTensors, kept: list) -> bool:
    """Causal when no row attends to a later real token (the first block's probabilities are
    lower-triangular) and some row has two tokens to tell by: a decoder without a config saying so
    (an encoder's Softmax is positive everywhere unmasked)."""
    xp = namespace(tensors.probs)
    seen = False
    for row, keep in enumerate(kept):
        square = tensors.example(row, keep)[0]
        if square.shape[-1] < 2:
            continue
        if bool(xp.any(xp.triu(square, k=1) != 0)):
            return False
        seen = True
    return seen


def _kept_positions(mask: np.ndarray) -> slice | np.ndarray:
    """The unpadded positions of one row: a slice when they are contiguous (a view, no copy)."""
    positions = np.flatnonzero(mask)
    if len(positions) and positions[-1] - positions[0] + 1 == len(positions):
        return slice(int(positions[0]), int(positions[-1]) + 1)
    return positions
