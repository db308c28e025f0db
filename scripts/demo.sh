#!/usr/bin/env bash
# The main job: explain a sentence with the default model (all-MiniLM-L6-v2, built and cached
# under ~/.cache/alti-onnx on first use). Usage: bash scripts/demo.sh ["your sentence"]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(bash "$root/scripts/setup-venv.sh")"
# The recipe that builds the default model lives in the repository (models/), not in the package;
# it returns at once when the model is cached.
(cd "$root" && "$venv/bin/python" -m models.sentiment > /dev/null)
if [ $# -gt 0 ]; then
  exec "$venv/bin/alti-onnx" demo --text "$*"
fi
exec "$venv/bin/alti-onnx" demo
