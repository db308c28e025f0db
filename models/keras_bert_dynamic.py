"""tiny-keras-bert-dynamic: the keras_hub ``BertBackbone`` of ``models.keras_bert`` as users often
export it for serving: no dropout and dynamic batch and sequence lengths (an ``input_signature`` of
``(None, None)`` inputs). Keras's MultiHeadAttention then takes ``ops.dot_product_attention``, and
tf2onnx lowers its einsums with run-time shapes: the probabilities reach the values as
``Softmax -> Unsqueeze -> Reshape -> MatMul -> Reshape -> Squeeze`` (a batched 3-D MatMul between
reshapes computed from ``Shape``, no mask op after the Softmax), and the heads are merged through a
5-D Transpose. The inputs are named ``args_0_token_ids`` ... by TensorFlow's signature.

    python -m models.frameworks keras-dynamic      # in the tensorflow recipe environment

Same seed, sizes and weights as tiny-keras-bert; the reference is the same float64 Keras stepping.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import keras_hub
import numpy as np

from models.fixture_io import record_references, write_tokenizer
from models.keras_bert import SEED, SIZES, _inputs, randomize, reference
from models.tiny import TEXTS, build_tokenizer

NAME = "tiny-keras-bert-dynamic"


def main(out: Path) -> Path:
    tokenizer, _ = build_tokenizer("bert")
    vocabulary_size = tokenizer.get_vocab_size()
    keras.utils.set_random_seed(SEED)
    model = keras_hub.models.BertBackbone(vocabulary_size=vocabulary_size, dropout=0.0, **SIZES)
    model(_inputs(np.array([2, 3])))
    randomize(model)
    folder = out / NAME
    folder.mkdir(parents=True, exist_ok=True)
    signature = {name: keras.InputSpec(shape=(None, None), dtype="int32")
                 for name in ("token_ids", "segment_ids", "padding_mask")}
    model.export(str(folder / "model.onnx"), format="onnx", verbose=False, input_signature=[signature])
    write_tokenizer(folder, tokenizer, SIZES["max_sequence_length"])
    record_references(folder, TEXTS, tokenizer,
                      lambda e: reference(model, vocabulary_size, np.array(e.ids), np.array(e.type_ids)))
    return folder


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
