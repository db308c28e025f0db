"""Turning texts into the padded feeds an exported encoder expects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tokenizers import Encoding, Tokenizer

from alti_onnx.errors import InputError, MissingTokenizerError, ModelPathError

from .model_files import MAX_TOKENIZER_BYTES, read_json_object, require_regular

#: Texts over max_length * CHARS_PER_TOKEN characters are refused before they are tokenized.
CHARS_PER_TOKEN = 100
#: The token limit assumed for that bound when nothing tells the model's (1,000,000 characters).
UNBOUNDED_TOKENS = 10_000

#: Position-embedding rows that RoBERTa-style models reserve before the first real position.
_POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2, "longformer": 2, "mpnet": 2}


@dataclass(frozen=True)
class Batch:
    """Token ids and masks for a right-padded batch; ``lengths[b]`` real tokens in row b."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    tokens: list[list[str]]
    #: per row, each token's character span in its text, its word id (None for special tokens), the text
    offsets: list[list[tuple[int, int]]] | None = None
    word_ids: list[list[int | None]] | None = None
    texts: list[str] | None = None

    @property
    def lengths(self) -> list[int]:
        return [int(n) for n in self.attention_mask.sum(1)]

    @classmethod
    def padded(
        cls,
        ids: Sequence[Sequence[int]],
        pad_id: int,
        type_ids: Sequence[Sequence[int]] | None = None,
        tokens: list[list[str]] | None = None,
    ) -> Batch:
        """Right-pad rows of token ids (type ids 0 unless given) into one batch."""
        width = max(len(row) for row in ids)
        padded = np.full((len(ids), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        types = np.zeros((len(ids), width), dtype=np.int64)
        for row, row_ids in enumerate(ids):
            n = len(row_ids)
            padded[row, :n], mask[row, :n] = row_ids, 1
            if type_ids is not None:
                types[row, :n] = type_ids[row]
        return cls(padded, mask, types, tokens if tokens is not None else [[] for _ in ids])

    def rows(self, rows: list[int]) -> Batch:
        """The batch of ``rows`` only, cut to their longest real length."""
        width = max(self.lengths[r] for r in rows)
        def pick(values):
            return None if values is None else [values[r] for r in rows]

        return Batch(self.input_ids[rows, :width], self.attention_mask[rows, :width], self.token_type_ids[rows, :width],
                     [self.tokens[r] for r in rows], pick(self.offsets), pick(self.word_ids), pick(self.texts))

    @property
    def position_ids(self) -> np.ndarray:
        """0..S-1 in every row: with right padding each text's real tokens keep the positions they
        have alone (decoder exports take position_ids; padded positions are never attended to)."""
        rows, width = self.input_ids.shape
        return np.broadcast_to(np.arange(width, dtype=np.int64), (rows, width)).copy()


class TextEncoder:
    """A `tokenizers` tokenizer plus the model limits read from config.json."""

    def __init__(self, tokenizer_path: Path, config: dict | None = None):
        if not tokenizer_path.exists():
            raise MissingTokenizerError(f"tokenizer not found: {tokenizer_path} (pass --tokenizer PATH/tokenizer.json)")
        try:
            require_regular(tokenizer_path, "tokenizer", MAX_TOKENIZER_BYTES)
        except ModelPathError as exc:
            raise MissingTokenizerError(str(exc)) from None
        try:
            self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
            raise MissingTokenizerError(f"{tokenizer_path} is not a tokenizers JSON file: {_first_line(exc)}") from None
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        config = config or {}
        self.pad_id = _pad_id(self.tokenizer, config)
        self.max_length = _max_length(tokenizer_path.parent, config)

    @property
    def max_chars(self) -> int:
        """Texts longer than this are refused before tokenizing (a 20 MB line would take gigabytes):
        no token of a real tokenizer spans more than ``CHARS_PER_TOKEN`` characters on average."""
        return (self.max_length or UNBOUNDED_TOKENS) * CHARS_PER_TOKEN

    def encode(self, texts: list[str]) -> Batch:
        """Tokenize with special tokens and pad on the right; reject empty, over-long and non-text inputs."""
        encodings = self._encodings(texts)
        batch = Batch.padded(
            [e.ids for e in encodings], self.pad_id, [e.type_ids for e in encodings], [list(e.tokens) for e in encodings]
        )
        return replace(batch, offsets=[[tuple(o) for o in e.offsets] for e in encodings],
                       word_ids=[list(e.word_ids) for e in encodings], texts=list(texts))

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Each text's token ids (special tokens included, no padding), with the checks of ``encode``."""
        return [e.ids for e in self._encodings(texts)]

    def token_count(self, text: str) -> int:
        """How many tokens ``text`` is, with the same checks as ``encode``."""
        return len(self._encodings([text])[0].ids)

    def _encodings(self, texts: list[str]) -> list[Encoding]:
        for text in texts:
            _check_text(text, self.max_chars, self.max_length)
        try:
            encodings: list[Encoding] = self.tokenizer.encode_batch(texts)
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
            raise InputError(f"the tokenizer could not read the text: {_first_line(exc)}") from None
        for text, encoding in zip(texts, encodings):
            if self.max_length is not None and len(encoding.ids) > self.max_length:
                raise InputError(
                    f"text too long: {len(encoding.ids)} tokens, the model takes at most {self.max_length} "
                    f"(text starts {text[:40]!r})"
                )
        return encodings


def _check_text(text: object, max_chars: int, max_length: int | None) -> None:
    if not isinstance(text, str):
        raise InputError(f"a text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError("empty text: give at least one word to explain")
    if len(text) > max_chars:
        limit = f"the model takes at most {max_length} tokens" if max_length else "no limit is known"
        raise InputError(f"text too long: {len(text):,} characters ({limit}; texts over {max_chars:,} characters are "
                         "not tokenized)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"the text is not valid Unicode: a lone surrogate \\u{ord(text[exc.start]):04x} at character "
                         f"{exc.start + 1} (invalid UTF-8 on the command line?)") from None


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _pad_id(tokenizer: Tokenizer, config: dict) -> int:
    if isinstance(config.get("pad_token_id"), int):
        return config["pad_token_id"]
    for token in ("[PAD]", "<pad>", "<|endoftext|>"):
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return token_id
    return 0


def _max_length(folder: Path, config: dict) -> int | None:
    """Longest input the model's positions allow (tokenizer_config.json, else config.json)."""
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.exists():
        limit = read_json_object(tokenizer_config, "tokenizer config").get("model_max_length")
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return limit
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    if isinstance(positions, int):
        return positions - _POSITION_OFFSET.get(config.get("model_type", ""), 0)
    return None
