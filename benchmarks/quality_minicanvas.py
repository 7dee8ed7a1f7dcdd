"""Judge accuracy of the bundled model's generated images on held-out seeds, all pairs.

    .venv/bin/python benchmarks/quality_minicanvas.py [--model minicanvas] [--seeds 4] [--grid out.png]

Quality bar (foundation issue): style >= 90%, object >= 85%, default steps and guidance.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from saeuron_core import minicanvas as mc
from saeuron_core.minicanvas.evaluation import accuracy_table, judge_generated
from saeuron_core.minicanvas.judge import Judge
from saeuron_core.paths import ASSETS
from saeuron_core.pipeline import load_pipeline, model_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minicanvas")
    ap.add_argument("--judge", default=str(ASSETS / "judge"))
    ap.add_argument("--seeds", type=int, default=4, help="held-out seeds per pair")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", default=None, help="write a grid (rows: objects x seed, cols: styles)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    info = model_info(pipe, args.model)
    steps = args.steps or info.default_steps
    guidance = args.guidance if args.guidance is not None else info.default_guidance
    judge = Judge.load(args.judge)
    seeds = mc.split_seeds("heldout", args.seeds)
    t0 = time.time()
    records, images = judge_generated(pipe, judge, mc.all_pairs(), seeds, steps, guidance)
    table = accuracy_table(records)
    table.update(steps=steps, guidance=guidance, seeds=seeds, seconds=round(time.time() - t0, 1))
    print(json.dumps(table, indent=2))
    if args.grid:
        from PIL import Image

        n_s = len(mc.STYLES)
        rows = []
        for oi in range(len(mc.OBJECTS)):
            for si in range(len(seeds)):
                idx = [(oi * n_s + s) * len(seeds) + si for s in range(n_s)]
                rows.append(np.concatenate([images[i] for i in idx], axis=1))
        Image.fromarray(np.concatenate(rows, axis=0)).save(args.grid)


if __name__ == "__main__":
    main()
