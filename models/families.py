"""One entry per model family: how its tiny seeded model is configured, initialized, tokenized and
exported (docs/adding-an-architecture.md walks through adding one).

Every family builds a small random model (2 or 3 layers, 32 wide, 4 heads; grouped key/value heads
where the family has them) with non-trivial biases and norm weights, saves it as a Hugging Face
model directory with an offline tokenizer, and exports it to ONNX with optimum (or with
``torch.onnx.export`` where optimum has no exporter for the model class). ``models.tiny`` turns an
entry into a committed fixture; the reference for each family is its adapter in ``models.reference``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Family", "FAMILIES", "ENCODERS", "DECODERS", "family", "key_value_heads", "randomize_parameters", "SIZES"]

#: The tiny models' sizes (ModernBERT gets a third layer, so that local and global layers both follow its
#: first, norm-less, layer).
SIZES = dict(layers=2, hidden=32, heads=4, intermediate=64, max_pos=64)

#: A tokenizer style of ``models.tiny``: BERT's WordPiece with [CLS]/[SEP], RoBERTa's <s>/</s>, a
#: SentencePiece-like unigram (XLM-R), T5's unigram with </s> appended, or the decoders' word level with <s> first.
TokenizerStyle = Literal["wordpiece", "roberta", "unigram", "t5", "decoder"]
#: optimum's exporter, or ``torch.onnx.export`` of the bare model (T5's encoder alone has no optimum exporter).
ExportMethod = Literal["optimum", "torch"]


@dataclass(frozen=True)
class Family:
    """One model family's tiny model.

    ``config(vocab_size)`` makes its transformers config (special-token ids as the tokenizer style
    numbers them); ``randomize(model)`` draws the biases and norm weights that the initializer leaves
    at 0 and 1 (torch's seed is set to ``seed`` first); ``kind`` is the block kind the fixture must be
    matched as (graph_rewrites.AttentionBlock.kind); ``verified`` is the README's note on how.
    """

    name: str
    config: Callable[[int], Any]
    tokenizer: TokenizerStyle
    seed: int
    kind: str
    decoder: bool = False
    export: ExportMethod = "optimum"
    model_class: str = "AutoModel"
    randomize: Callable[[Any], None] | None = None
    note: str = ""
    fixture: bool = True  #: committed under tests/fixtures (else built by the tests that need it)

    @property
    def task(self) -> str:
        return "text-generation" if self.decoder else "feature-extraction"


# --------------------------------------------------------------------------- initialization
def randomize_biases_and_norms(model) -> None:
    """Random linear biases and LayerNorm gamma/beta (BERT's init makes them 0/1/0), so that the
    tests really exercise b_O, gamma and beta. The first five encoders' fixtures were drawn with this."""
    import torch
    from torch import nn

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                mod.bias.normal_(0.0, 0.2)
            elif isinstance(mod, nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0.0, 0.1)


def randomize_decoder_parameters(model) -> None:
    """Biases N(0, 0.2), norm weights U(0.5, 1.5), by parameter name (the GPT-2 and Llama fixtures)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):  # GPT-2's Linear/Conv1D and LayerNorm biases, Qwen2's q/k/v biases
                param.normal_(0.0, 0.2)
            elif "norm" in name or "ln_" in name:  # LayerNorm / RMSNorm weights
                param.uniform_(0.5, 1.5)


def randomize_parameters(model) -> None:
    """Every family's norms and biases, by module: a norm's scale U(0.5, 1.5) (Gemma's ``1 + w`` norms:
    w U(-0.5, 0.5), the same scales), its shift N(0, 0.1); every other bias N(0, 0.2). A norm is any
    module whose class name ends in ``Norm`` (LayerNorm, RMSNorm, T5LayerNorm, GemmaRMSNorm, ...)."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            kind = type(module).__name__
            weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
            if kind.endswith("Norm") and isinstance(weight, torch.nn.Parameter):
                weight.uniform_(-0.5, 0.5) if kind.startswith("Gemma") else weight.uniform_(0.5, 1.5)
                if isinstance(bias, torch.nn.Parameter):
                    bias.normal_(0.0, 0.1)
            elif isinstance(bias, torch.nn.Parameter) and bias.dim() == 1:
                bias.normal_(0.0, 0.2)


# --------------------------------------------------------------------------- configs
#: Special-token ids of each tokenizer style (models.tiny builds the tokenizers with these ids).
WORDPIECE_IDS = dict(pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3, mask_token_id=4)
ROBERTA_IDS = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2)
T5_IDS = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
DECODER_IDS = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2)


def _sizes() -> tuple[int, int, int, int, int]:
    return tuple(SIZES[k] for k in ("layers", "hidden", "heads", "intermediate", "max_pos"))


def _encoder(make: Callable[..., Any], **extra) -> Callable[[int], Any]:
    """A BERT-sized encoder config (``num_hidden_layers`` etc.), initializer range 0.2."""
    def config(vocab_size: int):
        L, D, H, F, P = _sizes()
        fields = dict(num_hidden_layers=L, hidden_size=D, num_attention_heads=H, intermediate_size=F,
                      max_position_embeddings=P, initializer_range=0.2, vocab_size=vocab_size)
        fields.update(extra)
        return make(**fields)
    return config


def _transformers(name: str) -> Callable[..., Any]:
    """A transformers config class, imported when a config is made (the registry itself needs no torch)."""
    def make(**fields):
        import transformers

        return getattr(transformers, name)(**fields)
    return make


def _bert(vocab_size: int):
    L, D, H, F, P = _sizes()
    from transformers import BertConfig

    return BertConfig(num_hidden_layers=L, hidden_size=D, num_attention_heads=H, intermediate_size=F,
                      max_position_embeddings=P, initializer_range=0.2, vocab_size=vocab_size, pad_token_id=0,
                      type_vocab_size=2)


def _distilbert(vocab_size: int):
    L, D, H, F, P = _sizes()
    from transformers import DistilBertConfig

    return DistilBertConfig(dim=D, hidden_dim=F, n_layers=L, n_heads=H, vocab_size=vocab_size,
                            max_position_embeddings=P, initializer_range=0.2, pad_token_id=0)


def _t5_encoder(vocab_size: int):
    L, D, H, F, _ = _sizes()
    from transformers import T5Config

    return T5Config(vocab_size=vocab_size, d_model=D, d_kv=D // H, d_ff=F, num_layers=L, num_heads=H,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16, feed_forward_proj="gated-gelu",
                    is_encoder_decoder=False, use_cache=False, **T5_IDS)


def _decoder(make: Callable[..., Any], kv_heads: int | None = 2, **extra) -> Callable[[int], Any]:
    """A Llama-sized causal LM config: 2 layers, 32 wide, 4 query heads (``kv_heads`` key/value heads)."""
    def config(vocab_size: int):
        L, D, H, F, P = _sizes()
        fields = dict(hidden_size=D, intermediate_size=F, num_hidden_layers=L, num_attention_heads=H,
                      max_position_embeddings=P, tie_word_embeddings=False, initializer_range=0.2,
                      vocab_size=vocab_size, **DECODER_IDS)
        if kv_heads is not None:
            fields["num_key_value_heads"] = kv_heads
        fields.update(extra)
        return make(**fields)
    return config


def _gpt2(vocab_size: int):
    L, D, H, F, P = _sizes()
    from transformers import GPT2Config

    return GPT2Config(n_positions=P, n_embd=D, n_layer=L, n_head=H, n_inner=F, vocab_size=vocab_size,
                      initializer_range=0.2, **DECODER_IDS)


def _opt(vocab_size: int):
    L, D, H, F, P = _sizes()
    from transformers import OPTConfig

    return OPTConfig(hidden_size=D, ffn_dim=F, num_hidden_layers=L, num_attention_heads=H, max_position_embeddings=P,
                     word_embed_proj_dim=D, do_layer_norm_before=True, init_std=0.2, vocab_size=vocab_size,
                     **DECODER_IDS)


def _bloom(vocab_size: int):
    L, D, H, _, _ = _sizes()
    from transformers import BloomConfig

    return BloomConfig(hidden_size=D, n_layer=L, n_head=H, initializer_range=0.2, vocab_size=vocab_size, **DECODER_IDS)


def _gpt_neox(vocab_size: int):
    L, D, H, F, P = _sizes()
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=F,
                         max_position_embeddings=P, rotary_pct=0.5, use_parallel_residual=True,
                         initializer_range=0.2, tie_word_embeddings=False, vocab_size=vocab_size, **DECODER_IDS)


# --------------------------------------------------------------------------- the registry
_FAMILIES = (
    # -- the first encoders (post-LN); their fixtures were drawn with randomize_biases_and_norms
    Family("bert", _bert, "wordpiece", 1, "post", randomize=randomize_biases_and_norms),
    Family("roberta", _encoder(_transformers("RobertaConfig"), type_vocab_size=1, **ROBERTA_IDS), "roberta", 2, "post",
           randomize=randomize_biases_and_norms),
    Family("distilbert", _distilbert, "wordpiece", 3, "post", randomize=randomize_biases_and_norms),
    Family("electra", _encoder(_transformers("ElectraConfig"), embedding_size=16, type_vocab_size=2, pad_token_id=0),
           "wordpiece", 4, "post", randomize=randomize_biases_and_norms, note="embeddings projected 16 -> 32"),
    Family("xlm-roberta", _encoder(_transformers("XLMRobertaConfig"), type_vocab_size=1, **ROBERTA_IDS), "unigram",
           5, "post", randomize=randomize_biases_and_norms),
    # -- encoders added with the block kinds
    Family("deberta-v2", _encoder(_transformers("DebertaV2Config"), type_vocab_size=0, relative_attention=True,
                                  position_buckets=16, max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                                  norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
                                  pad_token_id=0),
           "wordpiece", 21, "post", note="DeBERTa-v3 layout: disentangled relative attention, shared keys"),
    Family("modernbert", _encoder(_transformers("ModernBertConfig"), num_hidden_layers=3, global_attn_every_n_layers=2,
                                  local_attention=6, attention_bias=True, mlp_bias=True, norm_bias=True,
                                  classifier_bias=True, decoder_bias=True, **WORDPIECE_IDS,
                                  bos_token_id=2, eos_token_id=3),
           "wordpiece", 22, "pre", note="3 layers: no norm before the first attention; local (window 6) and global"),
    Family("albert", _encoder(_transformers("AlbertConfig"), embedding_size=16, num_hidden_groups=1,
                              type_vocab_size=2, pad_token_id=0, bos_token_id=2, eos_token_id=3),
           "wordpiece", 23, "post", note="one layer's weights used for both layers"),
    Family("mpnet", _encoder(_transformers("MPNetConfig"), **ROBERTA_IDS),
           "roberta", 24, "post", note="relative position bias, positions offset by the padding id + 1"),
    Family("t5-encoder", _t5_encoder, "t5", 25, "pre", export="torch", model_class="T5EncoderModel",
           note="T5EncoderModel: unscaled scores, relative bias, RMSNorm without bias"),
    # -- decoders (causal, pre-LN unless said)
    Family("gpt2", _gpt2, "decoder", 11, "pre", decoder=True, randomize=randomize_decoder_parameters),
    Family("llama", _decoder(_transformers("LlamaConfig")), "decoder", 12, "pre", decoder=True,
           randomize=randomize_decoder_parameters, note="grouped key/value heads"),
    Family("qwen2", _decoder(_transformers("Qwen2Config")), "decoder", 13, "pre", decoder=True,
           randomize=randomize_decoder_parameters, note="biases on Q, K and V", fixture=False),
    Family("mistral", _decoder(_transformers("MistralConfig"), sliding_window=6), "decoder", 31, "pre", decoder=True,
           note="sliding window 6, grouped key/value heads"),
    Family("qwen3", _decoder(_transformers("Qwen3Config"), head_dim=8, attention_bias=True), "decoder", 32, "pre",
           decoder=True, note="RMSNorm on queries and keys, biases on Q, K, V and O"),
    Family("gemma2", _decoder(_transformers("Gemma2Config"), head_dim=8, query_pre_attn_scalar=8, sliding_window=6,
                              attn_logit_softcapping=2.0, final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh"),
           "decoder", 33, "sandwich", decoder=True,
           note="norm on the attention output before the residual add; soft-capped scores (eager export)"),
    Family("gemma3", _decoder(_transformers("Gemma3TextConfig"), kv_heads=1, head_dim=8, query_pre_attn_scalar=8,
                              sliding_window=6, layer_types=["sliding_attention", "full_attention"]),
           "decoder", 34, "sandwich", decoder=True, note="sandwich norms, q/k norms, one key/value head"),
    Family("phi3", _decoder(_transformers("Phi3Config"), pad_token_id=1), "decoder", 35, "pre", decoder=True,
           note="Q, K and V from one fused projection, grouped key/value heads"),
    Family("gpt-neox", _gpt_neox, "decoder", 36, "parallel", decoder=True,
           note="parallel attention and MLP, two norms; fused QKV interleaved per head; partial rotary"),
    Family("phi", _decoder(_transformers("PhiConfig"), kv_heads=None, partial_rotary_factor=0.5), "decoder", 37,
           "parallel", decoder=True, note="Phi-2: parallel attention and MLP from one shared norm"),
    Family("falcon", _decoder(_transformers("FalconConfig"), kv_heads=None, multi_query=True, parallel_attn=True,
                              new_decoder_architecture=False, bias=True, alibi=False),
           "decoder", 40, "parallel", decoder=True,
           note="Falcon-7B's form: parallel attention and MLP from one norm, one key/value head in a fused QKV"),
    Family("opt", _opt, "decoder", 38, "pre", decoder=True, note="learned positions offset by 2"),
    Family("bloom", _bloom, "decoder", 39, "pre", decoder=True,
           note="ALiBi; fused QKV interleaved per head; heads folded into the batch axis"),
)

FAMILIES: dict[str, Family] = {f.name: f for f in _FAMILIES}
#: The families with a committed fixture ``tests/fixtures/tiny-<name>``.
ENCODERS = tuple(f.name for f in _FAMILIES if not f.decoder and f.fixture)
DECODERS = tuple(f.name for f in _FAMILIES if f.decoder and f.fixture)


def key_value_heads(config: dict) -> int:
    """How many key/value heads a saved config's attention has (its config.json, as a dict)."""
    if config.get("multi_query") and not config.get("new_decoder_architecture"):  # Falcon-7B's form
        return 1
    heads = config.get("num_attention_heads") or config.get("n_head")
    return config.get("num_key_value_heads") or heads


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown tiny family {name!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
