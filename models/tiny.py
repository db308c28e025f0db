"""Tiny, seeded, random-init models of every family in ``models.families``, and the committed test
fixtures built from them.

    python -m models.tiny [--out tests/fixtures] [--arch bert ...]

For every family this builds a 2-layer, 32-wide model (random weights, random biases and norm
parameters, so bias and norm handling is really exercised) with its own offline tokenizer, exports
it (optimum, or ``torch.onnx.export`` where the family says so) into ``<out>/tiny-<arch>/`` and writes
the float64 reference ALTI for ``TEXTS`` into ``expected.npz`` (``input_ids_k``, ``contributions_k``,
``rollout_k``) plus ``texts.json``. Encoders are exported for ``feature-extraction``, decoders for
``text-generation`` (logits, no KV cache).

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

from models.families import DECODERS, ENCODERS, SIZES, family, randomize_biases_and_norms, randomize_parameters

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
    "randomize_biases_and_norms",
    "main",
]

#: The families with committed fixtures (tests/fixtures/tiny-<arch>).
ARCHS = ENCODERS
DECODER_ARCHS = DECODERS

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


# --------------------------------------------------------------------------- tokenizers
def build_tokenizer(style: str):
    """(tokenizers.Tokenizer, special-token kwargs for PreTrainedTokenizerFast) of a tokenizer style
    (``models.families.TokenizerStyle``; a family name picks its family's style)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if style in ("bert", "distilbert", "electra"):  # the first encoders' names, kept for the recipes
        style = "wordpiece"
    elif style not in ("wordpiece", "roberta", "unigram", "t5", "decoder"):
        style = family(style).tokenizer
    if style == "decoder":
        return build_decoder_tokenizer()
    if style == "wordpiece":
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
    elif style == "roberta":
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
    elif style == "unigram":
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
    else:  # t5: SentencePiece unigram, <pad>=0 </s>=1 <unk>=2, </s> appended, no start token
        pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
        pieces += [("\u2581" + w, -float(i % 5) - 1.0) for i, w in enumerate(WORDS)]
        pieces += [("\u2581", -8.0)]
        tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)],
        )
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        special = dict(eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    tok.add_special_tokens([t for t in special.values() if t is not None])
    return tok, special


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


# --------------------------------------------------------------------------- models
def build_tiny_hf_model(arch: str, out_dir: str | Path, seed: int | None = None) -> Path:
    """Build the tiny seeded model of family ``arch`` (``models.families``) and save it (float32
    safetensors, config, fast tokenizer) to ``out_dir`` as a Hugging Face model directory.
    Deterministic for a given (arch, seed)."""
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast

    entry = family(arch)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok, special = build_tokenizer(entry.tokenizer)
    cfg = entry.config(tok.get_vocab_size())
    torch.manual_seed(entry.seed if seed is None else seed)
    if entry.decoder:
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    else:
        model = _model_class(entry.model_class)._from_config(cfg, attn_implementation="eager")
    model.eval()
    (entry.randomize or randomize_parameters)(model)
    model.save_pretrained(out_dir, safe_serialization=True)

    positions = getattr(cfg, "max_position_embeddings", None) or SIZES["max_pos"]  # ALiBi, T5: no table
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=positions - _position_offset(cfg), **special)
    fast.save_pretrained(out_dir)
    return out_dir


def _model_class(name: str):
    """A transformers model class by name; ``AutoModel`` resolves from the config."""
    import transformers

    if name == "AutoModel":
        return _AutoFromConfig
    return getattr(transformers, name)


class _AutoFromConfig:
    """``AutoModel.from_config`` spelled as the model classes' ``_from_config``."""

    @staticmethod
    def _from_config(cfg, **kwargs):
        from transformers import AutoModel

        return AutoModel.from_config(cfg, **kwargs)


def _position_offset(cfg) -> int:
    """Positions RoBERTa-style models skip (they number tokens from the padding id + 1)."""
    return cfg.pad_token_id + 1 if cfg.model_type in ("roberta", "xlm-roberta", "mpnet") else 0


def build_tiny_decoder(arch: str, out_dir: str | Path, seed: int | None = None) -> Path:
    """The tiny seeded causal LM ``arch`` (a decoder family of ``models.families``), saved with its
    tokenizer to ``out_dir``. Deterministic for a given (arch, seed)."""
    if not family(arch).decoder:
        raise ValueError(f"{arch!r} is not a decoder family; expected one of {DECODER_ARCHS}")
    return build_tiny_hf_model(arch, out_dir, seed)


def load_tiny_decoder(hf_dir: str | Path):
    """Load a saved tiny decoder (with its LM head) with eager attention (for the reference)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(hf_dir), attn_implementation="eager")


def load_tiny_model(hf_dir: str | Path):
    """Load a saved tiny model directory with eager attention (for the reference)."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(hf_dir), attn_implementation="eager")


def load_saved(hf_dir: str | Path):
    """A saved tiny model as the class it was saved from (``architectures`` in its config: an encoder,
    a causal LM with its head, T5's encoder alone), with eager attention (for the reference)."""
    import transformers

    config = json.loads((Path(hf_dir) / "config.json").read_text())
    (architecture,) = config.get("architectures") or ["AutoModel"]
    return getattr(transformers, architecture).from_pretrained(str(hf_dir), attn_implementation="eager")


def references(hf_dir: str | Path, tokenizer_json: str | Path, texts=TEXTS) -> tuple[list[list[int]], list]:
    """The token ids of ``texts`` and the float64 reference of each, on the model in ``hf_dir``."""
    from tokenizers import Tokenizer

    from models.fixture_io import check_reference
    from models.reference import reference_alti

    tok = Tokenizer.from_file(str(tokenizer_json))
    model = load_saved(hf_dir)
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

    entry = family(arch)
    fixture = Path(out_root) / f"tiny-{arch}"
    if fixture.exists():
        shutil.rmtree(fixture)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = build_tiny_hf_model(arch, Path(tmp) / "hf")
        if entry.export == "torch":
            export_with_torch(hf_dir, fixture)
        else:
            export_model(hf_dir, fixture, task=entry.task)
        record_expected(fixture, hf_dir, texts)
    return fixture


#: The side files an exported model directory carries beside model.onnx.
_SIDE_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def export_with_torch(hf_dir: str | Path, out_dir: str | Path, opset: int = 17) -> Path:
    """``torch.onnx.export`` (TorchScript) of a saved encoder that optimum has no exporter for (T5's
    encoder alone): inputs ``input_ids`` and ``attention_mask``, output ``last_hidden_state``, batch and
    sequence dynamic; the side files copied beside it."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_saved(hf_dir).eval()
    ids = torch.tensor([[5, 6, 7, 8, 1], [5, 6, 1, 0, 0]], dtype=torch.long)
    mask = (ids != 0).long()
    axes = {0: "batch_size", 1: "sequence_length"}
    with torch.no_grad():
        torch.onnx.export(
            model, (ids, mask), str(out_dir / "model.onnx"), input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"], opset_version=opset, dynamo=False,
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
        )
    for name in _SIDE_FILES:
        if (Path(hf_dir) / name).is_file():
            shutil.copyfile(Path(hf_dir) / name, out_dir / name)
    return out_dir


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
