"""Add-handle candidates on the sweep split (issue 19: "an add handle makes the judge see it in
>= 70 % of prompts without it").

Per concept, the prompts without it (``control.steer_pairs``: every object unstyled for a style;
every other object in a rotating style for an object), each at its own seeds derived from the first
``--seeds`` sweep-split base seeds, the same for every candidate (never the evaluation seeds).
Per candidate: ``adds`` (the judge did not see the concept before and sees it after), ``kept``
(the prompt's concept of the other kind still seen), with counts. Candidates:

- ``latents-<s>``: the former add handle, ``SaeBundle.add_concepts(latents=True)`` (the paper's selected latents
  steered in at ``s`` x their typical top activation, conditional half)
- ``prompt-<blocks>-s<s>``: ``PromptAdd`` (the prompt with the concept written in, read by the
  cross-attention ``blocks``: ``all`` = every one outside the mid block, ``table`` = the blocks the
  defaults table's reroute entry uses for the concept, ``every`` = all of them with the mid block) at
  strength ``s``

Rows go to ``OUT/rows.json`` as they finish (rerun to resume); a PNG per (candidate, concept) shows
the prompts before (top) and after (bottom).

    OMP_NUM_THREADS=1 python scripts/add_candidates.py --kind style --seeds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from saeuron_core import minicanvas as mc  # noqa: E402
from saeuron_core.intervals import Rate  # noqa: E402
from saeuron_core.interventions import PromptAdd  # noqa: E402
from saeuron_core.io import write_json  # noqa: E402
from saeuron_core.minicanvas.control import _rates, _sees, steer_pairs  # noqa: E402
from saeuron_core.minicanvas.evaluation import judge_decorrelated  # noqa: E402
from saeuron_core.minicanvas.judge import Judge  # noqa: E402
from saeuron_core.paths import ASSETS  # noqa: E402
from saeuron_core.pipeline import load_pipeline, model_info  # noqa: E402
from saeuron_core.reroute import cross_attention_blocks  # noqa: E402
from saeuron_core.unlearning import SaeBundle  # noqa: E402

DEFAULT_CANDIDATES = "latents-2,prompt-all-s1,prompt-table-s1,prompt-all-s1.5"


def interventions(name: str, bundle: SaeBundle, concept: str, pipe) -> list:
    kind, *rest = name.split("-")
    if kind == "latents":
        return bundle.add_concepts([concept], float(rest[0]), latents=True)
    if kind == "prompt":
        blocks, strength = rest[0], float(rest[1].removeprefix("s"))
        if blocks == "all":
            chosen: tuple[str, ...] = ()
        elif blocks == "every":
            chosen = (*cross_attention_blocks(pipe.unet), "mid_block.attentions.0")
        elif blocks == "table":
            chosen = tuple(bundle._default_entry(concept).get("reroute", {}).get("blocks", ()))
        else:
            raise SystemExit(f"unknown blocks {blocks!r} in {name!r}")
        return [PromptAdd((concept,), strength, blocks=chosen, point=bundle.point_of_kind[bundle.kind_of(concept)])]
    raise SystemExit(f"unknown candidate {name!r}")


def sheet(before: np.ndarray, after: np.ndarray) -> Image.Image:
    return Image.fromarray(np.concatenate([np.concatenate(list(before), 1), np.concatenate(list(after), 1)], 0))


def report(rows: list[dict]) -> list[str]:
    lines = ["| candidate | kind | adds | kept | n |", "|---|---|---|---|---|"]
    for (name, kind), group in sorted(_grouped(rows).items()):
        adds = Rate(sum(r["adds"] for r in group), sum(r["n"] for r in group))
        kept_n = sum(r["kept_n"] for r in group)
        kept = Rate(sum(r["kept"] for r in group), kept_n) if kept_n else None
        low, high = adds.interval
        lines.append(
            f"| {name} | {kind} | {adds.value:.0%} [{low:.0%}, {high:.0%}] | "
            f"{'-' if kept is None else f'{kept.value:.0%}'} | {adds.n} |"
        )
    return lines


def _grouped(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault((r["candidate"], r["kind"]), []).append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=("style", "object"), default="style")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where the model and SAEs run: cpu, auto, cuda[:N], mps")
    ap.add_argument("--candidates", default=DEFAULT_CANDIDATES)
    ap.add_argument("--out", default=str(ROOT / "results" / "protocol" / "add_candidates"))
    ap.add_argument("--report", action="store_true", help="only print the table of OUT's rows")
    args = ap.parse_args()
    out = Path(args.out)
    path = out / f"rows_{args.kind}.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    if args.report:
        print("\n".join(report(rows)))
        return
    torch.set_num_threads(1)
    (out / "images").mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("minicanvas", device=args.device)
    info = model_info(pipe, "minicanvas")
    bundle = SaeBundle.load(info, device=pipe.device)
    judge = Judge.load(ASSETS / "judge")
    bases = mc.split_seeds("sweep", args.seeds)
    steps, guidance = info.default_steps, info.default_guidance
    concepts = mc.STYLES if args.kind == "style" else mc.OBJECTS
    done = {(r["candidate"], r["concept"]) for r in rows}
    plain: dict[str, tuple] = {}
    for name in args.candidates.split(","):
        for concept in concepts:
            if (name, concept) in done:
                continue
            t0 = time.time()
            pairs = steer_pairs(concept)
            if concept not in plain:
                records, _, images = judge_decorrelated(pipe, judge, pairs, bases, steps, guidance)
                plain[concept] = (records, images)
            before, before_images = plain[concept]
            with bundle.hooked(pipe, interventions(name, bundle, concept, pipe)):
                after, _, after_images = judge_decorrelated(pipe, judge, pairs, bases, steps, guidance)
            kept = _rates(after, concept)["retains_other_kind"]
            rows.append(
                {
                    "candidate": name,
                    "kind": args.kind,
                    "concept": concept,
                    "adds": int(sum(not _sees(b, concept) and _sees(a, concept) for b, a in zip(before, after))),
                    "seen_after": int(sum(_sees(a, concept) for a in after)),
                    "seen_before": int(sum(_sees(b, concept) for b in before)),
                    "n": len(after),
                    "kept": int(kept["k"]),
                    "kept_n": int(kept["n"]),
                    "seconds": round(time.time() - t0, 1),
                }
            )
            write_json(path, {"seeds": "sweep", "bases": list(bases), "rows": rows})
            sheet(before_images, after_images).save(out / "images" / f"{name}_{concept}.png")
            r = rows[-1]
            print(f"{name} {concept}: adds {r['adds']}/{r['n']} kept {r['kept']}/{r['kept_n']} ({r['seconds']} s)")
    print("\n".join(report(rows)))


if __name__ == "__main__":
    main()
