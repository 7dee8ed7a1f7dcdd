#!/usr/bin/env bash
# GPU check (issue 11): an SD1.5-architecture folder with random weights, `saeuron prepare`,
# generation with an ablation and the hook-overhead benchmark at 512 px in float16 on CUDA;
# prints one JSON summary. Without CUDA it prints {"status": "skipped", ...} and exits 0.
#
#   scripts/gpu_check.sh [--work DIR] [--out summary.json]     (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    # no torch with CUDA here: skip without loading anything else
    "$PYTHON" -c 'import json, sys
try:
    import torch
    why = f"no CUDA device (torch {torch.__version__}, cuda {torch.version.cuda})"
except ImportError:
    why = "torch is not installed"
print(json.dumps({"status": "skipped", "reason": why}))' || echo '{"status": "skipped", "reason": "no python with torch"}'
    exit 0
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
