#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment with the runtime, export, test, plot and ray extras.
# Usage: source-free; prints the venv path on stdout. ALTI_ONNX_VENV overrides the location.
# pip's output goes to <venv>.install.log and is shown only when the install fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${ALTI_ONNX_VENV:-$root/.venv}"
stamp="$venv/.alti-onnx-installed"
log="$venv.install.log"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "alti-onnx: installing the project and its dependencies into $venv (once; about 2 minutes)" >&2
  if ! {
    python3 -m venv "$venv" &&
      "$venv/bin/python" -m pip install -q --upgrade pip &&
      # torch is pinned in the 'export' extra (2.13.0, CPU build) so no CUDA wheels are pulled in.
      "$venv/bin/python" -m pip install -q -e "$root[export,test,plot,ray]"
  } > "$log" 2>&1; then
    echo "alti-onnx: the install failed; pip said:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
echo "$venv"
