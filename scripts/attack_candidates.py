"""Soft-prompt attack on the default style removal's variants, on the sweep split (issue 18's goal:
style UA after the attack >= 80 %).

Per style: ``benchmark_attack.attack_row`` (the benchmark's attack: 6 prompts of the style, 5 soft
tokens, 40 Adam steps) on the bundle's default removal with ``Reroute.untrusted`` set per
candidate, at seeds derived from the first sweep-split base (never the evaluation seeds), the
same for every candidate. A context with genuine token ids is never treated as untrusted, so the
candidates differ only on the attack's soft prompts.

    OMP_NUM_THREADS=1 python scripts/attack_candidates.py --candidates swap,anchor
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from saeuron_core import minicanvas as mc  # noqa: E402
from saeuron_core.baselines.attack import AttackConfig  # noqa: E402
from saeuron_core.interventions import REROUTE_UNTRUSTED, Reroute  # noqa: E402
from saeuron_core.io import write_json  # noqa: E402
from saeuron_core.minicanvas.benchmark_attack import attack_row  # noqa: E402
from saeuron_core.minicanvas.judge import Judge  # noqa: E402
from saeuron_core.paths import ASSETS  # noqa: E402
from saeuron_core.pipeline import load_pipeline, model_info  # noqa: E402
from saeuron_core.unlearning import SaeBundle  # noqa: E402


@dataclasses.dataclass
class Hooked:
    """A removal as ``attack_row`` takes it: ``active(pipe)`` is the hooked context."""

    bundle: SaeBundle
    interventions: list

    def active(self, pipe):
        return self.bundle.hooked(pipe, self.interventions)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--candidates", default=",".join(REROUTE_UNTRUSTED))
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "results" / "protocol" / "attack_candidates"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "rows.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    done = {(r["candidate"], r["concept"]) for r in rows}
    pipe = load_pipeline("minicanvas")
    info = model_info(pipe, "minicanvas")
    bundle = SaeBundle.load(info, device=pipe.device)
    judge = Judge.load(ASSETS / "judge")
    bases = mc.split_seeds("sweep", 1)
    for name in args.candidates.split(","):
        for concept in mc.STYLES:
            if (name, concept) in done:
                continue
            ivs = [
                dataclasses.replace(iv, untrusted=name) if isinstance(iv, Reroute) else iv
                for iv in bundle.unlearn([concept])
            ]
            row, strip = attack_row(
                pipe, judge, Hooked(bundle, ivs), concept, args.prompts, bases, info.default_steps,
                info.default_guidance, AttackConfig(),
            )  # fmt: skip
            rows.append({"candidate": name, "concept": concept, **row})
            write_json(path, {"bases": bases, "rows": rows})
            Image.fromarray(strip).save(out / "images" / f"{name}_{concept}.png")
            print(f"{name} {concept}: UA {row['UA_before']:.2f} -> {row['UA_after']:.2f} ({row['reading']})")
    for name in args.candidates.split(","):
        mine = [r for r in rows if r["candidate"] == name]
        if mine:
            before = sum(r["UA_before"] for r in mine) / len(mine)
            after = sum(r["UA_after"] for r in mine) / len(mine)
            print(f"{name}: style UA {100 * before:.1f} -> {100 * after:.1f} over {len(mine)} styles")


if __name__ == "__main__":
    main()
