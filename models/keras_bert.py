"""tiny-keras-bert: a keras_hub ``BertBackbone`` exported by Keras 3's ``model.export(format="onnx")``
(runs in the tensorflow env, Keras on its TensorFlow backend).

    python -m models.frameworks keras          # creates the environment, then runs this module

A 2-layer, 32-wide backbone (seeded, with random biases and LayerNorm parameters). Keras writes its
einsum attention as MatMul with Unsqueeze, a 5-D Transpose and Reshape around it, masks the
Softmax with Mul/Add on both sides, folds LayerNorm into ``x * s + (-mean * s + beta)``, and names
the int32 inputs ``token_ids``, ``segment_ids``, ``padding_mask``. The reference runs the same
weights in float64 in Keras (a float64 backbone given the float32 weights): per layer, the input,
the probabilities from the layer's own MultiHeadAttention (``return_attention_scores``) and the
block output from its own LayerNormalization, the weights from the layers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

from models.fixture_io import perturbed, record_references, write_tokenizer  # noqa: E402
from models.reference_math import LayerCapture, reference_alti  # noqa: E402
from models.tiny import TEXTS, build_tokenizer  # noqa: E402

NAME = "tiny-keras-bert"
SEED = 22
SIZES = dict(num_layers=2, num_heads=4, hidden_dim=32, intermediate_dim=64, max_sequence_length=64)


def build_model(vocabulary_size: int, dtype: str = "float32") -> keras_hub.models.BertBackbone:
    keras.utils.set_random_seed(SEED)
    model = keras_hub.models.BertBackbone(vocabulary_size=vocabulary_size, dtype=dtype, **SIZES)
    model(_inputs(np.array([2, 3])))
    return model


def _inputs(ids: np.ndarray, segments: np.ndarray | None = None) -> dict[str, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int32)[None]
    segments = np.zeros_like(ids) if segments is None else np.asarray(segments, dtype=np.int32)[None]
    return {"token_ids": ids, "segment_ids": segments, "padding_mask": np.ones_like(ids)}


def randomize(model) -> None:
    """Every weight from a seeded NumPy generator, biases and LayerNorm parameters random too (Keras
    initializes them to 0, 1, 0)."""
    rng = np.random.default_rng(SEED)
    for weight in model.weights:
        weight.assign(perturbed(_kind(weight.path), tuple(weight.shape), rng))


def _kind(path: str) -> str | None:
    if "norm" in path:
        return "norm_scale" if path.endswith("gamma") else "norm_shift"
    return "bias" if path.endswith("bias") else None


def reference(model32, vocabulary_size: int, ids: np.ndarray, segments: np.ndarray):
    """ALTI of one text in float64, stepping Keras's own float64 layers through the backbone."""
    model = build_model(vocabulary_size, dtype="float64")
    model.set_weights(model32.get_weights())
    batch = _inputs(ids, segments)
    tokens = model.token_embedding(batch["token_ids"])
    x = model.embeddings_add((tokens, model.position_embedding(tokens), model.segment_embedding(batch["segment_ids"])))
    x = model.embeddings_layer_norm(x)
    layers = []
    for layer in model.transformer_layers:
        attention, norm = layer._self_attention_layer, layer._self_attention_layer_norm
        context, probs = attention(query=x, value=x, return_attention_scores=True, training=False)
        block_output = norm(x + context)
        value, output = attention._value_dense, attention._output_dense
        width = x.shape[-1]
        layers.append(LayerCapture(
            x=np.asarray(x)[0],
            probs=np.asarray(probs)[0],
            values=np.asarray(x)[0] @ np.asarray(value.kernel).reshape(width, -1) + np.asarray(value.bias).reshape(-1),
            out_weight=np.asarray(output.kernel).reshape(-1, width),  # [H, dh, D] -> [H*dh, D], head-major
            out_bias=np.asarray(output.bias),
            norm=(np.asarray(norm.gamma), np.asarray(norm.beta), float(norm.epsilon)),
            block_output=np.asarray(block_output)[0],
        ))
        x = layer(x, padding_mask=batch["padding_mask"], training=False)
    whole = np.asarray(model(batch)["sequence_output"])
    if not np.allclose(np.asarray(x), whole, atol=1e-12):  # the layer-by-layer run is the model's run
        raise AssertionError(f"{NAME}: stepping the layers does not reproduce the backbone ({np.abs(x - whole).max():.3g})")
    return reference_alti(layers)


def main(out: Path) -> Path:
    tokenizer, _ = build_tokenizer("bert")
    vocabulary_size = tokenizer.get_vocab_size()
    model = build_model(vocabulary_size)
    randomize(model)
    folder = out / NAME
    folder.mkdir(parents=True, exist_ok=True)
    model.export(str(folder / "model.onnx"), format="onnx", verbose=False)
    write_tokenizer(folder, tokenizer, SIZES["max_sequence_length"])
    record_references(folder, TEXTS, tokenizer, lambda e: reference(model, vocabulary_size, np.array(e.ids), np.array(e.type_ids)))
    return folder


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
