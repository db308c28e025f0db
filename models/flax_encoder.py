"""tiny-flax-mha and tiny-flax-sdpa: a Flax NNX post-LN encoder with a padding mask, exported by
jax2onnx (runs in the jax env).

    python -m models.frameworks jax2onnx       # creates the environment, then runs this module

Two attention forms of the same 2-layer, 32-wide encoder (seeded, random biases and LayerNorm
parameters):

- ``tiny-flax-mha``: ``nnx.MultiHeadAttention`` with ``nnx.make_attention_mask``, opset 17. jax2onnx
  writes the Softmax unmasked and then renormalizes it over the kept keys
  (Mul(mask) -> ReduceSum -> Where -> Div -> Where), and LayerNorm's variance as
  ``max(E[x^2] - E[x]^2, 0)``. Inputs keep jax2onnx's own names, ``in_0`` and ``in_1``: explaining it
  needs ``--input-map in_0=ids --input-map in_1=mask``.
- ``tiny-flax-sdpa``: attention through ``nnx.dot_product_attention``, opset 23: the ONNX Attention
  op, and LayerNormalization with ``axis=2`` (normalization_mode="prefer_native"); inputs named
  ``input_ids`` and ``attention_mask``.

The reference runs the same parameters in float64 in Flax (``jax_enable_x64``): per layer, the
input, the probabilities that its attention module sows (Flax's float64 weights path, what both forms compute), the
block output from the layer's own modules, the weights from the modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from flax import nnx
from jax2onnx import to_onnx

from models.fixture_io import perturbed, record_references, write_tokenizer
from models.reference_math import LayerCapture, reference_alti
from models.tiny import TEXTS, build_tokenizer

WIDTH, HEADS, FEED_FORWARD, LAYERS, POSITIONS = 32, 4, 64, 2, 64
SEED = 23


class SelfAttention(nnx.Module):
    """Q, K, V and output projections around ``nnx.dot_product_attention`` (the sdpa form)."""

    def __init__(self, rngs: nnx.Rngs):
        self.query, self.key, self.value, self.out = (nnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(4))

    def split(self, x):
        return x.reshape(x.shape[0], x.shape[1], HEADS, WIDTH // HEADS)

    def __call__(self, x, mask, sow_weights: bool = False):
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        # module=None takes jax.nn.dot_product_attention (the ONNX Attention op in the export); a module
        # takes Flax's weights path, which keeps float64 and sows the probabilities (the reference).
        context = nnx.dot_product_attention(q, k, v, mask=mask, module=self if sow_weights else None)
        return self.out(context.reshape(x.shape[0], x.shape[1], WIDTH))


class Layer(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, form: str):
        if form == "mha":
            self.attention = nnx.MultiHeadAttention(num_heads=HEADS, in_features=WIDTH, decode=False, rngs=rngs)
        else:
            self.attention = SelfAttention(rngs)
        self.attention_norm = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.up = nnx.Linear(WIDTH, FEED_FORWARD, rngs=rngs)
        self.down = nnx.Linear(FEED_FORWARD, WIDTH, rngs=rngs)
        self.output_norm = nnx.LayerNorm(WIDTH, rngs=rngs)

    def attend(self, x, mask, sow_weights: bool = False):
        if isinstance(self.attention, nnx.MultiHeadAttention):
            return self.attention(x, mask=mask, sow_weights=sow_weights)
        return self.attention(x, mask, sow_weights)

    def __call__(self, x, mask):
        x = self.attention_norm(x + self.attend(x, mask))
        return self.output_norm(x + self.down(nnx.gelu(self.up(x), approximate=False)))


class Encoder(nnx.Module):
    def __init__(self, vocabulary_size: int, form: str, rngs: nnx.Rngs):
        self.tokens = nnx.Embed(vocabulary_size, WIDTH, rngs=rngs)
        self.positions = nnx.Embed(POSITIONS, WIDTH, rngs=rngs)
        self.embedding_norm = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.layers = nnx.List([Layer(rngs, form) for _ in range(LAYERS)])

    def embed(self, ids):
        positions = jnp.cumsum(jnp.ones_like(ids), axis=1) - 1  # 0..S-1 per row (symbolic S exports)
        return self.embedding_norm(self.tokens(ids) + self.positions(positions))

    def __call__(self, ids, mask):
        x = self.embed(ids)
        attention_mask = nnx.make_attention_mask(mask, mask)
        for layer in self.layers:
            x = layer(x, attention_mask)
        return x


FORMS = {
    "mha": dict(opset=17, normalization_mode="auto", input_names=None),
    "sdpa": dict(opset=23, normalization_mode="prefer_native", input_names=["input_ids", "attention_mask"]),
}


def build_model(vocabulary_size: int, form: str) -> Encoder:
    model = Encoder(vocabulary_size, form, nnx.Rngs(SEED))
    rng = np.random.default_rng(SEED)
    for path, param in nnx.state(model, nnx.Param).flat_state():
        param.set_value(jnp.asarray(perturbed(_kind(path), tuple(param.get_value().shape), rng)))
    return model


def _kind(path: tuple) -> str | None:
    names = [str(p) for p in path]
    if any("norm" in n for n in names):
        return "norm_scale" if names[-1] == "scale" else "norm_shift"
    return "bias" if names[-1] == "bias" else None


def export(model: Encoder, form: str, path: Path) -> None:
    options = FORMS[form]
    spec = jax.ShapeDtypeStruct(("B", "S"), jnp.int32)
    proto = to_onnx(model, [spec, spec], opset=options["opset"], normalization_mode=options["normalization_mode"],
                    input_names=options["input_names"], output_names=["last_hidden_state"])
    onnx.save(proto, str(path))


@nnx.capture(nnx.Intermediate)
def _attend_sowing(layer: Layer, x, mask):
    return layer.attend(x, mask, sow_weights=True)


def reference(model: Encoder, ids: np.ndarray):
    """ALTI of one text in float64, stepping Flax's own modules (parameters cast to float64); the
    probabilities are the ones the attention module sows (Flax's weights path, all float64)."""
    model = nnx.clone(model)
    state = nnx.state(model)
    nnx.update(model, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64) if jnp.issubdtype(a.dtype, jnp.floating) else a, state))
    ids = jnp.asarray(ids)[None]
    mask = nnx.make_attention_mask(jnp.ones_like(ids), jnp.ones_like(ids))
    x = model.embed(ids)
    captures = []
    for layer in model.layers:
        attention = layer.attention
        context, sown = _attend_sowing(layer, x, mask)
        (probs,) = [leaf for path, leaf in nnx.to_flat_state(sown) if "attention_weights" in map(str, path)]
        if isinstance(attention, nnx.MultiHeadAttention):
            v, out_weight = attention.value(x), attention.out.kernel.get_value().reshape(-1, WIDTH)  # [H, dh, D] -> [H*dh, D]
        else:
            v, out_weight = attention.value(x), attention.out.kernel.get_value()
        norm = layer.attention_norm
        captures.append(LayerCapture(
            x=np.asarray(x[0]),
            probs=np.asarray(_value(probs))[0],
            values=np.asarray(v[0]).reshape(ids.shape[1], -1),
            out_weight=np.asarray(out_weight),
            out_bias=np.asarray(attention.out.bias.get_value()),
            norm=(np.asarray(norm.scale.get_value()), np.asarray(norm.bias.get_value()), float(norm.epsilon)),
            block_output=np.asarray(norm(x + context)[0]),
        ))
        x = layer(x, mask)
    return reference_alti(captures)


def _value(sown):
    """A sown intermediate: a Variable holding a tuple of the values sown (one call here)."""
    value = sown.get_value() if hasattr(sown, "get_value") else sown
    return value[0] if isinstance(value, tuple) else value


def main(out: Path) -> list[Path]:
    tokenizer, _ = build_tokenizer("bert")
    folders = []
    for form in FORMS:
        model = build_model(tokenizer.get_vocab_size(), form)
        folder = out / f"tiny-flax-{form}"
        folder.mkdir(parents=True, exist_ok=True)
        export(model, form, folder / "model.onnx")
        write_tokenizer(folder, tokenizer, POSITIONS)
        with jax.enable_x64(True):
            record_references(folder, TEXTS, tokenizer, lambda e: reference(model, np.array(e.ids)))
        folders.append(folder)
    return folders


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
