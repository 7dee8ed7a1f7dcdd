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
for n in 2048 4096; do
  [ -f "$OUT/sae_$n/up_blocks.1.attentions.1/sae.safetensors" ] || $PY -m saeuron_core --threads 1 train-sae --store "$STORE" --num-latents $n --k 16 --epochs 5 --batch-size 4096 --dead-feature-threshold 1000000 --out "$OUT/sae_$n" 2>&1 | grep -v "Loading\|torchvision" | tail -2
  [ -f "$OUT/stats_$n/up_blocks.1.attentions.1/stats.json" ] || $PY -m saeuron_core --threads 1 stats --store "$STORE" --sae "$OUT/sae_$n" --top-m 2 --no-thumbnails --out "$OUT/stats_$n" 2>&1 | grep -v "Loading\|torchvision" | tail -1
done
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
sources = {1024: (ASSETS / "sae", ASSETS / "stats")} | {n: (out / f"sae_{n}", out / f"stats_{n}") for n in (2048, 4096)}
lines = ["Median concept / other ratio of the latents the paper's score selects (1 and 3 latents per step), per concept; FVU of the SAE on its training tokens.", "",
         "| hook point | latents | FVU | " + " | ".join(mc.OBJECTS) + " |", "|---|---|---|" + "---|" * len(mc.OBJECTS)]
style_lines = ["", "| hook point | latents | FVU | " + " | ".join(mc.STYLES) + " |", "|---|---|---|" + "---|" * len(mc.STYLES)]
for kind, point in points.items():
    for n, (sae_dir, stats_dir) in sources.items():
        metrics = sae_dir / point / "train_metrics.json"
        if not metrics.is_file():
            metrics = sae_dir / ".train" / point / "metrics.json"
        fvu = json.loads(metrics.read_text()).get("fvu") if metrics.is_file() else None
        stats = FeatureStats.load(stats_dir / point).concept_stats(kind)
        cells = []
        for concept in (mc.OBJECTS if kind == "object" else mc.STYLES):
            one = specificity(stats, concept, tau_for_count(1, n))["median_ratio"]
            three = specificity(stats, concept, tau_for_count(3, n))["median_ratio"]
            cells.append(f"{one:.1f} / {three:.1f}")
        row = f"| `{point}` | {n} | {'-' if fvu is None else f'{fvu:.3f}'} | "
        (lines if kind == "object" else style_lines).append(row + " | ".join(cells) + " |")
text = "\n".join(lines + style_lines) + "\n"
(Path("results/protocol") / "wider_sae.md").write_text(text)
print(text)
PY
