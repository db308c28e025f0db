#!/usr/bin/env bash
# The main job: explain a sentence with the default model (all-MiniLM-L6-v2, built and cached
# under ~/.cache/alti-onnx on first use). Usage: bash scripts/demo.sh ["your sentence"]
set -euo pipefail
venv="$(bash "$(dirname "$0")/setup-venv.sh")"
if [ $# -gt 0 ]; then
  exec "$venv/bin/alti-onnx" demo --text "$*"
fi
exec "$venv/bin/alti-onnx" demo
