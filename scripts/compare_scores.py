"""The paper's concept score against the specificity-weighted variant, on the sweep split.

Per concept, at the bundled defaults' latents per step, both scores at the tuned gamma and at
-5, -10, -30 (the same choices for both); each setting judged on 4 seeds per pair of the sweep
split (never the evaluation seeds). Where both scores select the same latents
at every step the images are identical, so that row is copied, not generated. Rows are kept in
results/protocol/score_variant/rows.json as they finish (rerun to resume); table.md compares the
best row of each score per concept by (UA + IRA + CRA) / 3 with a paired bootstrap over concepts.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/compare_scores.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from saeuron_core import minicanvas as mc  # noqa: E402
from saeuron_core.intervals import paired_bootstrap  # noqa: E402
from saeuron_core.io import write_json  # noqa: E402
from saeuron_core.minicanvas.judge import Judge  # noqa: E402
from saeuron_core.minicanvas.tuning import criterion_score, defaults_table, sweep_concept  # noqa: E402
from saeuron_core.paths import ASSETS  # noqa: E402
from saeuron_core.pipeline import load_pipeline, model_info  # noqa: E402
from saeuron_core.scoring import SCORES, select, tau_for_count  # noqa: E402
from saeuron_core.unlearning import SaeBundle  # noqa: E402

OUT = ROOT / "results" / "protocol" / "score_variant"
GAMMAS = (-5.0, -10.0, -30.0)


def same_selection(bundle, concept: str, count: int) -> bool:
    kind = bundle.kind_of(concept)
    for point in bundle.points_of_kind[kind]:
        stats = bundle.stats[point].concept_stats(kind)
        tau = tau_for_count(count, bundle.saes[point].num_latents)
        a, b = select(SCORES["paper"](stats, concept), tau), select(SCORES["specific"](stats, concept), tau)
        if any(set(x.tolist()) != set(y.tolist()) for x, y in zip(a, b)):
            return False
    return True


def main() -> None:
    torch.set_num_threads(1)
    pipe = load_pipeline("minicanvas")
    info = model_info(pipe, "minicanvas")
    bundle = SaeBundle.load(info)
    judge = Judge.load(ASSETS / "judge")
    seeds = mc.split_seeds("sweep", 4)
    steps, guidance = info.default_steps, info.default_guidance
    path = OUT / "rows.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    done = {(r["concept"], r["score"], r["count"], r["gamma"]) for r in rows}
    for concept in [*mc.OBJECTS, *mc.STYLES]:
        entry = bundle.default_entry(concept)
        count, tuned = int(entry["latents_per_step"]), float(entry["gamma"])
        wanted = [(score, g) for score in ("paper", "specific") for g in dict.fromkeys((tuned, *GAMMAS))]
        identical = same_selection(bundle, concept, count)
        for score, gamma in wanted:
            if (concept, score, count, gamma) in done:
                continue
            twin = (
                next(
                    (
                        r
                        for r in rows
                        if (r["concept"], r["count"], r["gamma"]) == (concept, count, gamma) and r["score"] != score
                    ),
                    None,
                )
                if identical
                else None
            )
            if twin is not None:
                row = {**twin, "score": score, "copied_from": twin["score"], "seconds": 0.0}
            else:
                row = sweep_concept(
                    pipe, bundle, judge, concept, (count,), (gamma,), seeds, steps, guidance, score=score
                )[0]
            row["same_selection_as_paper"] = identical
            rows.append(row)
            done.add((concept, score, count, gamma))
            write_json(path, {"seeds": seeds, "steps": steps, "guidance": guidance, "rows": rows})
            print(
                f"{concept} {score} {count}/step gamma {gamma}: UA {row['UA']:.2f} IRA {row['IRA']:.2f}"
                f" CRA {row['CRA']:.2f} ({row['seconds']} s)",
                flush=True,
            )
    write_table(rows, seeds)


def _cell(r: dict) -> str:
    """One score's table cell: gamma, UA, IRA, CRA and the bold criterion."""
    return f"{r['gamma']:g}, {r['UA']:.2f}, {r['IRA']:.2f}, {r['CRA']:.2f}, **{criterion_score(r, 'all'):.3f}**"


def write_table(rows: list[dict], seeds) -> None:
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    best = {
        (c, s): max((r for r in rows if r["concept"] == c and r["score"] == s), key=lambda r: criterion_score(r, "all"))
        for c in concepts
        for s in ("paper", "specific")
    }
    lines = [
        f"Sweep split, {len(seeds)} seeds per pair (each pair its own), (UA + IRA + CRA) / 3; each score at the"
        " bundled latents per step and its best gamma of {tuned, -5, -10, -30} on these seeds (the same choices"
        " for both scores).",
        "",
        "| concept | latents / step | same selection | paper: gamma, UA, IRA, CRA, score"
        " | specific: gamma, UA, IRA, CRA, score |",
        "|---|---|---|---|---|",
    ]
    for c in concepts:
        p, s = best[c, "paper"], best[c, "specific"]
        lines.append(
            f"| {c} | {p['count']} | {'yes' if p.get('same_selection_as_paper') else 'no'} | {_cell(p)} | {_cell(s)} |"
        )
    for kind in ("object", "style", "all"):
        chosen = [c for c in concepts if kind == "all" or mc.concept_kind(c) == kind]
        if not chosen:
            continue
        d = paired_bootstrap(
            [criterion_score(best[c, "specific"], "all") for c in chosen],
            [criterion_score(best[c, "paper"], "all") for c in chosen],
        )
        lines.append(
            f"\n{kind}: specific - paper = {100 * d['mean']:+.1f} points"
            f" [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}] (paired bootstrap over {len(chosen)} concepts)"
        )
    (OUT / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    # the specific score's own table (each concept its best row), to evaluate on held-out seeds
    # with `saeuron evaluate --defaults results/protocol/score_variant/defaults_specific.json`
    specific = [r for r in rows if r["score"] == "specific"]
    table = defaults_table(
        [r for r in specific if r["kind"] == "style"],
        [r for r in specific if r["kind"] == "object"],
        "per-concept",
        "all",
    )
    write_json(
        OUT / "defaults_specific.json",
        {**table, "seeds": list(seeds), "reports": ["results/protocol/score_variant/rows.json"]},
    )


if __name__ == "__main__":
    main()
