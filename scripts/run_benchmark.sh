#!/usr/bin/env bash
# The MiniCanvas comparison on the bundled assets: SAeUron vs ESD-x vs UCE vs the un-edited
# model, every removal attacked (UnlearnDiffAtk-style), styles (+ multi-concept) and objects,
# then feature control. Every prompt gets its own seed per base seed (6 by default), the same
# for every method, so differences are paired. Styles and objects run in parallel on one
# thread each. Reports land in results/; weight edits are cached in build/erasures (rerunning
# reuses them).
set -euo pipefail
cd "$(dirname "$0")/.."
SAEURON=${SAEURON:-.venv/bin/saeuron}
SEEDS=${SEEDS:-6}
METHODS=${METHODS:-saeuron,esd,uce,none}
export SAEURON_CACHE=${SAEURON_CACHE:-build/erasures}
$SAEURON --threads 1 evaluate --methods "$METHODS" --domain style --multi --seeds "$SEEDS" --overwrite --out results/style &
$SAEURON --threads 1 evaluate --methods "$METHODS" --domain object --seeds "$SEEDS" --overwrite --out results/object &
wait
$SAEURON --threads 1 evaluate --control --domain both --seeds 2 --overwrite --out results/control
