#!/usr/bin/env bash
# Wider SAEs at the bundled hook points, trained like the bundled ones (k 16, 5 epochs, 4096 tokens
# per step) on the same prompts (the store of every training prompt, e.g. the one
# `evaluate --generalisation` caches as <work>/store_full), then the specificity of the latents the
# paper's score selects: results/protocol/wider_sae.md. Rerun to resume.
#   scripts/wider_sae.sh /work/runs/generalisation.work/store_full
set -euo pipefail
cd "$(dirname "$0")/.."
STORE=${1:?usage: scripts/wider_sae.sh STORE [OUT]}
OUT=${2:-build/wider_sae}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1
# styles: 4 seeds per pair, as the bundled style SAE; the bundled object SAE saw 8 seeds per pair
# (2x tokens), so the mid-block SAEs get 10 epochs over these 4 (the same number of tokens), and
# one 1024-latent SAE gets 5 (half the tokens: what fewer tokens cost)
train() {  # name num_latents point epochs
  [ -f "$OUT/sae_$1/$3/sae.safetensors" ] || $PY -m saeuron_core --threads 1 train-sae --store "$STORE" --point $3 --num-latents $2 --k 16 --epochs $4 --batch-size 4096 --dead-feature-threshold 1000000 --out "$OUT/sae_$1" 2>&1 | grep -v "Loading\|torchvision" | tail -1
  [ -f "$OUT/stats_$1/$3/stats.json" ] || $PY -m saeuron_core --threads 1 stats --store "$STORE" --sae "$OUT/sae_$1" --point $3 --top-m 2 --no-thumbnails --out "$OUT/stats_$1" 2>&1 | grep -v "Loading\|torchvision" | tail -1
}
for n in 2048 4096; do
  train $n $n up_blocks.1.attentions.1 5
  train $n $n mid_block.attentions.0 10
done
train 1024-half 1024 mid_block.attentions.0 5
$PY - "$OUT" <<'PY'
import json
import sys
from pathlib import Path

from saeuron_core import minicanvas as mc
from saeuron_core.paths import ASSETS
from saeuron_core.scoring import specificity, tau_for_count
from saeuron_core.stats import FeatureStats

out = Path(sys.argv[1])
points = {"object": "mid_block.attentions.0", "style": "up_blocks.1.attentions.1"}
sources = {"1024": (ASSETS / "sae", ASSETS / "stats")} | {n: (out / f"sae_{n}", out / f"stats_{n}") for n in ("1024-half", "2048", "4096")}
lines = ["Median concept / other ratio of the latents the paper's score selects (1 and 3 latents per step), per concept; FVU of the SAE on its training tokens (1024: the bundled SAEs; 1024-half: the bundled object recipe on half its tokens).", "",
         "| hook point | latents | tokens seen | FVU | " + " | ".join(mc.OBJECTS) + " |", "|---|---|---|---|" + "---|" * len(mc.OBJECTS)]
style_lines = ["", "| hook point | latents | tokens seen | FVU | " + " | ".join(mc.STYLES) + " |", "|---|---|---|---|" + "---|" * len(mc.STYLES)]
for kind, point in points.items():
    for n, (sae_dir, stats_dir) in sources.items():
        if not (stats_dir / point).is_dir():
            continue  # 1024-half: objects only
        metrics = sae_dir / point / "train_metrics.json"
        if not metrics.is_file():
            metrics = sae_dir / ".train" / point / "metrics.json"
        trained = json.loads(metrics.read_text()) if metrics.is_file() else {}
        fvu, tokens = trained.get("fvu"), trained.get("tokens")
        stats = FeatureStats.load(stats_dir / point).concept_stats(kind)
        cells = []
        for concept in (mc.OBJECTS if kind == "object" else mc.STYLES):
            width = stats.n_latents
            one = specificity(stats, concept, tau_for_count(1, width))["median_ratio"]
            three = specificity(stats, concept, tau_for_count(3, width))["median_ratio"]
            cells.append(f"{one:.1f} / {three:.1f}")
        row = f"| `{point}` | {n} | {tokens or '-'} | {'-' if fvu is None else f'{fvu:.3f}'} | "
        (lines if kind == "object" else style_lines).append(row + " | ".join(cells) + " |")
text = "\n".join(lines + style_lines) + "\n"
(Path("results/protocol") / "wider_sae.md").write_text(text)
print(text)
PY
