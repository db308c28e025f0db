"""Build the fixtures that need another framework, each in that framework's own environment.

    python -m models.frameworks [tf2onnx keras keras-dynamic jax2onnx] [--out tests/fixtures]

TensorFlow 2.21 (with tf-keras, tf2onnx 1.17, Keras 3.15 and keras-hub 0.32) and JAX 0.10 (with
Flax 0.12 and jax2onnx 0.17) would clash with the main environment's onnx, numpy and protobuf, so
each gets a virtual environment of its own under ``<cache>/envs/<name>``, made from the pins in
``models/envs/<name>.txt`` and rebuilt when that file changes. A recipe runs there as
``python -m models.<recipe> OUT`` from the repository root: it imports only ``models`` modules
that need NumPy and tokenizers, never the package. The committed fixtures mean the tests need none
of this; rerun it to rebuild them.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
import venv
from pathlib import Path

from models.cache import build_lock, cache_dir

ROOT = Path(__file__).resolve().parent.parent
#: fixture -> (environment, recipe module)
RECIPES = {
    "tf2onnx": ("tensorflow", "models.tf_bert"),
    "keras": ("tensorflow", "models.keras_bert"),
    "keras-dynamic": ("tensorflow", "models.keras_bert_dynamic"),
    "jax2onnx": ("jax", "models.flax_encoder"),
}


def environment(name: str) -> Path:
    """The python of the ``name`` recipe environment, created (or rebuilt) from models/envs/<name>.txt."""
    requirements = ROOT / "models" / "envs" / f"{name}.txt"
    folder = cache_dir() / "envs" / name
    python = folder / "bin" / "python"
    stamp = folder / ".requirements-sha256"
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()
    with build_lock(cache_dir() / "envs" / f"{name}.lock"):
        if not python.exists() or not stamp.is_file() or stamp.read_text() != want:
            print(f"creating the {name} recipe environment in {folder} (a few minutes)", file=sys.stderr)
            venv.create(folder, with_pip=True, clear=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(requirements)], check=True)
            stamp.write_text(want)
    return python


def build(fixture: str, out: Path) -> None:
    env, module = RECIPES[fixture]
    subprocess.run([str(environment(env)), "-m", module, str(out.resolve())], cwd=ROOT, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fixtures", nargs="*", choices=[*RECIPES, []], help="default: all")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    args = parser.parse_args(argv)
    for fixture in args.fixtures or list(RECIPES):
        start = time.perf_counter()
        build(fixture, args.out)
        print(f"{fixture}: built in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
