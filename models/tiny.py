"""Tiny, seeded, random-init post-LN encoders and the committed test fixtures built from them.

    python -m models.tiny [--out tests/fixtures] [--arch bert ...]

For every architecture in ``ARCHS`` this builds a 2-layer, 32-wide model (random weights, random
biases and LayerNorm parameters, so bias and norm handling is really exercised) with its own
offline tokenizer, exports it with optimum into ``<out>/tiny-<arch>/`` and writes the float64
reference ALTI for ``TEXTS`` into ``expected.npz`` (``input_ids_k``, ``contributions_k``,
``rollout_k``) plus ``texts.json``.

The decoders in ``DECODER_ARCHS`` (pre-LN, causal: GPT-2, and Llama with 4 query heads sharing 2
key/value heads; ``qwen2``, Llama-like with biases on Q, K and V, is built only by the tests) get
the same treatment with a word-level tokenizer that prepends ``<s>``, exported with optimum's
``text-generation`` task (logits, no KV cache); ``build_tiny_decoder(arch, out_dir)`` builds one.

``build_tiny_hf_model(arch, out_dir)`` is importable (tests use it to export variants, e.g. with
``torch.onnx.export`` at other opsets); it is deterministic: the same arch gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = [
    "ARCHS",
    "TEXTS",
    "WORDS",
    "build_tokenizer",
    "build_tiny_hf_model",
    "load_tiny_model",
    "expected_for_dir",
    "build_fixture",
    "DECODER_ARCHS",
    "build_decoder_tokenizer",
    "build_tiny_decoder",
    "load_tiny_decoder",
    "main",
]

ARCHS = ("bert", "roberta", "distilbert", "electra", "xlm-roberta")
SEEDS = {"bert": 1, "roberta": 2, "distilbert": 3, "electra": 4, "xlm-roberta": 5}

WORDS = (
    "the a an and or but if then of to in on at by for with from as is are was were be been "
    "it he she they we you i this that these those there here what which who when where why how "
    "cat dog fox bird fish horse cow house river tree road city car book table chair door window "
    "man woman child people friend teacher student day night year time morning water fire sun moon "
    "sat ran runs jumps said saw went came made took gave found likes loves eats sleeps reads writes "
    "quick brown lazy small big old new good bad happy sad red green blue very quiet near far over "
    "under not no all some many one two three film movie great terrible boring fun story "
    ". , ! ?"
).split()
SUFFIXES = ("##s", "##ed", "##ing", "##ly")

TEXTS = (
    "the cat sat",
    "a quick brown fox jumps over the lazy dog .",
    "she said that the small house near the river was very old and quiet , but the people there were happy .",
    "the blorptastic movie was great",  # 'blorptastic' is not in the vocabulary
)

_SIZES = dict(layers=2, hidden=32, heads=4, intermediate=64, max_pos=64)


DECODER_ARCHS = ("gpt2", "llama")
DECODER_SEEDS = {"gpt2": 11, "llama": 12, "qwen2": 13}


# --------------------------------------------------------------------------- tokenizers
def build_tokenizer(arch: str):
    """(tokenizers.Tokenizer, special-token kwargs for PreTrainedTokenizerFast) for ``arch``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if arch in ("bert", "distilbert", "electra"):
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab = {t: i for i, t in enumerate(specials + list(WORDS) + list(SUFFIXES))}
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        tok.decoder = decoders.WordPiece()
        special = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    elif arch == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        vocab = {t: i for i, t in enumerate(specials + list(WORDS))}
        tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.post_processor = processors.RobertaProcessing(sep=("</s>", 2), cls=("<s>", 0), trim_offsets=False)
        special = dict(
            bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
            pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        )
    elif arch == "xlm-roberta":
        # SentencePiece-style unigram, as the real XLM-R: <s>=0 <pad>=1 </s>=2 <unk>=3, <mask> last.
        pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
        pieces += [("\u2581" + w, -float(i % 7) - 1.0) for i, w in enumerate(WORDS)]
        pieces += [("\u2581", -8.0), ("<mask>", 0.0)]
        tok = Tokenizer(models.Unigram(pieces, unk_id=3, byte_fallback=False))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", 0), ("</s>", 2)],
        )
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        special = dict(
            bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
            pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
        )
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; expected one of {ARCHS}")
    tok.add_special_tokens([t for t in special.values() if t is not None])
    return tok, special


# --------------------------------------------------------------------------- models
def _config(arch: str, vocab_size: int, pad_id: int):
    import transformers as tf

    L, D, H, F, P = (_SIZES[k] for k in ("layers", "hidden", "heads", "intermediate", "max_pos"))
    common = dict(vocab_size=vocab_size, max_position_embeddings=P, initializer_range=0.2, pad_token_id=pad_id)
    if arch == "distilbert":
        return tf.DistilBertConfig(dim=D, hidden_dim=F, n_layers=L, n_heads=H, **common)
    bert_like = dict(num_hidden_layers=L, hidden_size=D, num_attention_heads=H, intermediate_size=F, **common)
    if arch == "bert":
        return tf.BertConfig(type_vocab_size=2, **bert_like)
    if arch == "electra":
        return tf.ElectraConfig(embedding_size=16, type_vocab_size=2, **bert_like)  # exercises the embeddings projection
    if arch == "roberta":
        return tf.RobertaConfig(type_vocab_size=1, bos_token_id=0, eos_token_id=2, **bert_like)
    if arch == "xlm-roberta":
        return tf.XLMRobertaConfig(type_vocab_size=1, bos_token_id=0, eos_token_id=2, **bert_like)
    raise ValueError(f"unknown tiny arch {arch!r}")


def randomize_biases_and_norms(model) -> None:
    """Random linear biases and LayerNorm gamma/beta (BERT's init makes them 0/1/0), so that
    the tests really exercise b_O, gamma and beta. Uses torch's current seed."""
    import torch
    from torch import nn

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0.0, 0.2)
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.1)


def build_tiny_hf_model(arch: str, out_dir: str | Path, seed: int | None = None) -> Path:
    """Build the tiny seeded ``arch`` model and save it (float32 safetensors, config, fast tokenizer)
    to ``out_dir`` as a Hugging Face model directory. Deterministic for a given (arch, seed)."""
    import torch
    from transformers import AutoModel, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, special = build_tokenizer(arch)
    pad_id = tok.token_to_id(special["pad_token"])
    cfg = _config(arch, tok.get_vocab_size(), pad_id)

    torch.manual_seed(SEEDS[arch] if seed is None else seed)
    model = AutoModel.from_config(cfg, attn_implementation="eager").eval()
    randomize_biases_and_norms(model)
    model.save_pretrained(out_dir, safe_serialization=True)

    max_len = cfg.max_position_embeddings - (pad_id + 1 if "roberta" in arch else 0)  # RoBERTa offsets positions
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=max_len, **special)
    fast.save_pretrained(out_dir)
    return out_dir


def build_decoder_tokenizer():
    """(tokenizers.Tokenizer, special-token kwargs): word-level, ``<s>`` prepended, as Llama does."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    special = dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.add_special_tokens(list(special.values()))
    return tok, special


def _decoder_config(arch: str, vocab_size: int):
    import transformers as tf

    L, D, H, F, P = (_SIZES[k] for k in ("layers", "hidden", "heads", "intermediate", "max_pos"))
    ids = dict(vocab_size=vocab_size, bos_token_id=0, pad_token_id=1, eos_token_id=2, initializer_range=0.2)
    if arch == "gpt2":
        return tf.GPT2Config(n_positions=P, n_embd=D, n_layer=L, n_head=H, n_inner=F, **ids)
    llama_like = dict(
        hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=H // 2,
        max_position_embeddings=P, tie_word_embeddings=False, **ids,
    )
    if arch == "llama":
        return tf.LlamaConfig(**llama_like)
    if arch == "qwen2":
        return tf.Qwen2Config(**llama_like)
    raise ValueError(f"unknown tiny decoder {arch!r}; expected one of {DECODER_ARCHS + ('qwen2',)}")


def build_tiny_decoder(arch: str, out_dir: str | Path, seed: int | None = None) -> Path:
    """Build the tiny seeded causal LM ``arch`` (random biases and norm weights) and save it with its
    tokenizer to ``out_dir`` as a Hugging Face model directory. Deterministic for a given (arch, seed)."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, special = build_decoder_tokenizer()
    cfg = _decoder_config(arch, tok.get_vocab_size())
    torch.manual_seed(DECODER_SEEDS[arch] if seed is None else seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # GPT-2's Linear/Conv1D and LayerNorm biases, Qwen2's q/k/v biases
                param.normal_(0.0, 0.2)
            elif "norm" in name or "ln_" in name:  # LayerNorm / RMSNorm weights
                param.uniform_(0.5, 1.5)
    model.save_pretrained(out_dir, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=cfg.max_position_embeddings, **special)
    fast.save_pretrained(out_dir)
    return out_dir


def load_tiny_decoder(hf_dir: str | Path):
    """Load a saved tiny decoder (with its LM head) with eager attention (for the reference)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation="eager")


def load_tiny_model(hf_dir: str | Path):
    """Load a saved tiny model directory with eager attention (for the reference)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(hf_dir), attn_implementation="eager")


def references(hf_dir: str | Path, tokenizer_json: str | Path, texts=TEXTS) -> tuple[list[list[int]], list]:
    """The token ids of ``texts`` and the float64 reference of each, on the model in ``hf_dir``."""
    from tokenizers import Tokenizer

    from models.fixture_io import check_reference
    from models.reference import reference_alti

    tok = Tokenizer.from_file(str(tokenizer_json))
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    decoder = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.get("architectures", []))
    model = load_tiny_decoder(hf_dir) if decoder else load_tiny_model(hf_dir)
    ids, results = [], []
    for text in texts:
        enc = tok.encode(text)
        results.append(reference_alti(model, enc.ids, token_type_ids=np.asarray(enc.type_ids, dtype=np.int64)))
        check_reference(results[-1], str(hf_dir))
        ids.append(enc.ids)
    return ids, results


def expected_for_dir(hf_dir: str | Path, tokenizer_json: str | Path, texts=TEXTS) -> dict[str, np.ndarray]:
    """Reference ALTI for ``texts`` on the model in ``hf_dir``, as the arrays stored in expected.npz."""
    from models.fixture_io import expected_arrays

    return expected_arrays(*references(hf_dir, tokenizer_json, texts))


def build_fixture(arch: str, out_root: str | Path = "tests/fixtures", texts=TEXTS) -> Path:
    """Build, export and write the expected outputs of ``tiny-<arch>`` under ``out_root``."""
    from alti_onnx.export import export_model

    fixture = Path(out_root) / f"tiny-{arch}"
    if fixture.exists():
        shutil.rmtree(fixture)
    decoder = arch in DECODER_ARCHS
    with tempfile.TemporaryDirectory() as tmp:
        build = build_tiny_decoder if decoder else build_tiny_hf_model
        hf_dir = build(arch, Path(tmp) / "hf")
        export_model(hf_dir, fixture, task="text-generation" if decoder else "feature-extraction")
        record_expected(fixture, hf_dir, texts)
    return fixture


def record_expected(fixture: Path, hf_dir: Path, texts) -> None:
    """Write the reference's outputs (expected.npz) and the texts (texts.json) beside an exported fixture."""
    from models.fixture_io import write_expected

    write_expected(fixture, texts, *references(hf_dir, fixture / "tokenizer.json", texts))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures", help="fixtures root (default: tests/fixtures)")
    ap.add_argument("--arch", nargs="*", default=list(ARCHS + DECODER_ARCHS), choices=ARCHS + DECODER_ARCHS)
    args = ap.parse_args(argv)
    for arch in args.arch:
        t0 = time.perf_counter()
        fixture = build_fixture(arch, args.out)
        size = sum(p.stat().st_size for p in fixture.iterdir())
        print(f"{fixture}: {size / 1024:.0f} KiB in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
