"""An encoder-decoder export (``encoder_model.onnx`` + ``decoder_model.onnx``): ALTI+.

The encoder runs as any encoder does; the decoder is fed the encoder's output and a target
prefix, teacher-forced (a given target) or grown by greedy generation on the plain decoder
(NumPy loop, onnxruntime only), then run once instrumented over the whole sequence. The math is
``decomposition.alti_plus`` (docs/alti.md, "Encoder-decoder models: ALTI+").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from alti_onnx.decomposition.alti_plus import combined_rollout, cross_contributions
from alti_onnx.decomposition.contributions import LayerContributions, layer_contributions, rollout
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
from alti_onnx.layouts.routes import StreamSites, seq2seq_routes
from alti_onnx.results.record import Target
from alti_onnx.results.routes import RouteQuery
from alti_onnx.results.seq2seq import Seq2SeqExplanation
from alti_onnx.runtime.devices import Device, on_device
from alti_onnx.runtime.model_files import read_json_object
from alti_onnx.runtime.model_inputs import FLOAT_TYPES, INTEGER_TYPES
from alti_onnx.runtime.prepared import PreparedModel, prepare
from alti_onnx.runtime.sessions import (
    SegmentedSession,
    plain_session,
    session_inputs,
)
from alti_onnx.runtime.text_inputs import Batch
from graph_rewrites import AttentionBlock

#: The longest output explained when the config gives no number of positions (T5's are relative).
MAX_TARGET_TOKENS = 1024


class EncoderDecoderExplainer(Explainer):
    """ALTI+ for an optimum encoder-decoder export directory (Marian, BART, T5, M2M100, ...):
    ``Explainer(path)`` for a folder with encoder_model.onnx and decoder_model.onnx.

    ``explain(source, target)`` teacher-forces ``target`` (tokenized as the model's labels);
    without a target the model's greedy output (stopping at EOS or after ``max_new_tokens``) is
    generated and explained. Every decoder layer must hold one self-attention block and then one
    cross-attention block.
    """

    graph_roles = ("encoder", "decoder")
    takes_target_text = True

    def __init__(self, model: str | Path, tokenizer: str | Path | None = None, providers: list[str] | None = None,
                 self_check_tolerance: float = DEFAULT_SELF_CHECK_TOLERANCE, input_map: dict[str, str] | None = None,
                 cache: bool = True, *, encoder: str | Path | None = None, decoder: str | Path | None = None,
                 decoder_start_token_id: int | None = None, device: str | Device = "auto"):
        if input_map:
            raise InputError("--input-map is for single-graph models; an encoder-decoder export's inputs are optimum's")
        super().__init__(model, tokenizer, providers, self_check_tolerance, input_map, cache, encoder=encoder,
                         decoder=decoder, device=device)
        generation = self.files.folder / "generation_config.json"
        self.generation = read_json_object(generation, "generation config") if generation.exists() else {}
        self.start_id = (decoder_start_token_id if decoder_start_token_id is not None
                         else _first_int("decoder_start_token_id", self.generation, self.config))
        self.eos_id = _first_int("eos_token_id", self.generation, self.config)
        if self.start_id is None:
            raise InputError(f"{self.files.folder}: neither generation_config.json nor config.json gives "
                             "decoder_start_token_id, the decoder's first token: pass --decoder-start-token-id ID "
                             "(API: decoder_start_token_id=ID; T5 and Flan-T5 start from the pad token, 0)")
        providers = self.providers
        encoder = prepare(self.files.graphs["encoder"], cache=cache)
        decoder = prepare(self.files.graphs["decoder"], cache=cache)
        self.encoder_blocks = encoder.analysis.require_complete()
        decoder_blocks = decoder.analysis.require_complete()
        check_layer_count(self.config, encoder.analysis, LAYER_COUNT_KEYS["encoder"], "encoder")
        check_layer_count(self.config, decoder.analysis, LAYER_COUNT_KEYS["decoder"], "decoder")
        self.self_blocks, self.cross_blocks = _decoder_layers(decoder_blocks)
        memory, memory_mask = _memory_inputs(decoder.graph_inputs)
        self._memory, self._memory_mask = memory, memory_mask
        fed = [n for n in (memory, memory_mask) if n]
        self.load_tokenizer()
        decoder_inputs = session_inputs(decoder, fed_by_caller=fed)
        for prepared, inputs in ((encoder, session_inputs(encoder)), (decoder, decoder_inputs)):
            check_tokenizer_fits(prepared, inputs.ids_name, self.text_encoder, self.files)
        check_special_tokens(self.text_encoder, self.config, self.files)
        #: the longest output the decoder's positions take (config.json), else a bound on generation's work
        positions = self.config.get("max_position_embeddings")
        self.max_target_tokens = positions if isinstance(positions, int) and positions > 0 else MAX_TARGET_TOKENS
        rows = decoder.embedding_rows.get(decoder_inputs.ids_name)
        self.forced_first, self.banned = self._generation_ids(
            rows or self.text_encoder.tokenizer.get_vocab_size(with_added_tokens=True))
        encoder, self.encoder_session = self.sessions_of(encoder, lambda prepared: SegmentedSession(prepared, providers))
        decoder, self.decoder_session = self.sessions_of(
            decoder, lambda prepared: SegmentedSession(prepared, providers, fed_by_caller=fed))
        self._prepared = {"encoder": encoder, "decoder": decoder}
        self.int8 = encoder.dynamically_quantized or decoder.dynamically_quantized
        self._plain_decoder = plain_session(self.files.graphs["decoder"], providers)
        self._sites: dict[str, StreamSites] | None = None  # the routes' (``_stream_sites``)
        self._route_sessions: dict[str, SegmentedSession] = {}

    @property
    def prepared_graphs(self) -> dict[str, PreparedModel]:
        return dict(self._prepared)

    def corpus_options(self) -> dict[str, object]:
        return {**super().corpus_options(), "decoder_start_token_id": self.start_id}

    def _release(self) -> None:
        self.encoder_session.close()
        self.decoder_session.close()
        for session in self._route_sessions.values():
            session.close()
        self._plain_decoder = None

    # ------------------------------------------------------------------ API
    def explain(self, text: str | Sequence[str], target_text: str | Sequence[str | None] | None = None, *,
                full: bool = True, targets: Sequence[Target] | None = None, check: bool = True,
                baselines: bool = False, max_new_tokens: int = 32,
                logit: object = None,
                routes: RouteQuery | None = None) -> Seq2SeqExplanation | list[Seq2SeqExplanation]:
        """ALTI+ of each source and its target (teacher-forced), or of the model's greedy output
        (``target_text`` None, or None for that source). Every matrix is kept (``full`` and ``targets``
        choose what ``to_record`` writes); the self-check is always enforced. No logit decomposition
        (``logit``) yet: refused. ``routes`` adds the routes to one output token's prediction (its
        ``position``, default the last), through the decoder and, from its cross-attention, the encoder."""
        self.require_open()
        self.refuse_options(baselines=baselines)
        if logit is not None:
            raise InputError("--logit explains classifiers and decoders in one graph; an encoder-decoder's logits are "
                             "not decomposed yet")
        if not check:
            raise InputError("an encoder-decoder's self-check cannot be turned off")
        if routes is not None and not isinstance(routes, RouteQuery):
            raise InputError(f"routes takes one RouteQuery for every pair, got {type(routes).__name__}")
        sources = require_texts(text)
        if target_text is None or isinstance(target_text, str):
            wanted = [target_text] * len(sources)
        else:
            wanted = list(target_text)
        if len(wanted) != len(sources):
            raise InputError(f"{len(sources)} sources but {len(wanted)} targets")
        results: list[Seq2SeqExplanation | None] = [None] * len(sources)
        for given in (True, False):  # pairs with a target and sources to generate from run apart
            rows = [k for k, t in enumerate(wanted) if (t is not None) == given]
            if rows:
                found = self.explain_batch([sources[k] for k in rows], [wanted[k] for k in rows] if given else None,
                                           max_new_tokens, routes)
                for k, explanation in zip(rows, found):
                    results[k] = explanation
        return results[0] if isinstance(text, str) else results  # type: ignore[return-value]

    def explain_batch(self, sources: list[str], targets: list[str] | None = None,
                      max_new_tokens: int = 32, routes: RouteQuery | None = None) -> list[Seq2SeqExplanation]:
        """Several sources (and targets) in one padded batch; each result equals its pair's alone."""
        if targets is not None and len(targets) != len(sources):
            raise InputError(f"{len(sources)} sources but {len(targets)} targets")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max new tokens must be a positive integer, got {max_new_tokens!r}")
        if max_new_tokens > self.max_target_tokens:
            raise InputError(f"--max-new-tokens {max_new_tokens} is more than the decoder takes "
                             f"({self.max_target_tokens} tokens)")
        batch = self.text_encoder.encode(list(sources))
        sites = self._stream_sites() if routes is not None else None
        collected: dict[str, dict[str, np.ndarray]] = {"encoder": {}, "decoder": {}}
        if sites is None:
            encoded, encoder_tensors = self.encoder_session.run(batch)
        else:
            session = self._route_sessions["encoder"]
            encoded, encoder_tensors = _run_collecting(session, session.batch_feeds(batch), collected["encoder"],
                                                       sites["encoder"].segments, sites["encoder"].names)
        memory = next(iter(encoded.values())) if len(encoded) == 1 else encoded[self.encoder_session.original_outputs[0]]
        if targets is None:
            labels = self._generate(memory, batch.attention_mask, max_new_tokens)
        else:
            labels = self.text_encoder.token_ids(list(targets))
            longest = max(len(row) for row in labels)
            if longest > self.max_target_tokens:
                raise InputError(f"the target is {longest} tokens, more than the decoder takes "
                                 f"({self.max_target_tokens} tokens)")
        decoder_ids = [[self.start_id, *row[:-1]] for row in labels]
        decoder_batch = Batch.padded(decoder_ids, self.text_encoder.pad_id)
        feeds = {**self.decoder_session.inputs.feeds(decoder_batch), self._memory: memory.astype(np.float32, copy=False)}
        if self._memory_mask:
            feeds[self._memory_mask] = batch.attention_mask
        if sites is None:
            outputs, decoder_tensors = self.decoder_session.run_feeds(feeds)
        else:
            outputs, decoder_tensors = _run_collecting(self._route_sessions["decoder"], feeds, collected["decoder"],
                                                       sites["decoder"].segments, sites["decoder"].names)
        logits = outputs.get(self.decoder_session.original_outputs[0])
        for row, ids in enumerate(decoder_ids):  # generation checks its own; a given target's are checked here
            if logits is not None and not np.all(np.isfinite(logits[row, : len(ids)])):
                raise NonFiniteError("the decoder produced NaN or Inf logits for this target: no explanation of it is "
                                     "meaningful (a float16 overflow, or NaN weights?)")
        explanations = [self._explanation(row, batch, labels[row], decoder_ids[row], encoder_tensors, decoder_tensors,
                                          generated=targets is None) for row in range(len(sources))]
        if routes is None:
            return explanations
        found = []
        for row, explanation in enumerate(explanations):
            keep, targets = np.flatnonzero(batch.attention_mask[row]), len(decoder_ids[row])
            found.append(replace(explanation, routes=seq2seq_routes(
                self.encoder_blocks, self.self_blocks, self.cross_blocks, encoder_tensors, decoder_tensors, row,
                keep, targets, routes, sites["encoder"].of_row(collected["encoder"], row, keep),
                sites["decoder"].of_row(collected["decoder"], row, np.arange(targets)), self.self_check_tolerance)))
        return found

    def _stream_sites(self) -> dict[str, StreamSites]:
        """Where each stack's run hands over the stream after its feed-forward blocks (post-LN sums,
        the last layer's output), and the sessions that do (made on the first routes)."""
        if self._sites is None:
            streams = {"encoder": self.encoder_blocks, "decoder": self.cross_blocks}  # the feed-forward's input
            self._sites = {role: StreamSites.find(self._prepared[role], [b.output for b in blocks],
                                                  [b.kind for b in blocks]) for role, blocks in streams.items()}
            fed = [n for n in (self._memory, self._memory_mask) if n]
            self._route_sessions = {
                role: SegmentedSession(self._prepared[role], self.providers,
                                       fed_by_caller=fed if role == "decoder" else (),
                                       exposed=self._sites[role].exposed(self._prepared[role]))
                for role in ("encoder", "decoder")}
        return self._sites

    # ------------------------------------------------------------------ generation
    def _generation_ids(self, vocabulary: int) -> tuple[int | None, list[int]]:
        """The forced first token and the banned single tokens of generation_config.json, with the start
        token, each a token of the decoder's ``vocabulary``: an id outside it is refused in one line
        (it would be explained as a token that does not exist, or ban another one)."""
        def token(key: str, value: object) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocabulary:
                raise InputError(f"{self.files.folder}: {key} is {value!r}, not a token of the decoder's "
                                 f"{vocabulary}-token vocabulary")
            return value

        token("decoder_start_token_id", self.start_id)
        forced = _first_int("forced_bos_token_id", self.generation, self.config)
        banned = []
        for ids in self.generation.get("bad_words_ids") or []:
            if isinstance(ids, list) and len(ids) == 1:  # longer sequences are not banned by greedy steps
                banned.append(token("generation_config.json's bad_words_ids", ids[0]))
        return (None if forced is None else token("forced_bos_token_id", forced)), banned

    def _generate(self, memory: np.ndarray, mask: np.ndarray, max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding on the plain decoder: each row until EOS (kept) or ``max_new_tokens``."""
        rows = len(memory)
        sequences = np.full((rows, 1), self.start_id, dtype=np.int64)
        done = np.zeros(rows, dtype=bool)
        forced_first, banned = self.forced_first, self.banned
        fixed = {self._memory: memory.astype(np.float32, copy=False)}
        if self._memory_mask:
            fixed[self._memory_mask] = mask
        for step in range(max_new_tokens):
            feeds = {**self.decoder_session.inputs.feeds(Batch.padded(sequences.tolist(), self.text_encoder.pad_id)), **fixed}
            try:
                logits = self._plain_decoder.run(None, feeds)[0][:, -1].astype(np.float64)
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
                raise RuntimeFailure(f"onnxruntime failed to run the decoder: {str(exc).splitlines()[0]}") from None
            if not np.all(np.isfinite(logits)):
                raise RuntimeFailure("the decoder produced NaN or Inf logits")
            logits[:, banned] = -np.inf
            chosen = logits.argmax(-1)
            if step == 0 and forced_first is not None:
                chosen[:] = forced_first
            chosen[done] = self.text_encoder.pad_id
            sequences = np.concatenate([sequences, chosen[:, None]], axis=1)
            done |= chosen == self.eos_id
            if done.all():
                break
        labels = []
        for row in sequences[:, 1:]:
            ends = np.flatnonzero(row == self.eos_id)
            labels.append(row[: ends[0] + 1 if len(ends) else len(row)].tolist())
        return labels

    # ------------------------------------------------------------------ math
    def _explanation(self, row: int, batch: Batch, labels: list[int], decoder_ids: list[int], encoder_tensors,
                     decoder_tensors, generated: bool) -> Seq2SeqExplanation:
        keep = np.flatnonzero(batch.attention_mask[row])
        sources = len(keep)
        targets = len(decoder_ids)
        source_tokens = [batch.tokens[row][k] for k in range(sources)]
        decoder_tokens = [self._token(t) for t in decoder_ids]
        errors: list[float] = []

        def decomposed(decompose, block: AttentionBlock, *arrays: np.ndarray) -> LayerContributions:
            """``decompose(block, *arrays)`` where the math runs (the run is the host's: one copy to a GPU),
            back on the host."""
            moved = [self.device.to_math(np.ascontiguousarray(a)) for a in arrays]
            return on_device(lambda: decompose(block, *moved)).to_host()

        def self_attention(block: AttentionBlock, *arrays) -> LayerContributions:
            return layer_contributions(block, *arrays, with_norms=False, with_attention=False)

        encoder_layers = []
        for layer, (block, t) in enumerate(zip(self.encoder_blocks, encoder_tensors)):
            computed = decomposed(self_attention, block, *t.example(row, keep))
            self._check(f"encoder layer {layer}", computed, source_tokens, errors)
            encoder_layers.append(computed.contributions)
        encoder_stack = np.stack(encoder_layers)
        encoder_rollout = rollout(encoder_stack)

        own, cross = [], []
        for layer, (self_block, cross_block) in enumerate(zip(self.self_blocks, self.cross_blocks)):
            t = decoder_tensors[2 * layer]
            computed = decomposed(self_attention, self_block, *t.example(row, slice(0, targets)))
            self._check(f"decoder layer {layer} (self-attention)", computed, decoder_tokens, errors)
            own.append(computed.contributions)
            t = decoder_tensors[2 * layer + 1]
            computed = decomposed(cross_contributions, cross_block, t.probs[row][:, :targets][:, :, keep],
                                  t.values[row][:, keep], t.residual[row][:targets], t.output[row][:targets])
            self._check(f"decoder layer {layer} (cross-attention)", computed, decoder_tokens, errors)
            cross.append(computed.contributions)
        combined = combined_rollout(encoder_rollout[-1], own, cross)
        return Seq2SeqExplanation(
            tokens=source_tokens, input_ids=[int(i) for i in batch.input_ids[row, keep]],
            decoder_tokens=decoder_tokens, target_tokens=[self._token(t) for t in labels], target_ids=list(labels),
            generated=generated, encoder_contributions=encoder_stack, encoder_rollout=encoder_rollout,
            self_contributions=np.stack(own), cross_contributions=np.stack(cross), combined=combined,
            source_share=combined[-1][:, :sources].sum(-1), reconstruction_error=np.array(errors),
            offsets=None if batch.offsets is None else batch.offsets[row][:sources],
            word_ids=None if batch.word_ids is None else batch.word_ids[row][:sources],
            text=None if batch.texts is None else batch.texts[row],
        )

    def _check(self, where: str, computed: LayerContributions, tokens: list[str], errors: list[float]) -> None:
        if not (np.isfinite(computed.reconstruction_error) and np.all(np.isfinite(computed.contributions))):
            raise NonFiniteError(f"the model produced NaN or Inf in {where}: no explanation of this text is "
                                 "meaningful (a float16 overflow, or NaN weights?)")
        check_layer(where, computed, tokens, self.self_check_tolerance, self.int8)
        errors.append(computed.reconstruction_error)

    def _token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(int(token_id)) or self.tokenizer.decode([int(token_id)], skip_special_tokens=False)


def _run_collecting(session: SegmentedSession, feeds: dict[str, np.ndarray], collected: dict[str, np.ndarray],
                    segments: list[int], only: set[str]) -> tuple[dict[str, np.ndarray], list]:
    """``run_feeds``, also collecting the tensors ``only`` of ``segments`` (the session exposes them)."""
    tensors: list = []
    outputs = session.stream_feeds(feeds, lambda layer, t: tensors.append(t), collected, segments, only)
    return outputs, tensors


def _decoder_layers(blocks: list[AttentionBlock]) -> tuple[list[AttentionBlock], list[AttentionBlock]]:
    """The decoder's blocks as (self-attention, cross-attention) per layer, in that order."""
    own = [b for b in blocks[0::2]]
    cross = [b for b in blocks[1::2]]
    if len(own) != len(cross) or any(b.cross for b in own) or not all(b.cross for b in cross):
        kinds = ", ".join("cross" if b.cross else "self" for b in blocks)
        raise RuntimeFailure(
            f"the decoder's attention blocks are not one self-attention then one cross-attention per layer ({kinds})"
        )
    return own, cross


def _memory_inputs(declared) -> tuple[str, str | None]:
    """The decoder input that takes the encoder's output (its one float input of rank 3) and the one
    that takes the source's mask (an integer input of rank 2 named as a mask, as optimum names it
    ``encoder_attention_mask``; None when the decoder has none)."""
    floats = [d for d in declared if d.elem_type in FLOAT_TYPES and d.dims is not None and len(d.dims) == 3]
    if len(floats) != 1:
        raise RuntimeFailure(
            f"cannot tell which decoder input takes the encoder's output: {len(floats)} float inputs of rank 3"
        )
    integers = [d for d in declared if d.elem_type in INTEGER_TYPES and d.dims is not None and len(d.dims) == 2]
    masks = [d for d in integers if "mask" in d.name.lower()]
    return floats[0].name, masks[0].name if masks else None


def _first_int(key: str, *sources: dict) -> int | None:
    """The first integer under ``key`` in the given JSON objects (a list's first element counts)."""
    for source in sources:
        value = source.get(key)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
