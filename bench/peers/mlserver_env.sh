#!/usr/bin/env bash
# Create (or reuse) MLServer's own virtualenv: its pins conflict with ours.
# Usage: bench/peers/mlserver_env.sh [DIR]   (default .cache/mlserver-venv); prints DIR.
set -euo pipefail
dir="${1:-.cache/mlserver-venv}"
if [ ! -x "$dir/bin/mlserver" ] || [ ! -f "$dir/.ready" ]; then
  python3 -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
    "mlserver==1.7.1" "uvloop<0.22" onnxruntime numpy 2>&1 | grep -v "WARNING: Location" >&2 || true
  "$dir/bin/mlserver" --help >/dev/null
  touch "$dir/.ready"
fi
echo "$dir"
