"""tiny-tf-bert: Hugging Face's TensorFlow BERT classifier, exported by tf2onnx (runs in the tensorflow env).

    python -m models.frameworks tf2onnx        # creates the environment, then runs this module

A 2-layer, 32-wide ``TFBertForSequenceClassification`` (3 labels; seeded, with random biases and
LayerNorm parameters) is saved as a SavedModel with int32 inputs and converted with
``python -m tf2onnx.convert --opset 17``. tf2onnx writes LayerNorm as ``GlobalAveragePool`` means
and the folded ``x * s + (beta - mean * s)``; it also leaves an ``Erfc`` (the GELU) that onnxruntime
cannot run, patched here to ``1 - Erf`` as users do. The reference runs the same weights in
float64 in TensorFlow: each layer's input and attention probabilities from the model
(``output_hidden_states``, ``output_attentions``), the block output from calling the layer's own
attention module, the weights from the layers. The logit references (``expected_logit.npz``)
carry the class logits forward part by part (``models.reference_logit_math``) from the same
float64 model's first-layer input and weights:

    python -m models.tf_bert --logit tests/fixtures    # in the tensorflow env: the logit references alone
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # transformers' TF models need tf-keras

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from transformers import BertConfig, TFBertForSequenceClassification  # noqa: E402

from models.fixture_io import perturbed, record_references, write_tokenizer  # noqa: E402
from models.reference_logit_math import BertLayerWeights, decompx_classifier  # noqa: E402
from models.reference_math import LayerCapture, reference_alti  # noqa: E402
from models.tiny import TEXTS, build_tokenizer  # noqa: E402

NAME = "tiny-tf-bert"
SEED = 21
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)


def build_model(config: BertConfig) -> TFBertForSequenceClassification:
    """The model with every weight drawn from a seeded NumPy generator, biases and LayerNorm parameters
    random too (TF initializes them to 0, 1, 0)."""
    tf.random.set_seed(SEED)
    model = TFBertForSequenceClassification(config)
    model(tf.constant([[2, 3]], dtype=tf.int32))
    rng = np.random.default_rng(SEED)
    for weight in model.weights:
        weight.assign(perturbed(_kind(weight.name), tuple(weight.shape), rng))
    return model


def _kind(name: str) -> str | None:
    if "LayerNorm" in name:
        return "norm_scale" if "gamma" in name else "norm_shift"
    return "bias" if name.endswith("bias:0") else None


def export(model, folder: Path) -> Path:
    """SavedModel (int32 inputs) -> tf2onnx opset 17 -> Erfc patched to 1 - Erf."""
    signature = [tf.TensorSpec([None, None], tf.int32, name=n) for n in ("input_ids", "attention_mask", "token_type_ids")]

    @tf.function(input_signature=signature)
    def serve(input_ids, attention_mask, token_type_ids):
        return {"logits": model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits}

    path = folder / "model.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(model, tmp, signatures={"serving_default": serve})
        subprocess.run(
            [sys.executable, "-m", "tf2onnx.convert", "--saved-model", tmp, "--opset", "17", "--output", str(path)],
            check=True, capture_output=True,
        )
    proto = onnx.load(str(path))
    _patch_erfc(proto)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def _patch_erfc(model: onnx.ModelProto) -> None:
    """erfc(x) = 1 - erf(x): tf2onnx 1.17 leaves Erfc, which is no ONNX op."""
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Erfc":
            nodes.append(node)
            continue
        (x,), (y,) = node.input, node.output
        one = onnx.helper.make_node("Constant", [], [f"{y}/one"], value=onnx.numpy_helper.from_array(np.array(1.0, np.float32)))
        nodes += [one, onnx.helper.make_node("Erf", [x], [f"{y}/erf"]), onnx.helper.make_node("Sub", [f"{y}/one", f"{y}/erf"], [y])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def reference(model32, config: BertConfig, ids: np.ndarray, type_ids: np.ndarray):
    """ALTI of one text in float64, from TensorFlow's own float64 run of the same weights."""
    model = float64_model(model32, config)
    batch = dict(input_ids=ids[None].astype(np.int32), token_type_ids=type_ids[None].astype(np.int32))
    run = model(**batch, output_hidden_states=True, output_attentions=True, training=False)
    no_mask = tf.zeros((1, 1, 1, len(ids)), dtype=tf.float64)  # additive: every position is a real token
    layers = []
    for k, layer in enumerate(model.bert.encoder.layer):
        x = run.hidden_states[k]
        attention = layer.attention
        block_output = attention(x, no_mask, None, None, None, None, False, training=False)[0]
        value, output = attention.self_attention.value, attention.dense_output
        norm = output.LayerNorm
        layers.append(LayerCapture(
            x=x.numpy()[0],
            probs=run.attentions[k].numpy()[0],
            values=x.numpy()[0] @ value.kernel.numpy() + value.bias.numpy(),
            out_weight=output.dense.kernel.numpy(),
            out_bias=output.dense.bias.numpy(),
            norm=(norm.gamma.numpy(), norm.beta.numpy(), float(norm.epsilon)),
            block_output=block_output.numpy()[0],
        ))
    return reference_alti(layers)


def float64_model(model32, config: BertConfig) -> TFBertForSequenceClassification:
    """The same weights in a float64 model."""
    tf_keras.backend.set_floatx("float64")
    try:
        model = TFBertForSequenceClassification(config)
        model(tf.constant([[2, 3]], dtype=tf.int32))
        model.set_weights(model32.get_weights())
    finally:
        tf_keras.backend.set_floatx("float32")
    return model


#: The logits the logit reference decomposes for each text: (target, foil) classes.
LOGIT_QUERIES = ((0, None), (1, None), (2, None), (2, 0))


def logit_references(model32, config: BertConfig, ids: np.ndarray, type_ids: np.ndarray) -> dict[str, np.ndarray]:
    """The class logits of one text decomposed (docs/logit.md) in float64 from TensorFlow's own
    weights and first-layer input: per query k, ``attribution_k``, ``parts_k`` (layer 0, layer 1,
    head) and ``value_k`` (from TensorFlow's float64 logits)."""
    model = float64_model(model32, config)
    batch = dict(input_ids=ids[None].astype(np.int32), token_type_ids=type_ids[None].astype(np.int32))
    run = model(**batch, output_hidden_states=True, training=False)

    def dense(layer) -> tuple[np.ndarray, np.ndarray]:
        return layer.kernel.numpy(), layer.bias.numpy()

    def norm(layer) -> tuple[np.ndarray, np.ndarray, float]:
        return layer.gamma.numpy(), layer.beta.numpy(), float(layer.epsilon)

    layers = []
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self_attention
        layers.append(BertLayerWeights(
            config.num_attention_heads, dense(attention.query), dense(attention.key), dense(attention.value),
            dense(layer.attention.dense_output.dense), norm(layer.attention.dense_output.LayerNorm),
            dense(layer.intermediate.dense), dense(layer.bert_output.dense), norm(layer.bert_output.LayerNorm)))
    x = run.hidden_states[0].numpy()[0]
    logits = run.logits.numpy()[0]
    found = {}
    for k, (target, foil) in enumerate(LOGIT_QUERIES):
        result = decompx_classifier(x, layers, dense(model.bert.pooler.dense), dense(model.classifier), logits,
                                    target, foil)
        found[f"attribution_{k}"] = result.attribution
        found[f"parts_{k}"] = np.array([result.parts["layer 0"], result.parts["layer 1"], result.parts["head"]])
        found[f"value_{k}"] = np.array(result.value)
    return found


def record_logit_references(out: Path) -> Path:
    """expected_logit.npz beside the committed fixture: the same seeded model, rebuilt (the ONNX file is
    not written again); per text t and query k, ``{name}_{t}_{k}``."""
    tokenizer, _ = build_tokenizer("bert")
    config = _config(tokenizer)
    model = build_model(config)
    folder = out / NAME
    arrays = {}
    for t, text in enumerate(TEXTS):
        encoding = tokenizer.encode(text)
        for name, value in logit_references(model, config, np.array(encoding.ids), np.array(encoding.type_ids)).items():
            key, k = name.rsplit("_", 1)
            arrays[f"{key}_{t}_{k}"] = value
    # the queries travel with their answers (a foil of -1: none), so the test needs no copy of them
    arrays["queries"] = np.array([(target, -1 if foil is None else foil) for target, foil in LOGIT_QUERIES])
    path = folder / "expected_logit.npz"
    np.savez_compressed(path, **arrays)
    return path


def _config(tokenizer) -> BertConfig:
    return BertConfig(vocab_size=tokenizer.get_vocab_size(), type_vocab_size=2, initializer_range=0.2, pad_token_id=0,
                      num_labels=3, architectures=["TFBertForSequenceClassification"], **SIZES)


def main(out: Path) -> Path:
    tokenizer, _ = build_tokenizer("bert")
    config = _config(tokenizer)
    model = build_model(config)
    folder = out / NAME
    folder.mkdir(parents=True, exist_ok=True)
    export(model, folder)
    write_tokenizer(folder, tokenizer, config.max_position_embeddings)
    (folder / "config.json").write_text(json.dumps(config.to_dict(), indent=1, sort_keys=True) + "\n")
    record_references(folder, TEXTS, tokenizer, lambda e: reference(model, config, np.array(e.ids), np.array(e.type_ids)))
    record_logit_references(out)
    return folder


if __name__ == "__main__":
    if sys.argv[1:2] == ["--logit"]:  # the logit references alone, for the committed fixture
        print(record_logit_references(Path(sys.argv[2])))
    else:
        print(main(Path(sys.argv[1])))
