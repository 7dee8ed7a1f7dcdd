#!/usr/bin/env bash
# The MiniCanvas benchmark on the bundled assets: reference row, styles, objects, multi-concept.
# Styles and objects run in parallel on one thread each. Reports land in results/.
set -euo pipefail
cd "$(dirname "$0")/.."
SAEURON=${SAEURON:-.venv/bin/saeuron}
SEEDS=${SEEDS:-2}
$SAEURON --threads 1 evaluate --method saeuron --domain style --multi --seeds "$SEEDS" --overwrite --out results/style &
$SAEURON --threads 1 evaluate --method saeuron --domain object --seeds "$SEEDS" --overwrite --out results/object &
wait
