"""Feature control, measured (`saeuron evaluate --control`): do a concept's top-ranked SAE
features alone remove it, and add it?

Per concept, at the primary hook point of its kind:

- **ablate**: its top-1 and top-3 ranked features set to 0 at every step and token (both CFG
  halves), on every prompt that shows the concept: UA (the judge no longer sees it) and CRA
  (the other kind is still seen), beside the same prompts un-edited (paired seeds).
- **steer**: the same features added (``Steer``: strength x the feature's decoder row, every
  token and step) into prompts without the concept, the strength in units of the feature's
  typical top activation (median of its stored top activations): the rate at which the judge
  sees the concept, and the retention of the other kind (objects for styles, styles for objects).

Ranking: the paper's score (METHOD section 3) averaged over steps, the order the explorer lists.
"""

from __future__ import annotations

import time

import numpy as np

from . import dataset as mc
from ..errors import SaeuronError
from ..interventions import ScaleFeatures, Steer
from ..intervals import Rate
from ..scoring import score
from .evaluation import judge_decorrelated

DEFAULT_TOPS = (1, 3)
DEFAULT_STRENGTHS = (1.0, 3.0)


def ranked_features(stats, kind: str, concept: str, n: int) -> list[int]:
    """The ``n`` latents with the highest step-averaged score for ``concept``."""
    return [int(i) for i in score(stats.concept_stats(kind), concept).mean(0).argsort(descending=True)[:n]]


def typical_top_activation(stats, feature: int) -> float:
    """Median of the feature's stored top activations (its usual strength when it fires)."""
    unit = stats.typical_top_activation(feature)
    if unit == 0.0:
        raise SaeuronError(f"feature {feature} never fired in the statistics; it cannot be steered in its own units")
    return unit


def steer_pairs(concept: str) -> list[tuple[str, str | None]]:
    """Prompts without ``concept``: unstyled prompts of every object for a style; every other
    object in a rotating style for an object."""
    if mc.concept_kind(concept) == "style":
        return [(o, None) for o in mc.OBJECTS]
    others = [o for o in mc.OBJECTS if o != concept]
    return [(o, mc.STYLES[i % len(mc.STYLES)]) for i, o in enumerate(others)]


def _rates(records, concept: str) -> dict:
    kind = mc.concept_kind(concept)
    other = "object" if kind == "style" else "style"
    seen = Rate(sum((r.predicted_style if kind == "style" else r.predicted_object) == concept for r in records), len(records))
    kept = [r for r in records if (r.style is not None if other == "style" else True)]
    retained = Rate(sum((r.predicted_object == r.object_name) if other == "object" else (r.predicted_style == r.style) for r in kept), len(kept))
    return {"shows_concept": seen.as_dict(), "retains_other_kind": retained.as_dict()}


def control_rows(pipe, bundle, judge, concepts, bases, steps: int, guidance: float, tops=DEFAULT_TOPS, strengths=DEFAULT_STRENGTHS, log=print) -> list[dict]:
    """One row per concept: ablation and steering results (see the module docstring)."""
    if not tops or any(n < 1 for n in tops):
        raise SaeuronError(f"top-n counts must be >= 1, got {tops}")
    if not strengths or any(s <= 0 for s in strengths):
        raise SaeuronError(f"steering strengths must be > 0, got {strengths}")
    rows = []
    for concept in concepts:
        t0 = time.time()
        kind = bundle.kind_of(concept)
        point = bundle.point_of_kind[kind]
        stats = bundle.stats[point]
        ranked = ranked_features(stats, kind, concept, max(tops))
        units = {i: typical_top_activation(stats, i) for i in ranked}
        target = [(o, s) for o, s in mc.all_pairs() if concept in (o, s)]
        row: dict = {"concept": concept, "kind": kind, "point": point, "features": ranked, "typical_top_activation": units, "ablate": {}, "steer": {}}
        plain = judge_decorrelated(pipe, judge, target, bases, steps, guidance)[0]
        row["ablate"]["none"] = _ablation(plain, concept)
        for n in tops:
            with bundle.hooked(pipe, [ScaleFeatures(tuple(ranked[:n]), 0.0, point=point)]):
                records = judge_decorrelated(pipe, judge, target, bases, steps, guidance)[0]
            row["ablate"][f"top{n}"] = _ablation(records, concept)
        pairs = steer_pairs(concept)
        row["steer"]["none"] = _rates(judge_decorrelated(pipe, judge, pairs, bases, steps, guidance)[0], concept)
        for n in tops:
            for strength in strengths:
                ivs = [Steer((i,), strength * units[i], point=point) for i in ranked[:n]]
                with bundle.hooked(pipe, ivs):
                    records = judge_decorrelated(pipe, judge, pairs, bases, steps, guidance)[0]
                row["steer"][f"top{n}@{strength:g}"] = _rates(records, concept)
        row["seconds"] = round(time.time() - t0, 1)
        log(f"control {concept}: ablate top{tops[-1]} UA {row['ablate'][f'top{tops[-1]}']['UA']['value']:.2f}; steer top{tops[-1]}@{strengths[-1]:g} shows {row['steer'][f'top{tops[-1]}@{strengths[-1]:g}']['shows_concept']['value']:.2f} ({row['seconds']:.0f} s)")
        rows.append(row)
    return rows


def _ablation(records, concept: str) -> dict:
    rates = _rates(records, concept)
    shows = rates["shows_concept"]
    return {"UA": Rate(shows["n"] - shows["k"], shows["n"]).as_dict(), "CRA": rates["retains_other_kind"]}


def markdown(rows: list[dict]) -> str:
    """Per concept: ablation UA / CRA and steering rates, with Wilson 95% intervals."""

    def cell(d):
        if d["n"] == 0:
            return "no data"
        return f"{100 * d['value']:.0f}% [{100 * d['lo']:.0f}, {100 * d['hi']:.0f}]"

    if not rows:
        return ""
    ablate_keys = list(rows[0]["ablate"])
    steer_keys = list(rows[0]["steer"])
    lines = [
        "Ablation: the concept's top-n ranked features set to 0 at every step, on the concept's prompts. UA: the judge no longer sees the concept; CRA: it still sees the other kind.",
        "",
        "| concept | features | " + " | ".join(f"UA {k} | CRA {k}" for k in ablate_keys) + " |",
        "|---|---|" + "---|---|" * len(ablate_keys),
    ]
    for r in rows:
        lines.append(f"| {r['concept']} | {r['features']} | " + " | ".join(f"{cell(r['ablate'][k]['UA'])} | {cell(r['ablate'][k]['CRA'])}" for k in ablate_keys) + " |")
    lines += [
        "",
        "Steering: the same features added (strength x typical top activation) into prompts without the concept. shows: the judge sees the concept; kept: the other kind is still seen.",
        "",
        "| concept | " + " | ".join(f"shows {k} | kept {k}" for k in steer_keys) + " |",
        "|---|" + "---|---|" * len(steer_keys),
    ]
    for r in rows:
        lines.append(f"| {r['concept']} | " + " | ".join(f"{cell(r['steer'][k]['shows_concept'])} | {cell(r['steer'][k]['retains_other_kind'])}" for k in steer_keys) + " |")
    return "\n".join(lines) + "\n"


def summary(rows: list[dict], top: int = 3, strength: float | None = None) -> dict:
    """How many concepts meet the issue's goals: ablating the top-``top`` features removes the
    concept in >= 80% of images; steering shows it in >= 50% with the other kind kept in >= 80%."""
    out = {}
    for kind in ("style", "object"):
        chosen = [r for r in rows if r["kind"] == kind]
        if not chosen:
            continue
        key = f"top{top}"
        removed = [r["concept"] for r in chosen if r["ablate"][key]["UA"]["value"] >= 0.8]
        steer_keys = [k for k in chosen[0]["steer"] if k.startswith(key + "@") and (strength is None or k == f"{key}@{strength:g}")]
        steered = [r["concept"] for r in chosen if any(r["steer"][k]["shows_concept"]["value"] >= 0.5 and r["steer"][k]["retains_other_kind"]["value"] >= 0.8 for k in steer_keys)]
        out[kind] = {"concepts": len(chosen), "ablation_removes": removed, "steering_adds": steered, "mean_UA_" + key: float(np.mean([r["ablate"][key]["UA"]["value"] for r in chosen]))}
    return out
