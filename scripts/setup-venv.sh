#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the runtime, export and test extras.
# Usage: source-free; prints the venv path on stdout. ALTI_ONNX_VENV overrides the location.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ALTI_ONNX_VENV:-$root/.venv}"
stamp="$venv/.alti-onnx-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  # torch is pinned in the 'export' extra (2.13.0, CPU build) so no CUDA wheels are pulled in.
  "$venv/bin/python" -m pip install -q -e "$root[export,test,plot]" >&2
  echo "$want" > "$stamp"
fi
echo "$venv"
