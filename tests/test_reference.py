"""Checks of the independent float64 PyTorch reference (models/reference.py) and of the
reproducibility of the committed tiny fixtures (models/tiny.py), for every family of models/families.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from models.families import FAMILIES  # noqa: E402
from models.reference import ADAPTERS, find_adapter, reference_alti  # noqa: E402
from models.tiny import ARCHS, DECODER_ARCHS, build_tiny_hf_model, expected_for_dir, load_saved, load_tiny_model  # noqa: E402

pytestmark = pytest.mark.torch

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-10


def _check_result(res, S, L=None, rows_sum_to_one=True):
    C, R = res.contributions, res.rollout
    assert C.dtype == np.float64 and R.dtype == np.float64
    assert C.shape == R.shape and C.shape[1:] == (S, S)
    if L is not None:
        assert C.shape[0] == L and res.block_outputs_error.shape == (L,)
    assert res.block_outputs_error.max() < TOL, res.block_outputs_error
    assert C.min() >= 0 and R.min() >= 0
    if rows_sum_to_one:
        np.testing.assert_allclose(C.sum(-1), 1.0, atol=1e-12)
        np.testing.assert_allclose(R.sum(-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(R[0], C[0])
    for l in range(1, C.shape[0]):
        np.testing.assert_allclose(R[l], C[l] @ R[l - 1], atol=1e-14)


@pytest.fixture(scope="module", params=ARCHS + DECODER_ARCHS)
def tiny(request, tmp_path_factory):
    arch = request.param
    hf_dir = build_tiny_hf_model(arch, tmp_path_factory.mktemp(f"hf-{arch}"))
    return arch, hf_dir


def test_tiny_reference_recomposes_and_normalizes(tiny):
    """The reference rebuilds each block's output from its decomposition (float64 rounding), for the
    family's block kind, and its matrices are row-stochastic rollouts; decoders are causal."""
    arch, hf_dir = tiny
    from tokenizers import Tokenizer

    fixture = FIXTURES / f"tiny-{arch}"
    tok = Tokenizer.from_file(str(fixture / "tokenizer.json"))
    model = load_saved(hf_dir)
    adapter, base = find_adapter(model)
    assert adapter.kind == FAMILIES[arch].kind
    for text in json.loads((fixture / "texts.json").read_text()):
        enc = tok.encode(text)
        res = reference_alti(model, enc.ids, token_type_ids=enc.type_ids)
        _check_result(res, len(enc.ids), L=len(adapter.layers(base)))
        if FAMILIES[arch].decoder:
            assert not np.triu(res.contributions, 1).any()


def test_fixture_is_reproduced_by_rebuilt_model(tiny):
    """Rebuilding the model with the same seed and re-running the reference gives expected.npz."""
    arch, hf_dir = tiny
    fixture = FIXTURES / f"tiny-{arch}"
    texts = json.loads((fixture / "texts.json").read_text())
    got = expected_for_dir(hf_dir, fixture / "tokenizer.json", texts)
    with np.load(fixture / "expected.npz") as want:
        assert sorted(want.files) == sorted(got)
        for k in range(len(texts)):
            np.testing.assert_array_equal(got[f"input_ids_{k}"], want[f"input_ids_{k}"])
            assert want[f"input_ids_{k}"].dtype == np.int64
            for name in ("contributions", "rollout"):
                np.testing.assert_allclose(got[f"{name}_{k}"], want[f"{name}_{k}"], rtol=0, atol=TOL)


def test_every_family_has_an_adapter_of_its_kind():
    from models.tiny import build_tokenizer

    for name, entry in FAMILIES.items():
        config = entry.config(build_tokenizer(entry.tokenizer)[0].get_vocab_size())
        assert ADAPTERS[config.model_type].kind == entry.kind, name


def test_fixture_layout():
    for arch in ARCHS + DECODER_ARCHS:
        fixture = FIXTURES / f"tiny-{arch}"
        for name in ("model.onnx", "config.json", "tokenizer.json", "expected.npz", "texts.json"):
            assert (fixture / name).is_file(), fixture / name
        assert sum(p.stat().st_size for p in fixture.iterdir()) < 300 * 1024


def test_task_head_and_padding_match_base():
    """A task-head wrapper gives the base model's numbers; padding gives zero rows/cols and the
    same numbers on the real tokens."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = build_tiny_hf_model("bert", tmp)
        base = load_tiny_model(hf_dir)
        head = transformers.BertForSequenceClassification.from_pretrained(hf_dir, attn_implementation="eager")
    ids = np.array([2, 5, 49, 83, 10, 3])
    ref = reference_alti(base, ids)
    np.testing.assert_allclose(reference_alti(head, ids).rollout, ref.rollout, atol=1e-13)
    padded = np.concatenate([ids, [0, 0, 0]])
    mask = np.array([1] * len(ids) + [0, 0, 0])
    res = reference_alti(base, padded, attention_mask=mask)
    n = len(ids)
    np.testing.assert_allclose(res.rollout[:, :n, :n], ref.rollout, atol=1e-12)
    np.testing.assert_allclose(res.contributions[:, :n, :n], ref.contributions, atol=1e-12)
    assert not res.rollout[:, n:, :].any() and not res.rollout[:, :, n:].any()


@pytest.mark.parametrize("kind", ["gpt2", "llama-gqa"])
def test_pre_ln_adapters(kind):
    """Pre-LN decoders: y = sum_j T[i,j] + b_O equals the residual sum; causal zeros."""
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=64)
    else:
        cfg = transformers.LlamaConfig(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, vocab_size=50, attention_bias=True,
        )
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    res = reference_alti(model, np.arange(3, 13))
    _check_result(res, 10, L=2)
    assert not np.triu(res.contributions, 1).any()


@pytest.mark.slow
def test_minilm_reference_recomposes():
    from tokenizers import Tokenizer

    from models.minilm import hf_minilm_dir

    try:
        hf_dir = hf_minilm_dir()
    except Exception as exc:  # no network and nothing cached
        pytest.skip(f"all-MiniLM-L6-v2 not available: {exc}")
    model = transformers.AutoModel.from_pretrained(str(hf_dir), attn_implementation="eager")
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))  # pads to a fixed 128 tokens
    tok.no_padding()
    for text in ("The movie was surprisingly good.", "a " + "very " * 60 + "long sentence"):
        enc = tok.encode(text)
        res = reference_alti(model, enc.ids, token_type_ids=enc.type_ids)
        _check_result(res, len(enc.ids), L=6)
