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

Concept handles (``handle_rows``), the project's one-click edits of a whole concept:

- **remove**: the project's default removal, ``SaeBundle.unlearn([concept])`` (the defaults
  table's entry: rerouting on the bundled model), on the concept's prompts: the
  share where the judge no longer sees the concept (``concept_removes``) and the share where it
  still sees the prompt's concept of the other kind (``concept_removes_kept``).
- **add**: ``SaeBundle.add_concepts([concept])``, the explorer's "add" handle (a ``PromptAdd``:
  every cross-attention block reads the prompt with the concept written in, at ``strength``), on
  prompts without the concept: the share where the judge sees it (``concept_adds``) and where
  the other kind is still seen.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..errors import SaeuronError
from ..intervals import Rate
from ..interventions import ScaleFeatures, Steer
from ..scoring import score
from ..unlearning import ADD_STRENGTH
from . import dataset as mc
from .evaluation import judge_decorrelated, removal_counts

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
    seen = Rate(sum(_sees(r, concept) for r in records), len(records))
    kept = [r for r in records if (r.style is not None if other == "style" else True)]
    retained = Rate(
        sum(
            (r.predicted_object == r.object_name) if other == "object" else (r.predicted_style == r.style) for r in kept
        ),
        len(kept),
    )
    return {"shows_concept": seen.as_dict(), "retains_other_kind": retained.as_dict()}


def control_rows(
    pipe,
    bundle,
    judge,
    concepts,
    bases,
    steps: int,
    guidance: float,
    tops=DEFAULT_TOPS,
    strengths=DEFAULT_STRENGTHS,
    log=print,
    handles: bool = True,
    features: bool = True,
    add_strength: float | None = None,
) -> list[dict]:
    """One row per concept: ablation and steering results of its top-ranked features
    (``features``) and the concept handles' results (``handles``; see the module docstring)."""
    if not (handles or features):
        raise SaeuronError("nothing to measure: ask for the top-n feature rows, the concept handles or both")
    if features and (not tops or any(n < 1 for n in tops)):
        raise SaeuronError(f"top-n counts must be >= 1, got {tops}")
    if features and (not strengths or any(s <= 0 for s in strengths)):
        raise SaeuronError(f"steering strengths must be > 0, got {strengths}")
    if add_strength is not None and not add_strength > 0:
        raise SaeuronError(f"the add strength must be > 0, got {add_strength}")
    for concept in concepts:  # an unknown concept is refused before anything is generated
        bundle.kind_of(concept)
    rows = []
    for concept in concepts:
        t0 = time.time()
        if not features:
            kind = bundle.kind_of(concept)
            row = {"concept": concept, "kind": kind, "point": bundle.point_of_kind[kind]}
            row["handles"] = handle_results(pipe, bundle, judge, concept, bases, steps, guidance, add_strength)
            row["seconds"] = round(time.time() - t0, 1)
            log(_handle_log(row))
            rows.append(row)
            continue
        kind = bundle.kind_of(concept)
        point = bundle.point_of_kind[kind]
        stats = bundle.stats[point]
        ranked = ranked_features(stats, kind, concept, max(tops))
        units = {i: typical_top_activation(stats, i) for i in ranked}
        target = [(o, s) for o, s in mc.all_pairs() if concept in (o, s)]
        row: dict = {
            "concept": concept,
            "kind": kind,
            "point": point,
            "features": ranked,
            "typical_top_activation": units,
            "ablate": {},
            "steer": {},
        }
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
        if handles:
            row["handles"] = handle_results(
                pipe, bundle, judge, concept, bases, steps, guidance, add_strength, plain_target=plain
            )
        row["seconds"] = round(time.time() - t0, 1)
        log(
            f"control {concept}: ablate top{tops[-1]} UA {row['ablate'][f'top{tops[-1]}']['UA']['value']:.2f}; "
            f"steer top{tops[-1]}@{strengths[-1]:g} shows "
            f"{row['steer'][f'top{tops[-1]}@{strengths[-1]:g}']['shows_concept']['value']:.2f} "
            f"({row['seconds']:.0f} s)"
        )
        if handles:
            log(_handle_log(row))
        rows.append(row)
    return rows


def _sees(record, concept: str) -> bool:
    return (record.predicted_style if mc.concept_kind(concept) == "style" else record.predicted_object) == concept


def handle_results(
    pipe,
    bundle,
    judge,
    concept: str,
    bases,
    steps: int,
    guidance: float,
    add_strength: float | None = None,
    plain_target=None,
) -> dict:
    """The concept handles on held-out images (paired: the same prompts and seeds with and
    without the edit).

    remove: on the concept's prompts, ``removes`` counts images where the judge saw the concept
    without the edit and does not with it (an image the judge missed anyway is not counted as
    removed); ``kept``: the prompt's concept of the other kind still seen (``kept_on_target``).
    add: on prompts without the concept, ``adds`` counts images where the judge did not see it
    without the edit and does with it; ``kept``: the other kind still seen."""
    strength = ADD_STRENGTH if add_strength is None else add_strength
    target = [(o, s) for o, s in mc.all_pairs() if concept in (o, s)]
    if plain_target is None:
        plain_target = judge_decorrelated(pipe, judge, target, bases, steps, guidance)[0]
    removal = bundle.unlearn([concept])
    with bundle.hooked(pipe, removal):
        removed = judge_decorrelated(pipe, judge, target, bases, steps, guidance)[0]
    pairs = steer_pairs(concept)
    plain_pairs = judge_decorrelated(pipe, judge, pairs, bases, steps, guidance)[0]
    added_ivs = bundle.add_concepts([concept], strength)
    with bundle.hooked(pipe, added_ivs):
        added = judge_decorrelated(pipe, judge, pairs, bases, steps, guidance)[0]
    return {
        "remove": {
            "interventions": [{"type": type(iv).__name__, **dataclasses.asdict(iv)} for iv in removal],
            "removes": Rate(
                sum(_sees(b, concept) and not _sees(a, concept) for b, a in zip(plain_target, removed)), len(removed)
            ).as_dict(),
            "kept": removal_counts(removed, concept)["kept_on_target"].as_dict(),
            "seen_before": Rate(sum(_sees(b, concept) for b in plain_target), len(plain_target)).as_dict(),
            "kept_before": removal_counts(plain_target, concept)["kept_on_target"].as_dict(),
        },
        "add": {
            "strength": strength,
            "interventions": [{"type": type(iv).__name__, **dataclasses.asdict(iv)} for iv in added_ivs],
            "adds": Rate(
                sum(not _sees(b, concept) and _sees(a, concept) for b, a in zip(plain_pairs, added)), len(added)
            ).as_dict(),
            "kept": _rates(added, concept)["retains_other_kind"],
            "seen_before": Rate(sum(_sees(b, concept) for b in plain_pairs), len(plain_pairs)).as_dict(),
        },
    }


def _handle_log(row: dict) -> str:
    h = row["handles"]
    return (
        f"handles {row['concept']}: remove {h['remove']['removes']['k']}/{h['remove']['removes']['n']} (kept "
        f"{h['remove']['kept']['k']}/{h['remove']['kept']['n']}); "
        f"add {h['add']['strength']:g}x {h['add']['adds']['k']}/{h['add']['adds']['n']} (kept "
        f"{h['add']['kept']['k']}/{h['add']['kept']['n']}) ({row['seconds']:.0f} s)"
    )


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
    lines = []
    if "ablate" in rows[0]:
        lines += _feature_markdown(rows, cell)
    if "handles" in rows[0]:
        lines += ([""] if lines else []) + _handle_markdown(rows, cell)
    return "\n".join(lines) + "\n"


def _handle_markdown(rows: list[dict], cell) -> list[str]:
    lines = [
        "Concept handles. remove: the project's default removal (`SaeBundle.unlearn([concept])`) on the concept's "
        "prompts; removes: the judge saw the concept without the edit and no longer does; kept: it still sees the "
        "prompt's other concept. add: the project's add handle (`SaeBundle.add_concepts([concept])`, a PromptAdd: "
        "every cross-attention block reads the prompt with the concept written in, at the given strength) on "
        "prompts without it; adds: the judge did not see the concept and now does; kept: the other kind still seen.",
        "",
        "| concept | removes | kept | adds | add kept | add strength |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        h = r["handles"]
        lines.append(
            f"| {r['concept']} | {cell(h['remove']['removes'])} | {cell(h['remove']['kept'])} | "
            f"{cell(h['add']['adds'])} | {cell(h['add']['kept'])} | {h['add']['strength']:g}x |"
        )
    for kind in ("style", "object"):
        chosen = [r for r in rows if r["kind"] == kind and "handles" in r]
        if chosen:
            s = handle_summary(chosen)
            lines.append(
                f"| **all {kind}s** | {cell(s['concept_removes'])} | {cell(s['concept_removes_kept'])} | "
                f"{cell(s['concept_adds'])} | {cell(s['concept_adds_kept'])} | |"
            )
    return lines


def _feature_markdown(rows: list[dict], cell) -> list[str]:
    ablate_keys = list(rows[0]["ablate"])
    steer_keys = list(rows[0]["steer"])
    lines = [
        "Ablation: the concept's top-n ranked features set to 0 at every step, on the concept's prompts. UA: the "
        "judge no longer sees the concept; CRA: it still sees the other kind.",
        "",
        "| concept | features | " + " | ".join(f"UA {k} | CRA {k}" for k in ablate_keys) + " |",
        "|---|---|" + "---|---|" * len(ablate_keys),
    ]
    for r in rows:
        lines.append(
            f"| {r['concept']} | {r['features']} | "
            + " | ".join(f"{cell(r['ablate'][k]['UA'])} | {cell(r['ablate'][k]['CRA'])}" for k in ablate_keys)
            + " |"
        )
    lines += [
        "",
        "Steering: the same features added (strength x typical top activation) into prompts without the concept. "
        "shows: the judge sees the concept; kept: the other kind is still seen.",
        "",
        "| concept | " + " | ".join(f"shows {k} | kept {k}" for k in steer_keys) + " |",
        "|---|" + "---|---|" * len(steer_keys),
    ]
    for r in rows:
        lines.append(
            f"| {r['concept']} | "
            + " | ".join(
                f"{cell(r['steer'][k]['shows_concept'])} | {cell(r['steer'][k]['retains_other_kind'])}"
                for k in steer_keys
            )
            + " |"
        )
    return lines


def _pooled(rates: list[dict]) -> dict:
    """One rate over the images of several concepts (pooled counts), with its Wilson interval."""
    return Rate(sum(r["k"] for r in rates), sum(r["n"] for r in rates)).as_dict()


def handle_summary(rows: list[dict]) -> dict:
    """The concept handles' rates pooled over ``rows`` (one kind's concepts)."""
    h = [r["handles"] for r in rows]
    return {
        "concept_removes": _pooled([x["remove"]["removes"] for x in h]),
        "concept_removes_kept": _pooled([x["remove"]["kept"] for x in h]),
        "concept_adds": _pooled([x["add"]["adds"] for x in h]),
        "concept_adds_kept": _pooled([x["add"]["kept"] for x in h]),
        "add_strength": sorted({x["add"]["strength"] for x in h}),
    }


def summary(rows: list[dict], top: int = 3, strength: float | None = None) -> dict:
    """Per kind. Top-n feature rows: which concepts ablating the top-``top`` features removes in
    >= 80% of images, and which steering shows in >= 50% with the other kind kept in >= 80%.
    Concept handles: ``concept_removes``, ``concept_removes_kept``, ``concept_adds`` (and
    ``concept_adds_kept``) pooled over the kind's concepts, each with its Wilson interval."""
    out = {}
    for kind in ("style", "object"):
        chosen = [r for r in rows if r["kind"] == kind]
        if not chosen:
            continue
        out[kind] = {"concepts": len(chosen)}
        if "handles" in chosen[0]:
            out[kind].update(handle_summary(chosen))
        if "ablate" not in chosen[0]:
            continue
        key = f"top{top}"
        removed = [r["concept"] for r in chosen if r["ablate"][key]["UA"]["value"] >= 0.8]
        steer_keys = [
            k
            for k in chosen[0]["steer"]
            if k.startswith(key + "@") and (strength is None or k == f"{key}@{strength:g}")
        ]
        steered = [
            r["concept"]
            for r in chosen
            if any(
                r["steer"][k]["shows_concept"]["value"] >= 0.5 and r["steer"][k]["retains_other_kind"]["value"] >= 0.8
                for k in steer_keys
            )
        ]
        out[kind].update(
            {
                "ablation_removes": removed,
                "steering_adds": steered,
                "mean_UA_" + key: float(np.mean([r["ablate"][key]["UA"]["value"] for r in chosen])),
            }
        )
    return out
