"""Word-level explanations: subword pieces grouped into the words a person reads (docs/alti.md, "Words").

The tokenizer says which word each piece belongs to (its ``word_ids``, from its pre-tokenizer:
WordPiece's "perform ##ances", byte-level BPE's "ĠParis", SentencePiece's "▁Par is"); special
tokens belong to no word and stay words of their own. With a word a set of positions:

- a matrix M (row i receives from column j: contributions or rollout) becomes, for words a and b,
  M_w[a, b] = mean over i in a of (sum over j in b of M[i, j]): what the word's pieces receive on
  average, from all of the other word's pieces together. Rows still sum to 1;
- an attribution to a target position p becomes A_w[b] = sum over j in b of A[j]: the target stays
  the position the model predicts from, the contributions of a word's pieces add up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Word:
    """One word: its text, its character span in the explained text ((0, 0) for a special token
    the tokenizer added), and the token positions it groups."""

    text: str
    start: int
    end: int
    positions: tuple[int, ...]


def group_words(tokens: Sequence[str], word_ids: Sequence[int | None], offsets: Sequence[tuple[int, int]],
                text: str | None) -> list[Word]:
    """Consecutive pieces of one word form a word; a piece of none (a special token) is a word alone.

    The tokenizer's word ids say where words begin when they tell words apart (WordPiece, byte-level
    BPE: every byte piece of "東京" or an emoji shares its word's id). SentencePiece tokenizers
    without a pre-tokenizer (Gemma, Llama 2) give every piece word id 0; their words are the text's
    white-space separated runs, and a piece that starts inside the previous piece's characters
    (a character split into bytes) never starts one. A piece of white space alone joins the word
    after it, or, at the end of the text, the word before it: no word is blank."""
    words: list[Word] = []
    current: list[int] = []
    real = [word for word in word_ids if word is not None]
    by_id = len(set(real)) > 1 or len(real) <= 1

    def close() -> None:
        if current:
            start = min(offsets[k][0] for k in current)
            end = max(offsets[k][1] for k in current)
            shown = text[start:end] if text is not None and end > start else "".join(tokens[k] for k in current)
            stripped = shown.lstrip()
            words.append(Word(stripped.rstrip(), start + len(shown) - len(stripped), end, tuple(current)))
            current.clear()

    def starts_word(position: int) -> bool:
        previous = current[-1]
        if word_ids[previous] != word_ids[position]:
            return True
        if by_id or text is None:
            return False
        start, end = offsets[position]
        if start < offsets[previous][1]:  # inside the previous piece's characters: one character in bytes
            return False
        return (end > start and text[start].isspace()) or (start > 0 and text[start - 1].isspace())

    def blank(positions: list[int]) -> bool:
        return text is not None and all(not text[offsets[k][0]:offsets[k][1]].strip() for k in positions)

    for position, word in enumerate(word_ids):
        if word is None:
            close()
            words.append(Word(tokens[position], 0, 0, (position,)))
            continue
        if current and not blank(current) and starts_word(position):
            close()
        current.append(position)
    if current and blank(current) and words and words[-1].end > words[-1].start:  # trailing white space
        last = words.pop()
        current[:0] = last.positions
    close()
    return words


def membership(words: Sequence[Word], size: int) -> np.ndarray:
    """[W, S]: 1 where token position j belongs to word a."""
    matrix = np.zeros((len(words), size))
    for index, word in enumerate(words):
        matrix[index, list(word.positions)] = 1.0
    return matrix


def words_matrix(matrix: np.ndarray, words: Sequence[Word]) -> np.ndarray:
    """[..., S, S] -> [..., W, W]: mean over the receiving word's pieces of the sum over the contributing word's."""
    member = membership(words, matrix.shape[-1])
    mean = member / member.sum(-1, keepdims=True)
    return mean @ matrix @ member.T


def words_vector(attribution: np.ndarray, words: Sequence[Word]) -> np.ndarray:
    """[S] -> [W]: each word's pieces summed."""
    return membership(words, attribution.shape[-1]) @ attribution


@dataclass(frozen=True)
class WordExplanation:
    """An explanation at the level of words (see the module's docstring for the aggregation).

    ``attribution`` [W] is the words' attribution to the target position ``target`` (a token
    position, or "mean"), which lies in word ``target_word`` (-1 for "mean"); ``contributions`` and ``rollout`` [L, W, W] are
    there when the explanation has every layer's matrices."""

    words: list[Word]
    target: int | str
    target_word: int
    attribution: np.ndarray
    contributions: np.ndarray | None
    rollout: np.ndarray | None

    @property
    def texts(self) -> list[str]:
        return [word.text for word in self.words]

    def to_dict(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "words": self.texts,
            "spans": [[w.start, w.end] for w in self.words],
            "word_positions": [list(w.positions) for w in self.words],
            "target": self.target,
            "target_word": self.target_word,
            "word_attribution": self.attribution.tolist(),
        }
        if self.rollout is not None:
            payload["word_contributions"] = self.contributions.tolist()
            payload["word_rollout"] = self.rollout.tolist()
        return payload
