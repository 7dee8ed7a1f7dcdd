#!/usr/bin/env bash
# The MiniCanvas comparison on the bundled assets: SAeUron vs ESD-x vs UCE vs the un-edited
# model, every removal attacked (UnlearnDiffAtk-style), styles (+ multi-concept) and objects.
# Styles and objects run in parallel on one thread each. Reports land in results/; weight edits
# are cached in build/erasures (rerunning reuses them).
set -euo pipefail
cd "$(dirname "$0")/.."
SAEURON=${SAEURON:-.venv/bin/saeuron}
SEEDS=${SEEDS:-2}
METHODS=${METHODS:-saeuron,esd,uce,none}
export SAEURON_CACHE=${SAEURON_CACHE:-build/erasures}
$SAEURON --threads 1 evaluate --methods "$METHODS" --domain style --multi --seeds "$SEEDS" --overwrite --out results/style &
$SAEURON --threads 1 evaluate --methods "$METHODS" --domain object --seeds "$SEEDS" --overwrite --out results/object &
wait
