"""Word-level explanations (alti_onnx.results.words): grouping pieces into words for WordPiece, byte-level BPE
and SentencePiece tokenizers, and the aggregation of docs/alti.md ("Words"), checked loop by loop."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from alti_onnx import Explainer
from alti_onnx.results.words import Word, group_words, words_matrix, words_vector
from tests.fixture_cases import FIXTURES

TEXT = "Unbelievably, the performances in Zürich were extraordinarily good — 10/10!"
#: The words a reader sees in TEXT, as each tokenizer kind's own pre-tokenizer splits them: WordPiece and
#: byte-level BPE split off punctuation, SentencePiece splits at white space only.
READER_WORDS = ["Unbelievably", ",", "the", "performances", "in", "Zürich", "were", "extraordinarily", "good", "—"]
SPACE_WORDS = ["Unbelievably,", "the", "performances", "in", "Zürich", "were", "extraordinarily", "good", "—", "10/10!"]


def words_of(tokenizer: Tokenizer, text: str) -> list[Word]:
    encoding = tokenizer.encode(text)
    return group_words(encoding.tokens, encoding.word_ids, encoding.offsets, text)


# --------------------------------------------------------------------------- tokenizer kinds
def wordpiece() -> Tokenizer:
    vocab = ["[UNK]", "un", "##bel", "##ie", "##va", "##bly", ",", "the", "perform", "##ances", "in", "zu", "##rich",
             "were", "extra", "##ord", "##ina", "##rily", "good", "—", "1", "##0", "/", "!"]
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def byte_level_bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(["the cat sat in the house", "were good", "in the"], trainer=trainer)
    return tokenizer


def sentencepiece_unigram() -> Tokenizer:
    pieces = [("<unk>", 0.0), ("▁Un", -2.0), ("believ", -3.0), ("ably", -3.0), (",", -2.0), ("▁the", -1.0),
              ("▁perform", -2.0), ("ances", -2.0), ("▁in", -1.0), ("▁Z", -2.0), ("ü", -3.0), ("rich", -3.0),
              ("▁were", -1.0), ("▁extra", -2.0), ("ordinari", -3.0), ("ly", -2.0), ("▁good", -1.0), ("▁—", -2.0),
              ("▁", -5.0), ("1", -3.0), ("0", -3.0), ("/", -3.0), ("!", -3.0)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=0, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    return tokenizer


@pytest.mark.parametrize("make", [wordpiece, byte_level_bpe, sentencepiece_unigram])
def test_every_tokenizer_kind_gives_the_words_a_reader_sees(make):
    tokenizer = make()
    words = words_of(tokenizer, TEXT)
    expected = SPACE_WORDS if make is sentencepiece_unigram else READER_WORDS
    assert [w.text for w in words][: len(expected)] == expected
    pieces = tokenizer.encode(TEXT).tokens
    assert len(words) < len(pieces)  # several words are split into many pieces and joined again
    long_word = next(w for w in words if w.text == "extraordinarily")
    assert len(long_word.positions) >= 3  # one word of many pieces, joined
    for word in words:  # every span is the word's own text
        assert TEXT[word.start:word.end] == word.text
    covered = sorted(p for w in words for p in w.positions)
    assert covered == list(range(len(pieces)))  # each piece in exactly one word, in order


def test_special_tokens_are_words_of_their_own_and_a_lone_space_piece_joins_the_next_word():
    tokens = ["<s>", "▁Z", "ü", "rich", "▁", "1", "0", "</s>"]
    text = "Zürich 10"
    offsets = [(0, 0), (0, 1), (1, 2), (2, 6), (6, 7), (7, 8), (8, 9), (0, 0)]
    word_ids = [None, 0, 0, 0, 0, 0, 0, None]  # a SentencePiece model without a pre-tokenizer: one id for all
    words = group_words(tokens, word_ids, offsets, text)
    assert [(w.text, w.positions) for w in words] == [
        ("<s>", (0,)), ("Zürich", (1, 2, 3)), ("10", (4, 5, 6)), ("</s>", (7,))]
    assert (words[2].start, words[2].end) == (7, 9)


REAL_TOKENIZERS = {
    "WordPiece (all-MiniLM-L6-v2)": "all-minilm-l6-v2",
    "byte-level BPE (SmolLM2)": "smollm2-135m-instruct",
    "SentencePiece BPE (Gemma 3)": "gemma-3-270m",
}


def real_tokenizer(kind: str) -> Tokenizer:
    """A real model's tokenizer from the cache (skipped where the real-model tests have not built it)."""
    path = Path(os.environ.get("ALTI_ONNX_CACHE", Path.home() / ".cache" / "alti-onnx")) / "onnx" / REAL_TOKENIZERS[kind] / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} is built by the real-model tests")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    return tokenizer


@pytest.mark.parametrize("kind", list(REAL_TOKENIZERS))
def test_real_tokenizers_words(kind):
    tokenizer = real_tokenizer(kind)
    words = [w for w in words_of(tokenizer, TEXT) if w.end > w.start]
    expected = {"WordPiece (all-MiniLM-L6-v2)": READER_WORDS + ["10", "/", "10", "!"],
                "byte-level BPE (SmolLM2)": READER_WORDS + ["10", "/", "10", "!"],
                # no pre-tokenizer: words are the white-space separated runs, punctuation attached
                "SentencePiece BPE (Gemma 3)": SPACE_WORDS}[kind]
    assert [w.text for w in words] == expected


# --------------------------------------------------------------------------- the aggregation
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_aggregation_equals_the_definition_loop_by_loop(data):
    size = data.draw(st.integers(1, 8))
    cuts = sorted(data.draw(st.sets(st.integers(1, size - 1), max_size=size - 1))) if size > 1 else []
    bounds = [0, *cuts, size]
    words = [Word(str(k), 0, 0, tuple(range(a, b))) for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    matrix = rng.random((2, size, size))
    matrix /= matrix.sum(-1, keepdims=True)
    aggregated = words_matrix(matrix, words)
    for layer in range(2):
        for a, receiving in enumerate(words):
            for b, giving in enumerate(words):
                expected = np.mean([sum(matrix[layer, i, j] for j in giving.positions) for i in receiving.positions])
                assert abs(aggregated[layer, a, b] - expected) < 1e-12
    np.testing.assert_allclose(aggregated.sum(-1), 1.0, atol=1e-12)  # rows still sum to 1
    vector = matrix[0, 0]
    np.testing.assert_allclose(words_vector(vector, words), [vector[list(w.positions)].sum() for w in words], atol=1e-12)


def test_explanation_words_aggregate_the_explanation_and_padding_changes_nothing():
    explainer = Explainer(FIXTURES / "tiny-bert", cache=False)
    texts = ["the cats jumped over the lazy dogs .", "the cat sat"]
    alone = explainer.explain(texts[0])
    assert any(t.startswith("##") for t in alone.tokens)  # pieces to join
    words = alone.words()
    assert "cats" in words.texts and len(words.texts) < len(alone.tokens)
    cats = words.words[words.texts.index("cats")]
    assert len(cats.positions) == 2
    np.testing.assert_allclose(words.rollout, words_matrix(alone.rollout, words.words), atol=0)
    np.testing.assert_allclose(words.attribution, words_vector(alone.attribution(), words.words), atol=0)
    assert words.attribution.sum() == pytest.approx(1.0)
    batched = explainer.explain(texts)[0].words()
    np.testing.assert_allclose(batched.rollout, words.rollout, atol=1e-6)
    target_only = explainer.explain(texts[0], full=False).words()
    assert target_only.rollout is None
    np.testing.assert_allclose(target_only.attribution, words.attribution, atol=1e-12)


def test_a_decoder_keeps_its_target_position():
    explanation = Explainer(FIXTURES / "tiny-gpt2", cache=False).explain("the cat sat on the mat")
    words = explanation.words()
    assert words.target == len(explanation.tokens) - 1
    assert words.words[words.target_word].positions[-1] == words.target


def test_cli_words_table_json_and_batch_records(tmp_path):
    import json

    from tests.cli_helpers import run_cli

    text = "the cats jumped over the lazy dogs ."
    alone = Explainer(FIXTURES / "tiny-bert", cache=False).explain(text).words()
    written = tmp_path / "words.json"
    result = run_cli("explain", FIXTURES / "tiny-bert", "--text", text, "--words", "--json", written)
    assert result.returncode == 0, result.stderr
    assert "cats" in result.stdout and "##s" not in result.stdout
    payload = json.loads(written.read_text())
    assert payload["words"] == alone.texts and payload["tokens"][0] == "[CLS]"  # the token keys stay
    np.testing.assert_allclose(payload["word_attribution"], alone.attribution, atol=1e-12)
    corpus = tmp_path / "texts.jsonl"
    corpus.write_text(json.dumps(text) + "\n")
    output = tmp_path / "out.jsonl"
    result = run_cli("batch", FIXTURES / "tiny-bert", "--input", corpus, "--output", output, "--words")
    assert result.returncode == 0, result.stderr
    record = json.loads(output.read_text())
    assert record["words"] == alone.texts
    np.testing.assert_allclose(record["word_attribution"], alone.attribution, atol=1e-6)


@pytest.mark.parametrize("make", [byte_level_bpe, sentencepiece_unigram])
def test_a_character_split_into_bytes_is_one_word_and_trailing_space_is_no_word(make):
    """CJK, an emoji and an accented letter after a space come out of byte-level BPE as several byte
    pieces of one word (the tokenizer's word ids say so); white space at the end joins the last word."""
    text = "in 東京 🙂 café "
    tokenizer = make()
    encoding = tokenizer.encode(text)
    words = group_words(encoding.tokens, encoding.word_ids, encoding.offsets, text)
    assert [w.text for w in words] == ["in", "東京", "🙂", "café"]
    assert sorted(k for w in words for k in w.positions) == list(range(len(encoding.tokens)))


@pytest.mark.parametrize("kind", ["byte-level BPE (SmolLM2)", "SentencePiece BPE (Gemma 3)"])
def test_real_tokenizers_keep_characters_split_into_bytes_whole(kind):
    tokenizer = real_tokenizer(kind)
    words = [w for w in words_of(tokenizer, "I love 東京 and café 🙂 ok ") if w.end > w.start]
    assert [w.text for w in words] == ["I", "love", "東京", "and", "café", "🙂", "ok"]
