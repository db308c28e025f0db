"""Tiny seeded encoder-decoder models (BART, Marian, T5, M2M100) for ALTI+, exported with optimum.

Each is 2 encoder and 2 decoder layers, 32 wide, 4 heads, with random biases and norm weights
(the initializers leave them at 0 and 1), saved as a Hugging Face directory with an offline
tokenizer and exported with optimum's ``text2text-generation`` task (``encoder_model.onnx`` and
``decoder_model.onnx``) or its with-past variant. The reference for each is
``models.reference_seq2seq``.

    python -m models.seq2seq bart tests/fixtures      # writes tests/fixtures/tiny-bart-seq2seq
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.families import SIZES
from models.tiny import build_tokenizer

#: Source texts of the fixtures (the tiny vocabulary's words) and the target prefixes they are teacher-forced with.
SOURCES = (
    "the cat sat",
    "a quick brown fox jumps over the lazy dog .",
    "she said that the small house near the river was very old",
)
TARGETS = (
    "the dog sat",
    "the lazy fox jumps over a brown cat .",
    "the house was old",
)


@dataclass(frozen=True)
class Seq2SeqFamily:
    """One encoder-decoder family's tiny model: its config (given the vocabulary size and the
    tokenizer's special-token ids), tokenizer style, seed and the block kind of its decoder."""

    name: str
    config: Callable[[int, dict[str, int]], Any]
    tokenizer: str
    seed: int
    kind: str


def _bart(vocab: int, ids: dict[str, int]):
    from transformers import BartConfig

    return BartConfig(
        vocab_size=vocab, d_model=SIZES["hidden"], encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=SIZES["intermediate"], decoder_ffn_dim=SIZES["intermediate"],
        max_position_embeddings=SIZES["max_pos"], pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"], decoder_start_token_id=ids["</s>"], forced_eos_token_id=None,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=False,
    )


def _marian(vocab: int, ids: dict[str, int]):
    from transformers import MarianConfig

    return MarianConfig(
        vocab_size=vocab, decoder_vocab_size=vocab, d_model=SIZES["hidden"], encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=SIZES["intermediate"],
        decoder_ffn_dim=SIZES["intermediate"], max_position_embeddings=SIZES["max_pos"], pad_token_id=ids["<pad>"],
        eos_token_id=ids["</s>"], decoder_start_token_id=ids["<pad>"], forced_eos_token_id=None, dropout=0.0,
        attention_dropout=0.0, activation_dropout=0.0, scale_embedding=True, share_encoder_decoder_embeddings=True,
    )


def _m2m100(vocab: int, ids: dict[str, int]):
    from transformers import M2M100Config

    return M2M100Config(
        vocab_size=vocab, d_model=SIZES["hidden"], encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=SIZES["intermediate"], decoder_ffn_dim=SIZES["intermediate"],
        max_position_embeddings=SIZES["max_pos"], pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"], decoder_start_token_id=ids["</s>"], dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, scale_embedding=True,
    )


def _t5(vocab: int, ids: dict[str, int]):
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab, d_model=SIZES["hidden"], d_kv=SIZES["hidden"] // 4, d_ff=SIZES["intermediate"],
        num_layers=2, num_decoder_layers=2, num_heads=4, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, dropout_rate=0.0, feed_forward_proj="relu", pad_token_id=ids["<pad>"],
        eos_token_id=ids["</s>"], decoder_start_token_id=ids["<pad>"], tie_word_embeddings=False,
    )


SEQ2SEQ_FAMILIES: dict[str, Seq2SeqFamily] = {
    entry.name: entry
    for entry in (
        Seq2SeqFamily("bart", _bart, "roberta", 41, "post"),
        Seq2SeqFamily("marian", _marian, "roberta", 42, "post"),
        Seq2SeqFamily("m2m100", _m2m100, "roberta", 43, "pre"),
        Seq2SeqFamily("t5", _t5, "t5", 44, "pre"),
    )
}


def randomize(model, seed: int) -> None:
    """Random biases and norm weights (each drawn near its init so that the model stays well scaled)."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
            elif "norm" in name.lower() and name.endswith("weight"):
                parameter.copy_(1.0 + 0.2 * torch.randn(parameter.shape, generator=generator))


def build_hf_model(name: str, out_dir: str | Path) -> Path:
    """The tiny seeded model ``name`` saved (safetensors, config, tokenizer) to ``out_dir``."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, PreTrainedTokenizerFast

    entry = SEQ2SEQ_FAMILIES[name]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, special = build_tokenizer(entry.tokenizer)
    vocab = tok.get_vocab()
    config = entry.config(tok.get_vocab_size(), {t: vocab[t] for t in ("<pad>", "</s>", "<s>", "<unk>") if t in vocab})
    torch.manual_seed(entry.seed)
    model = AutoModelForSeq2SeqLM.from_config(config, attn_implementation="eager").eval()
    randomize(model, entry.seed)
    with torch.no_grad():  # a random model would end every output at once: EOS made unlikely, so generation runs
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias[..., config.eos_token_id] = -3.0
        elif not config.tie_word_embeddings:  # (a tied head is the input embedding: left as it is)
            model.get_output_embeddings().weight[config.eos_token_id] = 0.0
    model.generation_config.max_length = SIZES["max_pos"] - 2
    model.save_pretrained(out_dir, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=SIZES["max_pos"] - 2, **special)
    fast.save_pretrained(out_dir)
    return out_dir


def export(hf_dir: str | Path, out_dir: str | Path, with_past: bool = False) -> Path:
    """optimum's text2text-generation export of ``hf_dir`` (``-with-past``: also the decoder that reads a cache)."""
    from optimum.exporters.onnx import main_export

    main_export(str(hf_dir), output=str(out_dir), task="text2text-generation" + ("-with-past" if with_past else ""),
                no_post_process=True, do_validation=False)
    return Path(out_dir)


def build_fixture(name: str, out_root: str | Path = "tests/fixtures", with_past: bool = False) -> Path:
    """Build, export and record the reference of ``tiny-<name>-seq2seq`` under ``out_root``."""
    from models.reference_seq2seq import record_expected

    fixture = Path(out_root) / f"tiny-{name}-seq2seq{'-past' if with_past else ''}"
    if fixture.exists():
        shutil.rmtree(fixture)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = build_hf_model(name, Path(tmp) / "hf")
        export(hf_dir, fixture, with_past)
        record_expected(fixture, hf_dir, SOURCES, TARGETS)
    return fixture


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    names = [a for a in argv if a in SEQ2SEQ_FAMILIES] or list(SEQ2SEQ_FAMILIES)
    roots = [a for a in argv if a not in SEQ2SEQ_FAMILIES and not a.startswith("--")] or ["tests/fixtures"]
    for name in names:
        print(build_fixture(name, roots[0], with_past="--with-past" in argv))


if __name__ == "__main__":
    main()
