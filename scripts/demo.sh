#!/usr/bin/env bash
# The main job: explain a sentence with the default model (all-MiniLM-L6-v2 fine-tuned for
# sentiment, built and cached under ~/.cache/alti-onnx on first use). Usage: bash scripts/demo.sh ["your sentence"]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(bash "$root/scripts/setup-venv.sh")"
# The recipe that builds the default model lives in the repository (models/), not in the package.
# Cached, it returns at once and prints nothing; building, it says what it does and shows its progress.
(cd "$root" && "$venv/bin/python" -m models.sentiment --quiet)
if [ $# -gt 0 ]; then
  exec "$venv/bin/alti-onnx" demo --text "$*"
fi
exec "$venv/bin/alti-onnx" demo
