#!/usr/bin/env bash
# GPU check (issues 11, 21): every stage on CUDA at SD1.5 layout with random weights (generate,
# cache, train-sae, stats via `saeuron prepare`; SAE training tokens/s beside sparsify's trainer on
# the same GPU and tokens; training and statistics against the CPU; paper-size statistics' disk
# and GPU memory; `saeuron unlearn`; the explorer session with an ablation; the hook-overhead
# benchmark at 512 px float16); prints one JSON summary. Without CUDA it prints
# {"status": "skipped", ...} and exits 0. `--smoke` runs the stages on the CPU with a small model.
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
