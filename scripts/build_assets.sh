#!/usr/bin/env bash
# Rebuild everything in assets/ from scratch, in order; each step resumes if interrupted.
# Wall times measured on 2 CPU cores are in README.md ("Build record").
set -euo pipefail
cd "$(dirname "$0")/.."
SAEURON=${SAEURON:-.venv/bin/saeuron}
WORK=${WORK:-build}

# 1. the bundled pipeline and judge (data, autoencoder, judge, latents on 2 threads; the U-Net on 1)
$SAEURON --threads 2 build-model --work "$WORK/minicanvas" --unet-minutes 75
# 2. where each concept kind enters the U-Net (text-swap patching of every cross-attention
#    block, judged, sweep-split seeds): the table behind saeuron.json's hook points.
#    Objects enter only at mid_block.attentions.0; styles at several up blocks, and
#    up_blocks.1.attentions.1 is the one with style-selective SAE features (README).
$SAEURON --threads 1 locate --model minicanvas --pairs 16 --seeds 2 --out results/locate --overwrite
# 3. activations of the train-split MiniCanvas prompts at the hook points: styles at
#    up_blocks.1.attentions.1 (4 seeds per pair), objects at mid_block.attentions.0 (a 4x4 map:
#    8 seeds per pair for enough tokens)
$SAEURON --threads 2 cache --model minicanvas --seeds-per-pair 4 --point up_blocks.1.attentions.1 --out "$WORK/store"
$SAEURON --threads 2 cache --model minicanvas --seeds-per-pair 8 --point mid_block.attentions.0 --out "$WORK/store_mid"
# 4. one TopK SAE per hook point (64 or 128 -> 1024 latents, k = 16)
$SAEURON --threads 2 train-sae --store "$WORK/store" --out assets/sae --expansion-factor 16 --k 16 --dead-feature-threshold 1000000 --epochs 5
$SAEURON --threads 2 train-sae --store "$WORK/store_mid" --out assets/sae --expansion-factor 8 --k 16 --dead-feature-threshold 1000000 --epochs 5
# 5. feature statistics for scoring and for the explorer
$SAEURON --threads 2 stats --store "$WORK/store" --sae assets/sae --out assets/stats
$SAEURON --threads 2 stats --store "$WORK/store_mid" --sae assets/sae --out assets/stats
# 6. tau / gamma per concept on the sweep split (1 thread per process, in parallel), each pair
#    its own seeds (4 per pair), picked by (UA + IRA + CRA) / 3 (--criterion paper: (UA + IRA) / 2).
#    Objects: 1-2 latents per step (their mid-block features are 28-2500x specific) x 4 gammas.
#    Styles: up to 8 latents per step x 4 gammas. Then one table from the reports.
OBJECT_GRID="--count 1 --count 2 --gamma -1 --gamma -5 --gamma -10 --gamma -20 --seeds 4"
STYLE_GRID="--count 1 --count 2 --count 3 --count 5 --count 8 --gamma -5 --gamma -10 --gamma -20 --gamma -30 --seeds 4"
$SAEURON --threads 1 tune --domain object --concept circle --concept square $OBJECT_GRID --out "$WORK/defaults_object_circle.json" --report "$WORK/tune_object_circle.json" &
$SAEURON --threads 1 tune --domain object --concept triangle --concept star $OBJECT_GRID --out "$WORK/defaults_object_triangle.json" --report "$WORK/tune_object_triangle.json" &
$SAEURON --threads 1 tune --domain object --concept cross --concept heart $OBJECT_GRID --out "$WORK/defaults_object_cross.json" --report "$WORK/tune_object_cross.json" &
wait
$SAEURON --threads 1 tune --domain style --concept solid --concept stripes --concept dots --concept checkerboard $STYLE_GRID --out "$WORK/defaults_style_a.json" --report "$WORK/tune_style_a.json" &
$SAEURON --threads 1 tune --domain style --concept gradient --concept outline --concept rings --concept mosaic $STYLE_GRID --out "$WORK/defaults_style_b.json" --report "$WORK/tune_style_b.json" &
wait
$SAEURON tune --from-report "$WORK/tune_style_a.json" --from-report "$WORK/tune_style_b.json" \
  --from-report "$WORK/tune_object_circle.json" --from-report "$WORK/tune_object_triangle.json" --from-report "$WORK/tune_object_cross.json" \
  --style-settings per-concept --out assets/unlearn_defaults.json
