"""ALTI+ on an optimum encoder-decoder export (``encoder_model.onnx`` + ``decoder_model.onnx``).

The encoder runs as any encoder does; the decoder is fed the encoder's output and a target
prefix, teacher-forced (a given target) or grown by greedy generation on the plain decoder
(NumPy loop, onnxruntime only), then run once instrumented over the whole sequence. The math is
``alti_plus`` (docs/alti.md, "Encoder-decoder models: ALTI+").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from alti_onnx.decomposition.alti_plus import combined_rollout, cross_contributions
from alti_onnx.decomposition.contributions import LayerContributions, layer_contributions, rollout
from alti_onnx.explainer import DEFAULT_SELF_CHECK_TOLERANCE, ModelFiles
from alti_onnx.errors import InputError, ModelPathError, RuntimeFailure
from alti_onnx.runtime.model_files import read_json_object
from alti_onnx.runtime.prepared import prepare
from alti_onnx.runtime.sessions import SegmentedSession, default_providers, session_options
from alti_onnx.decomposition.self_check import check_layer, require_tolerance
from alti_onnx.runtime.text_inputs import Batch, TextEncoder
from graph_rewrites import AttentionBlock

#: What optimum names the two halves of a text2text-generation export.
ENCODER_FILE, DECODER_FILE = "encoder_model.onnx", "decoder_model.onnx"
#: Merged decoders (an If over the cache) are refused: the plain decoder is what ALTI+ reads.
MERGED_DECODER_FILE = "decoder_model_merged.onnx"


def is_seq2seq_export(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding an encoder-decoder export."""
    path = Path(path)
    return path.is_dir() and (path / ENCODER_FILE).is_file() and (
        (path / DECODER_FILE).is_file() or (path / MERGED_DECODER_FILE).is_file())


@dataclass(frozen=True)
class Seq2SeqExplanation:
    """ALTI+ of one source and one target (docs/alti.md). Target position t is the decoder's
    input token ``decoder_tokens[t]``; its row explains the token it predicts, ``target_tokens[t]``.

    - ``encoder_contributions`` [L_enc, J, J], ``encoder_rollout`` [L_enc, J, J];
    - ``self_contributions`` [L_dec, T, T]: the decoder's self-attention;
    - ``cross_contributions`` [L_dec, T, J + 1]: each encoder output and, last, the residual;
    - ``combined`` [L_dec, T, J + T]: ALTI+'s rollout over [source tokens; decoder tokens];
    - ``source_share`` [T]: the source's share of the last layer's row.
    """

    source_tokens: list[str]
    decoder_tokens: list[str]
    target_tokens: list[str]
    target_ids: list[int]
    generated: bool
    encoder_contributions: np.ndarray
    encoder_rollout: np.ndarray
    self_contributions: np.ndarray
    cross_contributions: np.ndarray
    combined: np.ndarray
    source_share: np.ndarray
    reconstruction_errors: list[float]

    @property
    def source_attribution(self) -> np.ndarray:
        """[T, J]: each target token's attribution to the source tokens (the last layer's source columns)."""
        return self.combined[-1][:, : len(self.source_tokens)]

    @property
    def prefix_attribution(self) -> np.ndarray:
        """[T, T]: each target token's attribution to the decoder's input tokens."""
        return self.combined[-1][:, len(self.source_tokens):]

    def to_dict(self, attribution_only: bool = False) -> dict[str, object]:
        """JSON-ready: tokens, the source share, the last layer's combined rows, and (unless
        ``attribution_only``) every layer's matrices."""
        result: dict[str, object] = {
            "source_tokens": self.source_tokens,
            "decoder_tokens": self.decoder_tokens,
            "target_tokens": self.target_tokens,
            "target_ids": self.target_ids,
            "generated": self.generated,
            "source_share": self.source_share.tolist(),
            "attribution": self.combined[-1].tolist(),
            "reconstruction_errors": self.reconstruction_errors,
        }
        if not attribution_only:
            result.update(
                encoder_contributions=self.encoder_contributions.tolist(),
                encoder_rollout=self.encoder_rollout.tolist(),
                self_contributions=self.self_contributions.tolist(),
                cross_contributions=self.cross_contributions.tolist(),
                combined=self.combined.tolist(),
            )
        return result


class Seq2SeqExplainer:
    """ALTI+ for an optimum encoder-decoder export directory (Marian, BART, T5, M2M100, ...).

    ``explain(source, target)`` teacher-forces ``target`` (tokenized as the model's labels);
    without a target the model's greedy output (stopping at EOS or after ``max_new_tokens``) is
    generated and explained. Every decoder layer must hold one self-attention block and then one
    cross-attention block.
    """

    def __init__(self, model: str | Path, tokenizer: str | Path | None = None, providers: list[str] | None = None,
                 self_check_tolerance: float = DEFAULT_SELF_CHECK_TOLERANCE, input_map: dict[str, str] | None = None,
                 cache: bool = True):
        if input_map:
            raise InputError("--input-map is for single-graph models; an encoder-decoder export's inputs are optimum's")
        require_tolerance(self_check_tolerance)
        folder = Path(model)
        if not is_seq2seq_export(folder):
            raise ModelPathError(f"{folder} is not an encoder-decoder export (no {ENCODER_FILE} and {DECODER_FILE})")
        if not (folder / DECODER_FILE).is_file():
            raise ModelPathError(
                f"{folder} has only {MERGED_DECODER_FILE} (the decoder with and without a cache merged under an If); "
                f"export with optimum's text2text-generation task without --monolith, keeping {DECODER_FILE}"
            )
        self.folder = folder
        self.config = read_json_object(folder / "config.json", "config") if (folder / "config.json").exists() else {}
        generation = folder / "generation_config.json"
        self.generation = read_json_object(generation, "generation config") if generation.exists() else {}
        self.self_check_tolerance = self_check_tolerance
        tokenizer_path = Path(tokenizer) if tokenizer is not None else folder / "tokenizer.json"
        self.text_path = tokenizer_path / "tokenizer.json" if tokenizer_path.is_dir() else tokenizer_path
        self.text = TextEncoder(self.text_path, self.config)
        providers = providers or default_providers()
        encoder = prepare(folder / ENCODER_FILE, cache=cache)
        decoder = prepare(folder / DECODER_FILE, cache=cache)
        self.encoder_blocks = encoder.analysis.require_complete()
        blocks = decoder.analysis.require_complete()
        self.self_blocks, self.cross_blocks = _decoder_layers(blocks)
        memory, memory_mask = _memory_inputs(decoder.graph_inputs)
        self._memory, self._memory_mask = memory, memory_mask
        self.encoder = SegmentedSession(encoder, providers)
        self.decoder = SegmentedSession(decoder, providers, fed_by_caller=[n for n in (memory, memory_mask) if n])
        self._plain_decoder = ort.InferenceSession(str(folder / DECODER_FILE), session_options(), providers=providers)
        #: what ``batch`` records as the model (the job it resumes must be the same model)
        self.files = ModelFiles(folder / DECODER_FILE, self.text_path, folder / "config.json")
        self.input_map: dict[str, str] = {}
        self.start_id = _first_int("decoder_start_token_id", self.generation, self.config)
        self.eos_id = _first_int("eos_token_id", self.generation, self.config)
        if self.start_id is None:
            raise InputError(f"{folder}: neither generation_config.json nor config.json gives decoder_start_token_id")

    @property
    def tokenizer(self):
        return self.text.tokenizer

    def encoder_file_identity(self) -> dict[str, object]:
        """The encoder file's path, size and modification time (the decoder is ``files.onnx``)."""
        path = self.folder / ENCODER_FILE
        stat = path.stat()
        return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    # ------------------------------------------------------------------ API
    def explain(self, source: str, target: str | None = None, max_new_tokens: int = 32) -> Seq2SeqExplanation:
        """ALTI+ of ``source`` and ``target`` (teacher-forced), or of the model's greedy output."""
        return self.explain_batch([source], None if target is None else [target], max_new_tokens)[0]

    def explain_batch(self, sources: list[str], targets: list[str] | None = None,
                      max_new_tokens: int = 32) -> list[Seq2SeqExplanation]:
        """Several sources (and targets) in one padded batch; each result equals its pair's alone."""
        if targets is not None and len(targets) != len(sources):
            raise InputError(f"{len(sources)} sources but {len(targets)} targets")
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max new tokens must be a positive integer, got {max_new_tokens!r}")
        batch = self.text.encode(list(sources))
        encoded, encoder_tensors = self.encoder.run(batch)
        memory = next(iter(encoded.values())) if len(encoded) == 1 else encoded[self.encoder.original_outputs[0]]
        if targets is None:
            labels = self._generate(memory, batch.attention_mask, max_new_tokens)
        else:
            labels = self.text.token_ids(list(targets))
        decoder_ids = [[self.start_id, *row[:-1]] for row in labels]
        decoder_batch = Batch.padded(decoder_ids, self.text.pad_id)
        feeds = {**self.decoder.inputs.feeds(decoder_batch), self._memory: memory.astype(np.float32, copy=False)}
        if self._memory_mask:
            feeds[self._memory_mask] = batch.attention_mask
        _, decoder_tensors = self.decoder.run_feeds(feeds)
        return [self._explanation(row, batch, labels[row], decoder_ids[row], encoder_tensors, decoder_tensors,
                                  generated=targets is None) for row in range(len(sources))]

    # ------------------------------------------------------------------ generation
    def _generate(self, memory: np.ndarray, mask: np.ndarray, max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding on the plain decoder: each row until EOS (kept) or ``max_new_tokens``."""
        rows = len(memory)
        sequences = np.full((rows, 1), self.start_id, dtype=np.int64)
        done = np.zeros(rows, dtype=bool)
        forced_first = _first_int("forced_bos_token_id", self.generation, self.config)
        banned = [ids[0] for ids in self.generation.get("bad_words_ids") or [] if isinstance(ids, list) and len(ids) == 1]
        fixed = {self._memory: memory.astype(np.float32, copy=False)}
        if self._memory_mask:
            fixed[self._memory_mask] = mask
        for step in range(max_new_tokens):
            feeds = {**self.decoder.inputs.feeds(Batch.padded(sequences.tolist(), self.text.pad_id)), **fixed}
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
            chosen[done] = self.text.pad_id
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

        encoder_layers = []
        for layer, (block, t) in enumerate(zip(self.encoder_blocks, encoder_tensors)):
            computed = layer_contributions(block, t.probs[row][:, keep][:, :, keep], t.values[row][:, keep],
                                           t.residual[row][keep], t.output[row][keep], with_norms=False,
                                           with_attention=False)
            self._check(f"encoder layer {layer}", computed, source_tokens, errors)
            encoder_layers.append(computed.contributions)
        encoder_stack = np.stack(encoder_layers)
        encoder_rollout = rollout(encoder_stack)

        own, cross = [], []
        for layer, (self_block, cross_block) in enumerate(zip(self.self_blocks, self.cross_blocks)):
            t = decoder_tensors[2 * layer]
            computed = layer_contributions(self_block, t.probs[row][:, :targets, :targets], t.values[row][:, :targets],
                                           t.residual[row][:targets], t.output[row][:targets], with_norms=False,
                                           with_attention=False)
            self._check(f"decoder layer {layer} (self-attention)", computed, decoder_tokens, errors)
            own.append(computed.contributions)
            t = decoder_tensors[2 * layer + 1]
            computed = cross_contributions(cross_block, t.probs[row][:, :targets][:, :, keep], t.values[row][:, keep],
                                           t.residual[row][:targets], t.output[row][:targets])
            self._check(f"decoder layer {layer} (cross-attention)", computed, decoder_tokens, errors)
            cross.append(computed.contributions)
        combined = combined_rollout(encoder_rollout[-1], own, cross)
        return Seq2SeqExplanation(
            source_tokens=source_tokens, decoder_tokens=decoder_tokens,
            target_tokens=[self._token(t) for t in labels], target_ids=list(labels), generated=generated,
            encoder_contributions=encoder_stack, encoder_rollout=encoder_rollout, self_contributions=np.stack(own),
            cross_contributions=np.stack(cross), combined=combined, source_share=combined[-1][:, :sources].sum(-1),
            reconstruction_errors=errors,
        )

    def _check(self, where: str, computed: LayerContributions, tokens: list[str], errors: list[float]) -> None:
        check_layer(where, computed, tokens, self.self_check_tolerance)
        errors.append(computed.reconstruction_error)

    def _token(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(int(token_id)) or self.tokenizer.decode([int(token_id)], skip_special_tokens=False)


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
    floats = [d for d in declared if d.elem_type in (1, 10, 11) and d.dims is not None and len(d.dims) == 3]
    if len(floats) != 1:
        raise RuntimeFailure(
            f"cannot tell which decoder input takes the encoder's output: {len(floats)} float inputs of rank 3"
        )
    integers = [d for d in declared if d.elem_type in (6, 7) and d.dims is not None and len(d.dims) == 2]
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
