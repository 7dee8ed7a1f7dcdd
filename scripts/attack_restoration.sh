#!/usr/bin/env bash
# Attack single-concept removals on 6 prompts at the first held-out seed (the cases where the
# shipped benchmark saw the attack flip the judge most); attack.json holds p(concept) and the
# feature similarity before / after.
set -u
cd "$(dirname "$0")/.."
for spec in saeuron:checkerboard uce:square saeuron:mosaic uce:solid saeuron:circle uce:circle saeuron:solid uce:stripes saeuron:dots uce:star; do
  method=${spec%%:*}; c=${spec#*:}
  out=results/attack_restoration/$method/$c
  [ -f $out/attack.json ] && continue
  OMP_NUM_THREADS=1 ${SAEURON:-.venv/bin/saeuron} --threads 1 attack --method $method --concept $c --prompts 6 --out $out --overwrite 2>&1 | grep -v "Loading\|torchvision" | tail -2
done
# one table of every attack: results/attack_restoration/table.md
${PYTHON:-.venv/bin/python} - <<'PY'
import json
from pathlib import Path

from saeuron_core.minicanvas.benchmark_attack import attack_reading

root = Path("results/attack_restoration")
lines = ["| method | concept | UA before -> after | p(concept) before -> after (un-edited) | similarity to un-edited before -> after | recovered | reading |", "|---|---|---|---|---|---|---|"]
for f in sorted(root.glob("*/*/attack.json")):
    a = json.loads(f.read_text())
    rec = a["similarity_recovered"]
    lines.append(f"| {a['method']} | {a['concept']} | {100 * a['UA_before']:.0f} % -> {100 * a['UA_after']:.0f} % | {a['p_concept_before']:.3f} -> {a['p_concept_after']:.3f} ({a['p_concept_target']:.3f}) | {a['similarity_before']:.3f} -> {a['similarity_after']:.3f} | {100 * rec:.0f} % | {attack_reading(a)} |")
(root / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
