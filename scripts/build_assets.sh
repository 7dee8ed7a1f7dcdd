#!/usr/bin/env bash
# Rebuild everything in assets/ from scratch, in order; each step resumes if interrupted.
# Wall times measured on 2 CPU cores are in README.md ("Build record").
set -euo pipefail
cd "$(dirname "$0")/.."
SAEURON=${SAEURON:-.venv/bin/saeuron}
WORK=${WORK:-build}

# 1. the bundled pipeline and judge (data, autoencoder, judge, latents on 2 threads; the U-Net on 1)
$SAEURON --threads 2 build-model --work "$WORK/minicanvas" --unet-minutes 75
# 2. activations of the train-split MiniCanvas prompts at both default hook points
$SAEURON --threads 2 cache --model minicanvas --seeds-per-pair 4 --out "$WORK/store"
# 3. one TopK SAE per hook point (64 -> 1024 latents, k = 16)
$SAEURON --threads 2 train-sae --store "$WORK/store" --out assets/sae --expansion-factor 16 --k 16 --dead-feature-threshold 1000000 --epochs 5
# 4. feature statistics for scoring and for the explorer
$SAEURON --threads 2 stats --store "$WORK/store" --sae assets/sae --out assets/stats
# 5. tau / gamma per concept on the sweep split (1 thread per process, in parallel): objects on
#    the paper's grid with 1 seed; styles on a wider grid (up to 8 latents per step) with 2 seeds
#    per pair (each pair its own seeds), split over two processes. Then one table from the
#    reports, each style with its own setting.
GRID="--count 1 --count 2 --count 3 --gamma -1 --gamma -5 --gamma -10 --gamma -20"
STYLE_GRID="--count 1 --count 2 --count 3 --count 5 --count 8 --gamma -5 --gamma -10 --gamma -20 --gamma -30 --seeds 2"
$SAEURON --threads 1 tune --domain object $GRID --out "$WORK/defaults_object.json" --report "$WORK/tune_object.json" &
$SAEURON --threads 1 tune --domain style --concept solid --concept stripes --concept dots --concept checkerboard $STYLE_GRID --out "$WORK/defaults_style_a.json" --report "$WORK/tune_style_a.json" &
$SAEURON --threads 1 tune --domain style --concept gradient --concept outline --concept rings --concept mosaic $STYLE_GRID --out "$WORK/defaults_style_b.json" --report "$WORK/tune_style_b.json" &
wait
$SAEURON tune --from-report "$WORK/tune_style_a.json" --from-report "$WORK/tune_style_b.json" --from-report "$WORK/tune_object.json" --style-settings per-concept --out assets/unlearn_defaults.json
