#!/usr/bin/env bash
# Run every test, the PyTorch reference checks included, in the project's virtual environment.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
venv="$(bash scripts/setup-venv.sh)"
exec "$venv/bin/python" -m pytest -q "$@"
