"""The routes of a layout's run (docs/routes.md): what the run keeps for them, and the trace.

During a single graph's run each layer's block tensors of every row are kept (``RouteRecorder``:
the attention in a ``ProbsStore``, spilled to a file past its budget); after it, ``routes.trace``
asks, from the last layer down, for the rows on a route to the prediction. A language model's head
gives the final residual at the prediction's position (the last feed-forward block's share) and the
logit lens of the nodes and heads; elsewhere the run hands over the stream after the feed-forward
blocks that no block tensor shows (``StreamSites``). An encoder-decoder's routes (``seq2seq_routes``)
are traced through its decoder, then its encoder, from the tensors of its run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from alti_onnx.decomposition.components import head_vectors
from alti_onnx.decomposition.contributions import one_blas_thread
from alti_onnx.decomposition.route_layers import FFN_KINDS, BlockRoutes, DecoderLayerRoutes, PostNorm, ProbsStore
from alti_onnx.decomposition.routes import Node, RouteGraph, trace
from alti_onnx.errors import InputError, ModelWarning, NonFiniteError
from alti_onnx.results.record import MEAN
from alti_onnx.results.routes import HeadLens, LensToken, RouteExplanation, RouteQuery, Seq2SeqRoutes
from alti_onnx.runtime.linear_graph import PostNormSite, SegmentValues, post_norm_site, read_segment, stream_sums
from alti_onnx.runtime.prepared import PreparedModel
from alti_onnx.runtime.sessions import BlockTensors
from graph_rewrites import AttentionBlock


class RouteRecorder:
    """Keeps one run's block tensors for the rows whose routes were asked for (``queries``: one per row)."""

    def __init__(self, blocks: list[AttentionBlock], kept: list, queries: list[RouteQuery],
                 tolerance: float | None = None):
        self.blocks, self.kept, self.queries = blocks, kept, queries
        self.tolerance = tolerance  # the blocks' self-check (None: not checked)
        self.stores = [ProbsStore() for _ in kept]
        self.tensors: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in kept]

    def on_block(self, layer: int, tensors: BlockTensors) -> None:
        for row, keep in enumerate(self.kept):
            probs, *parts = tensors.example(row, keep)
            if not all(np.all(np.isfinite(a)) for a in (probs, *parts)):
                raise NonFiniteError(f"the model produced NaN or Inf in layer {layer}: no route is meaningful")
            self.stores[row].append(probs)
            self.tensors[row].append(tuple(np.array(a, dtype=np.float32) for a in parts))

    def close(self) -> None:
        for store in self.stores:
            store.close()

    def positions(self, row: int, default: int | str) -> list[int]:
        """The prediction's positions among the row's tokens: the query's, or the default target
        (every position for "mean": a mean-pooled encoder's prediction reads them all)."""
        size = len(self.tensors[row][0][1])
        wanted = self.queries[row].position
        if wanted is None:
            wanted = default
        if wanted == MEAN:
            return list(range(size))
        if not -size <= wanted < size:
            raise InputError(f"routes position {wanted} is outside the text's {size} tokens")
        return [wanted % size]

    def layers(self, row: int, final: np.ndarray | None, positions: list[int],
               post_norms: Sequence[PostNorm | None] = (), last_output: np.ndarray | None = None) -> list[BlockRoutes]:
        """The row's layers for the trace. The stream after the last layer is ``last_output`` [S, D], or
        ``final`` at ``positions`` (a decoder's head gives it there), or unknown (None: the last
        feed-forward block is not a node); ``post_norms[l]``: a post-LN layer's sum and norm."""
        found = []
        tensors = self.tensors[row]
        for layer, (block, (values, residual, output)) in enumerate(zip(self.blocks, tensors)):
            last = layer + 1 == len(tensors)
            norm = post_norms[layer] if layer < len(post_norms) else None
            after, at = None, None
            if block.kind in FFN_KINDS or norm is not None:
                if not last:
                    after = tensors[layer + 1][1]
                elif last_output is not None:
                    after = last_output
                elif final is not None:
                    after, at = final, np.asarray(positions)
            found.append(BlockRoutes(block, self.stores[row], layer, values, residual, output, after, at, norm))
            found[-1].tolerance = self.tolerance
        return found

    def explain(self, row: int, positions: list[int], final: np.ndarray | None,
                lens: Callable[[np.ndarray, int], tuple[np.ndarray, ...]] | None, decode: Callable[[int], str],
                post_norms: Sequence[PostNorm | None] = (), last_output: np.ndarray | None = None) -> RouteExplanation:
        """The row's route explanation to its prediction at ``positions``: the trace (``final``: the
        stream after the last layer there, [D], or None; ``post_norms`` and ``last_output``: see
        ``layers``), and the logit lens where ``lens`` is given."""
        query = self.queries[row]
        layers = self.layers(row, None if final is None else np.asarray(final)[None], positions, post_norms,
                             last_output)
        with one_blas_thread():  # small matmuls: OpenBLAS's own threads only slow them (decomposition.contributions)
            graph = trace(layers, positions, query.threshold, query.renormalize)
        position: int | str = positions[0] if len(positions) == 1 else MEAN
        if lens is None or query.lens == 0 or len(positions) != 1:
            return RouteExplanation(graph, position, query.renormalize)
        nodes, heads = self._lens(graph, layers, positions[0], lens, query.lens, decode)
        return RouteExplanation(graph, position, query.renormalize, nodes, heads)

    def _lens(self, graph: RouteGraph, layers: list[BlockRoutes], position: int,
              lens: Callable[[np.ndarray, int], tuple[np.ndarray, ...]], top: int,
              decode: Callable[[int], str]) -> tuple[dict[Node, list[LensToken]], list[HeadLens]]:
        """What each node's stream and each head's output at the prediction promote (and suppress)."""
        vectors = [_node_vector(node, layers) for node in graph.nodes]
        at = np.array([position])
        heads = [head_vectors(layer.block, layer.store.rows(layer.layer, at)[:, 0], layer.values)
                 for layer in layers]  # [H, D] each: the heads' terms at the prediction's position
        stacked = np.concatenate([np.asarray(vectors).reshape(-1, layers[0].residual.shape[-1]), *heads])
        high, high_logits, low, low_logits = lens(stacked, top)

        def tokens(ids: np.ndarray, logits: np.ndarray) -> list[LensToken]:
            return [LensToken(int(t), decode(int(t)), float(v)) for t, v in zip(ids, logits)]

        nodes = {node: tokens(high[k], high_logits[k]) for k, node in enumerate(graph.nodes)}
        head_lens = []
        offset = len(graph.nodes)
        for number, found in enumerate(heads):
            for head in range(len(found)):
                k = offset + head
                head_lens.append(HeadLens(number, head, tokens(high[k], high_logits[k]), tokens(low[k], low_logits[k])))
            offset += len(found)
        return nodes, head_lens


def _node_vector(node: Node, layers: Sequence[BlockRoutes]) -> np.ndarray:
    """The residual stream at a node: the embeddings, after a layer's attention, or after its feed-forward block."""
    site, layer, position = node
    at = np.array([position])
    if site == "embedding":
        return np.asarray(layers[0].residual[position], dtype=np.float64)
    if site == "attention":
        return layers[layer].stream_after_attention(at)[0]
    return layers[layer].stream_after(at)[0]


def seq2seq_routes(encoder_blocks: list[AttentionBlock], self_blocks: list[AttentionBlock],
                   cross_blocks: list[AttentionBlock], encoder_tensors: list[BlockTensors],
                   decoder_tensors: list[BlockTensors], row: int, keep: np.ndarray, targets: int,
                   query: RouteQuery, encoder_streams: tuple[list[PostNorm | None], np.ndarray | None] = ([], None),
                   decoder_streams: tuple[list[PostNorm | None], np.ndarray | None] = ([], None),
                   tolerance: float | None = None) -> Seq2SeqRoutes:
    """The routes of one pair of an encoder-decoder run (every block's tensors held): the decoder's
    graph to the prediction at its position (default: the last), its cross-attention edges leaving
    from encoder positions, and the encoder's graph to those positions. ``*_streams``: each stack's
    post-LN sums and the stream after its last layer (``StreamSites.of_row``), where the run gave them."""
    position = targets - 1 if query.position is None else query.position
    if position == MEAN:
        raise InputError("an encoder-decoder's routes lead to one output position's prediction, not 'mean'")
    if not -targets <= position < targets:
        raise InputError(f"routes position {position} is outside the output's {targets} tokens")
    position %= targets
    stores = [ProbsStore() for _ in range(3)]
    try:
        def layers(blocks, tensors, store, rows, columns, streams) -> list[BlockRoutes]:
            norms, last_output = streams
            found = []
            for layer, (block, t) in enumerate(zip(blocks, tensors)):
                probs = t.probs[row][:, rows][:, :, columns]
                parts = (t.values[row][:, columns], t.residual[row][rows], t.output[row][rows])
                if not all(np.all(np.isfinite(a)) for a in (probs, *parts)):
                    raise NonFiniteError(f"the model produced NaN or Inf in layer {layer}: no route is meaningful")
                store.append(probs)
                found.append((block, layer, *(np.array(a, dtype=np.float32) for a in parts)))
            stack = []
            for block, layer, values, residual, output in found:
                norm = norms[layer] if layer < len(norms) else None
                after = None  # the stream after the layer: the next one's input, after the last what the run gave
                if block.kind in FFN_KINDS or norm is not None:
                    after = found[layer + 1][3] if layer + 1 < len(found) else last_output
                stack.append(BlockRoutes(block, store, layer, values, residual, output, after, None, norm))
                stack[-1].tolerance = tolerance
            return stack

        decoder_rows = np.arange(targets)
        encoder = layers(encoder_blocks, encoder_tensors, stores[0], keep, keep, encoder_streams)
        own = layers(self_blocks, decoder_tensors[0::2], stores[1], decoder_rows, decoder_rows, decoder_streams)
        cross = []
        for layer, (block, t) in enumerate(zip(cross_blocks, decoder_tensors[1::2])):
            probs = t.probs[row][:, :targets][:, :, keep]
            parts = (t.values[row][:, keep], t.residual[row][:targets], t.output[row][:targets])
            require_finite(probs, *parts, where=f"the decoder's layer {layer} cross-attention")
            stores[2].append(probs)
            cross.append((block, *parts))
        decoder = []
        for routes, (block, values, residual, output) in zip(own, cross):
            decoder.append(DecoderLayerRoutes(routes, block, stores[2], np.asarray(values, dtype=np.float32),
                                              np.asarray(residual, dtype=np.float32),
                                              np.asarray(output, dtype=np.float32)))
            decoder[-1].tolerance = tolerance
        with one_blas_thread():
            graph = trace(decoder, [position], query.threshold, query.renormalize)
            sources = sorted({e.source for e in graph.edges if e.kind == "cross_attention"})
            encoder_graph = trace(encoder, sources, query.threshold, query.renormalize) if sources else \
                RouteGraph(query.threshold, [], [])
    finally:
        for store in stores:
            store.close()
    return Seq2SeqRoutes(RouteExplanation(graph, position, query.renormalize), encoder_graph)


@dataclass
class StreamSites:
    """Where the stream after a feed-forward block is no block tensor, found by structure in the
    segment after each layer's attention, with the number of the segment that computes it: each
    post-LN layer's sum u = y + f and the norm after it (``post``), and the stream after a pre-LN or
    sandwich stack's last layer, the input of its final norm (``last``)."""

    post: dict[int, tuple[int, PostNormSite]]
    weights: dict[int, tuple[np.ndarray, np.ndarray | None]]
    last: tuple[int, str] | None
    layers: int
    #: post-LN layers whose sum and norm were not found (their feed-forward block stays in the stream)
    unsplit: tuple[int, ...] = ()

    @classmethod
    def find(cls, prepared: PreparedModel, streams: list[str], kinds: list[str], with_last: bool = True) -> StreamSites:
        """``streams[l]``: the stream after layer l's attention (its block's output tensor)."""
        post: dict[int, tuple[int, PostNormSite]] = {}
        weights: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        last = None
        unsplit: list[int] = []
        for layer, (stream, kind) in enumerate(zip(streams, kinds)):
            final = layer == len(streams) - 1
            if kind != "post" and not (with_last and final and kind in ("pre", "sandwich")):
                continue
            number = next((k for k, s in enumerate(prepared.segments) if stream in s.inputs), None)
            if number is None:
                unsplit += [layer] if kind == "post" else []
                continue
            graph = read_segment(prepared.segments[number])
            if kind == "post":
                site = post_norm_site(graph, stream)
                if site is None:
                    unsplit.append(layer)
                else:
                    values = SegmentValues([graph], prepared.weights_dir, {})
                    post[layer] = (number, site)
                    weights[layer] = (np.asarray(values(site.scale), dtype=np.float64),
                                      None if site.bias is None else np.asarray(values(site.bias), dtype=np.float64))
            else:
                sums = stream_sums(graph, stream)
                if sums:
                    last = (number, sums[0])
        if unsplit:
            warnings.warn(f"the feed-forward block of post-LN layer {unsplit[0]} (of {len(unsplit)}) is not split out of "
                          "the stream in the routes: no LayerNormalization of its residual sum was found (another norm "
                          "form); its share stays in the next layer's edges", ModelWarning, stacklevel=3)
        return cls(post, weights, last, len(streams), tuple(unsplit))

    @property
    def segments(self) -> list[int]:
        return sorted({number for number, _ in self.post.values()} | ({self.last[0]} if self.last else set()))

    @property
    def names(self) -> set[str]:
        found = {name for _, site in self.post.values() for name in (site.total, site.output)}
        return found | ({self.last[1]} if self.last else set())

    def exposed(self, prepared: PreparedModel) -> dict[int, list[str]]:
        """The tensors a session must hand over, by segment (those that are not its outputs already)."""
        exposed: dict[int, list[str]] = {}
        for number in self.segments:
            outputs = prepared.segments[number].outputs
            names = [name for n, site in self.post.values() if n == number for name in (site.total, site.output)]
            names += [self.last[1]] if self.last and self.last[0] == number else []
            exposed[number] = [name for name in names if name not in outputs]
        return exposed

    def of_row(self, collected: dict[str, np.ndarray], row: int, rows) -> tuple[list[PostNorm | None], np.ndarray | None]:
        """One example's post-LN sums, and the stream after its last layer where the run handed it over."""
        norms: list[PostNorm | None] = [None] * self.layers
        last_output = None
        for layer, (_, site) in self.post.items():
            scale, bias = self.weights[layer]
            norms[layer] = PostNorm(np.asarray(collected[site.total][row][rows], dtype=np.float64), scale, bias,
                                    site.epsilon)
            if layer == self.layers - 1:
                last_output = np.asarray(collected[site.output][row][rows], dtype=np.float64)
        if self.last is not None:
            last_output = np.asarray(collected[self.last[1]][row][rows], dtype=np.float64)
        found = [norm.total for norm in norms if norm is not None] + ([] if last_output is None else [last_output])
        require_finite(*found, where="the stream after a feed-forward block")
        return norms, last_output


def require_finite(*arrays: np.ndarray, where: str) -> None:
    """NaN or Inf in what the routes are measured with is an error, not a missing edge (a row's
    shares normalize to zero where its distances are NaN)."""
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise NonFiniteError(f"the model produced NaN or Inf in {where}: no route is meaningful (a float16 "
                             "overflow, or NaN weights?)")
