"""Style-removal candidates against the paper's method, on the sweep split (issue 18).

Every candidate removes one concept at a time at the kind's bundled hook point; each is judged on
the same images' seeds: the concept's own pairs and 2 partners per other concept
(``removal_pairs(c, 2)``), each pair at its own seeds derived from the first ``--seeds`` sweep-split
base seeds (``dataset.prompt_seeds``), shared by every candidate. Never the evaluation seeds.
Metrics: UA, IRA, CRA and kept_on_target (the removed concept's own images on which the judge
still sees the prompt's other concept), each with its counts; a candidate's per-concept score is
(UA + IRA + CRA + kept_on_target) / 4. Candidates:

- ``paper``: SAeUron as shipped (the bundled tau / gamma table: negation, z * gamma * m_c)
- ``replace-<target>-<latents>-s<strength>``: ``interventions.Replace`` at the bundled latents per
  step (the concept's flagged tokens pushed towards the target concept's mean code)

Rows are kept in ``OUT/rows.json`` as they finish (rerun to resume); a PNG per (candidate,
concept) shows the concept's own prompts before (top) and after (bottom).

    OMP_NUM_THREADS=1 nice -n 5 python scripts/style_candidates.py --kind style --seeds 2
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
from saeuron_core.intervals import paired_bootstrap  # noqa: E402
from saeuron_core.interventions import Replace, Reroute  # noqa: E402
from saeuron_core.io import write_json  # noqa: E402
from saeuron_core.minicanvas.evaluation import judge_decorrelated, removal_counts, removal_pairs  # noqa: E402
from saeuron_core.minicanvas.judge import Judge  # noqa: E402
from saeuron_core.paths import ASSETS  # noqa: E402
from saeuron_core.pipeline import load_pipeline, model_info  # noqa: E402
from saeuron_core.scoring import tau_for_count  # noqa: E402
from saeuron_core.unlearning import SaeBundle  # noqa: E402

METRICS = ("UA", "IRA", "CRA", "kept_on_target")
CANDIDATES = {"paper": None, "none": ("none", "none", 0.0)}  # none: the un-edited model, the floor of every metric
CANDIDATES.update(
    {
        f"replace-{t}-{lat}-s{s:g}": (t, lat, s)
        for t in ("nearest", "others")
        for lat in ("selected", "all")
        for s in (1.0, 3.0, 5.0, 10.0, 20.0, 30.0)
    }
)


REROUTE_BLOCKS = {
    "d": (
        "down_blocks.1.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.2.attentions.0",
    ),
    "all": (),
    "mid": ("mid_block.attentions.0",),
    "dmid": (
        "down_blocks.1.attentions.0",
        "mid_block.attentions.0",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.2.attentions.0",
    ),
}
"""Block sets for ``reroute-<anchor>-<blocks>-n<count>-d<detect>`` candidates."""


def reroute_for(bundle, name: str, concept: str) -> list:
    """``interventions.Reroute`` at the kind's point: anchor "nearest", "fixed" (the kind's first
    concept, or its second for the first itself) or a concept name; a last part "-h" heeds the
    prompt (``Reroute.heed_prompt``), without it the prompt is not read (what the rows recorded
    before heed_prompt existed measured)."""
    _, anchor, blocks, count, detect, *heed = name.split("-")
    if heed not in ([], ["h"]):
        raise SystemExit(f"unknown reroute candidate {name!r}: the last part may only be 'h'")
    kind = bundle.kind_of(concept)
    if anchor == "fixed":
        names = bundle.vocabulary[kind]
        anchor = names[1] if concept == names[0] else names[0]
    return [
        Reroute(
            (concept,),
            anchor=anchor,
            blocks=REROUTE_BLOCKS[blocks],
            tau=tau_for_count(int(count[1:]), bundle.saes[p].num_latents),
            detect=float(detect[1:]),
            point=p,
            heed_prompt=heed == ["h"],
        )
        for p in bundle.points_of_kind[kind]
    ]


def interventions_for(bundle, name: str, concept: str) -> list:
    if name.startswith("reroute-"):
        return reroute_for(bundle, name, concept)
    if name == "default":
        return bundle.unlearn([concept])
    if CANDIDATES[name] is None:
        return bundle.unlearn([concept], paper=True)
    if name == "none":
        return []
    target, latents, strength = CANDIDATES[name]
    count = int(bundle.default_entry(concept)["latents_per_step"])
    kind = bundle.kind_of(concept)
    return [
        Replace(
            (concept,),
            tau=tau_for_count(count, bundle.saes[p].num_latents),
            strength=strength,
            target=target,
            latents=latents,
            point=p,
        )
        for p in bundle.points_of_kind[kind]
    ]


def score4(row: dict) -> float:
    return float(np.mean([row[m] for m in METRICS]))


def strip(before: np.ndarray, after: np.ndarray) -> Image.Image:
    grid = np.concatenate([np.concatenate(list(before), 1), np.concatenate(list(after), 1)], 0)
    return Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=("style", "object"), default="style")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where the model and SAEs run: cpu, auto, cuda[:N], mps")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--concepts", default=None, help="comma-separated subset (default: every concept of the kind)")
    ap.add_argument("--out", default=str(ROOT / "results" / "protocol" / "style_candidates"))
    ap.add_argument("--report", nargs="*", default=None, help="only print the markdown table of these rows files")
    ap.add_argument(
        "--adopt",
        action="store_true",
        help="with --report: apply the adoption rule (``adopt``) to the bundled defaults table",
    )
    args = ap.parse_args()
    if args.report is not None:
        print("\n".join(report([Path(p) for p in args.report], args.kind)))
        if args.adopt:
            print(adopt([Path(p) for p in args.report], args.kind, ASSETS / "unlearn_defaults.json"))
        return
    torch.set_num_threads(1)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("minicanvas", device=args.device)
    info = model_info(pipe, "minicanvas")
    bundle = SaeBundle.load(info, device=pipe.device)
    judge = Judge.load(ASSETS / "judge")
    bases = mc.split_seeds("sweep", args.seeds)
    steps, guidance = info.default_steps, info.default_guidance
    concepts = tuple(args.concepts.split(",")) if args.concepts else (mc.STYLES if args.kind == "style" else mc.OBJECTS)
    path = out / f"rows_{args.kind}.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    done = {(r["candidate"], r["concept"]) for r in rows}
    plain: dict[str, np.ndarray] = {}
    for name in args.candidates.split(","):
        if name not in CANDIDATES and not name.startswith("reroute-") and name != "default":
            raise SystemExit(f"unknown candidate {name!r}")
        for concept in concepts:
            if (name, concept) in done:
                continue
            target, retain = removal_pairs(concept, 2)
            if concept not in plain:
                plain[concept] = judge_decorrelated(pipe, judge, target, bases, steps, guidance)[2]
            ivs = interventions_for(bundle, name, concept)
            t0 = time.time()
            with bundle.hooked(pipe, ivs):
                records, _, images = judge_decorrelated(pipe, judge, target + retain, bases, steps, guidance)
            counts = removal_counts(records, concept)
            row = {
                "candidate": name,
                "concept": concept,
                "kind": args.kind,
                **{m: counts[m].value for m in METRICS},
                "counts": {m: counts[m].as_dict() for m in METRICS},
                "settings": [repr(iv) for iv in ivs],
                "seconds": round(time.time() - t0, 1),
            }
            row["score4"] = score4(row)
            rows.append(row)
            write_json(path, {"bases": bases, "steps": steps, "guidance": guidance, "rows": rows})
            strip(plain[concept], images[: len(plain[concept])]).save(out / "images" / f"{name}-{concept}.png")
            print(
                f"{name} {concept}: UA {row['UA']:.2f} IRA {row['IRA']:.2f} CRA {row['CRA']:.2f}"
                f" kept {row['kept_on_target']:.2f} -> {row['score4']:.3f} ({row['seconds']} s)",
                flush=True,
            )
    summary(rows, concepts)


def report(paths: list[Path], kind: str) -> list[str]:
    """Markdown: every candidate's mean over concepts (pooled Wilson intervals), per-concept
    scores, and the per-concept pick among the replacement strengths against the paper's table."""
    from saeuron_core.intervals import Rate

    rows = [r for p in paths for r in json.loads(p.read_text())["rows"] if r["kind"] == kind]
    by = {(r["candidate"], r["concept"]): r for r in rows}
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    concepts = [c for c in (mc.STYLES if kind == "style" else mc.OBJECTS) if all((n, c) in by for n in names)]
    lines = [
        "| candidate | UA | IRA | CRA | kept on target | (UA+IRA+CRA+kept)/4 | (UA+IRA+CRA)/3"
        f" | (UA+IRA+CRA+kept)/4 minus paper (paired, {len(concepts)} {kind}s) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cells(chosen: list[dict]) -> str:
        out = []
        for m in METRICS:
            pooled = Rate(sum(r["counts"][m]["k"] for r in chosen), sum(r["counts"][m]["n"] for r in chosen)).as_dict()
            out.append(
                f"{100 * np.mean([r[m] for r in chosen]):.1f} [{100 * pooled['lo']:.1f}, {100 * pooled['hi']:.1f}]"
            )
        avg3 = np.mean([(r["UA"] + r["IRA"] + r["CRA"]) / 3 for r in chosen])
        return " | ".join(out) + f" | {100 * np.mean([r['score4'] for r in chosen]):.1f} | {100 * avg3:.1f}"

    def versus_paper(chosen: list[dict]) -> str:
        d = paired_bootstrap([r["score4"] for r in chosen], [by["paper", r["concept"]]["score4"] for r in chosen])
        return f"{100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"

    for name in names:
        chosen = [by[name, c] for c in concepts]
        lines.append(f"| {name} | {cells(chosen)} | {'-' if name == 'paper' else versus_paper(chosen)} |")
    replacements = [n for n in names if n in CANDIDATES and n not in ("paper", "none")]
    picks = (
        {
            c: max(
                (by[n, c] for n in replacements), key=lambda r: (round(r["score4"], 6), -CANDIDATES[r["candidate"]][2])
            )
            for c in concepts
        }
        if replacements
        else {}
    )
    if picks:
        chosen = [picks[c] for c in concepts]
        lines.append(
            f"| replacement, strength picked per {kind} on these seeds | {cells(chosen)} | {versus_paper(chosen)} |"
        )
    lines += ["", f"| {kind} | " + " | ".join(names) + " | picked |", "|---|" + "---|" * (len(names) + 1)]
    for c in concepts:
        row = " | ".join(
            f"{by[n, c]['UA']:.2f} / {by[n, c]['IRA']:.2f} / {by[n, c]['CRA']:.2f}"
            f" / {by[n, c]['kept_on_target']:.2f} = **{by[n, c]['score4']:.3f}**"
            for n in names
        )
        lines.append(f"| {c} | {row} | {picks[c]['candidate'] if picks else '-'} |")
    return lines


KEPT_FLOOR = 0.85
"""The selection rule (stated before the reroute runs): among the candidates whose mean
kept_on_target over the kind's concepts is at least this, the one with the largest mean
(UA + IRA + CRA) / 3 becomes the default ("none" never counts)."""


def adopt(paths: list[Path], kind: str, table_path: Path) -> str:
    """Apply ``KEPT_FLOOR``'s rule on the sweep split and write the winner into the defaults table:
    a reroute candidate as a "reroute" block per concept and variant "reroute-<kind>s"; the paper's
    method as variant "paper" with no block. Rows of every candidate must cover the same concepts."""
    rows = [r for p in paths for r in json.loads(p.read_text())["rows"] if r["kind"] == kind]
    by = {(r["candidate"], r["concept"]): r for r in rows}
    names = [n for n in dict.fromkeys(r["candidate"] for r in rows) if n != "none"]
    concepts = [c for c in (mc.STYLES if kind == "style" else mc.OBJECTS) if all((n, c) in by for n in names)]

    def mean(name: str, metric) -> float:
        return float(np.mean([metric(by[name, c]) for c in concepts]))

    def avg3(name: str) -> float:
        return mean(name, lambda r: (r["UA"] + r["IRA"] + r["CRA"]) / 3)

    eligible = [n for n in names if mean(n, lambda r: r["kept_on_target"]) >= KEPT_FLOOR]
    lines = [
        f"{n}: (UA+IRA+CRA)/3 {100 * avg3(n):.1f}, kept_on_target {100 * mean(n, lambda r: r['kept_on_target']):.1f}"
        + ("" if n in eligible else " (below the kept floor)")
        for n in names
    ]
    if not eligible:
        return "\n".join(lines + ["no candidate keeps the other concept often enough: nothing adopted"])
    best = max(eligible, key=avg3)
    if best != "paper" and not best.startswith("reroute-"):
        return "\n".join(lines + [f"{best} wins, but only reroute candidates or the paper's method are adopted"])
    table = json.loads(table_path.read_text())
    for c in concepts:
        table["concepts"][c].pop("reroute", None)
    bases = json.loads(paths[0].read_text())["bases"]
    verdict = (
        f"{best}: the largest (UA+IRA+CRA)/3 ({100 * avg3(best):.1f}) among the candidates with mean "
        f"kept_on_target >= {100 * KEPT_FLOOR:.0f} % on the sweep split (bases {bases}, "
        f"{len(concepts)} {kind}s, scripts/style_candidates.py); the paper's method: {100 * avg3('paper'):.1f} with "
        f"kept_on_target {100 * mean('paper', lambda r: r['kept_on_target']):.1f}"
    )
    selections = dict(table.get("variant_selection_by_kind", {}))
    selections[kind] = verdict
    table["variant_selection_by_kind"] = selections
    if best.startswith("reroute-"):
        _, anchor, blocks, count, detect, *heed = best.split("-")
        for c in concepts:
            ivs = reroute_for(_BUNDLE_FOR_ANCHORS(), best, c)
            table["concepts"][c]["reroute"] = {
                "anchor": ivs[0].per_concept()[0][2],
                "blocks": list(REROUTE_BLOCKS[blocks]),
                "latents_per_step": int(count[1:]),
                "detect": float(detect[1:]),
                "heed_prompt": heed == ["h"],
                "candidate": best,
                "sweep": {m: by[best, c][m] for m in METRICS},
            }
    kinds_rerouted = sorted(
        {k for k, cs in (("style", mc.STYLES), ("object", mc.OBJECTS)) for c in cs if "reroute" in table["concepts"][c]}
    )
    table["variant"] = "reroute-" + "-".join(f"{k}s" for k in kinds_rerouted) if kinds_rerouted else "paper"
    table["variant_selection"] = "; ".join(f"{k}: {v}" for k, v in sorted(selections.items()))
    write_json(table_path, table)
    return "\n".join(lines + [verdict, f"written to {table_path}: variant {table['variant']!r}"])


def _BUNDLE_FOR_ANCHORS():
    """The bundled SaeBundle (the anchors of a "fixed" candidate come from its vocabulary)."""
    return SaeBundle.load(model_info(load_pipeline("minicanvas"), "minicanvas"))


def summary(rows: list[dict], concepts) -> None:
    names = list(dict.fromkeys(r["candidate"] for r in rows))
    by = {(r["candidate"], r["concept"]): r for r in rows}
    for name in names:
        have = [c for c in concepts if (name, c) in by]
        mean = {m: np.mean([by[name, c][m] for c in have]) for m in (*METRICS, "score4")}
        line = f"{name} ({len(have)} concepts): " + ", ".join(f"{m} {v:.3f}" for m, v in mean.items())
        if name != "paper" and all(("paper", c) in by for c in have):
            d = paired_bootstrap([by[name, c]["score4"] for c in have], [by["paper", c]["score4"] for c in have])
            line += f"; minus paper {100 * d['mean']:+.1f} [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]"
        print(line)


if __name__ == "__main__":
    main()
