"""Choosing tau and gamma per concept: the paper's sweep, on seeds disjoint from evaluation.

The paper's grid is tau in {99.99, 99.995, 99.999} x gamma in {-1, ..., -30}, picked by
(UA + IRA) / 2. Those percentiles select 3 / 2 / 1 latents per step at 20480 latents; the grid
here is expressed in *selected latents per step* and converted for the SAE's width, so a
1024-latent SAE gets the same selection sizes (``tau_for_count``).
"""

from __future__ import annotations

import time

from ..errors import SaeuronError
from ..scoring import specificity, tau_for_count  # noqa: F401  (tau_for_count re-exported: the grid is in latents per step)
from . import dataset as mc
from .evaluation import judge_decorrelated, removal_metrics, removal_pairs

PAPER_GAMMAS = (-1.0, -5.0, -10.0, -15.0, -20.0, -25.0, -30.0)


def pair_seeds(bases, pairs) -> list[list[int]]:
    """Per (object, style) pair, its own seeds derived from the sweep-split ``bases``
    (``dataset.prompt_seeds``: a hash of base and prompt, inside the sweep split).

    Sharing seeds across pairs shares the initial noise, and whether an edit flips an image
    depends strongly on that noise: one shared seed made every prompt of a concept agree and
    the sweep's winner did not carry over to held-out seeds (outline: UA 1.0 swept, 0.0 held out).
    """
    for s in bases:
        if mc.split_of(s) != "sweep":
            raise SaeuronError(
                f"seed {s} is not in the sweep split {mc.SPLITS['sweep']}; tuning must not see evaluation seeds"
            )
    return [mc.prompt_seeds(bases, mc.prompt(o, s)) for o, s in pairs]


CRITERIA = {"all": "(UA + IRA + CRA) / 3", "paper": "(UA + IRA) / 2"}
"""How a sweep picks a setting. "paper" never sees CRA, so it may pick edits that wreck the
other kind (measured: CRA 0.25-0.33 for three styles); "all" (the default) weighs it equally."""


def check_criterion(criterion: str) -> str:
    if criterion not in CRITERIA:
        raise SaeuronError(
            f"unknown criterion {criterion!r}; criteria: " + ", ".join(f"{k} = {v}" for k, v in CRITERIA.items())
        )
    return criterion


def criterion_score(row: dict, criterion: str = "all") -> float:
    """A sweep row's score under ``criterion``."""
    check_criterion(criterion)
    if criterion == "paper":
        return (row["UA"] + row["IRA"]) / 2
    return (row["UA"] + row["IRA"] + row["CRA"]) / 3


def sweep_concept(
    pipe,
    bundle,
    judge,
    concept: str,
    counts,
    gammas,
    seeds,
    steps: int,
    guidance: float,
    retain_per_concept: int = 2,
    score: str = "paper",
) -> list[dict]:
    """(UA, IRA, CRA) of removing ``concept`` for every (count, gamma) of the grid, latents chosen
    by ``score`` (``scoring.SCORES``)."""
    if not seeds:
        raise SaeuronError("no seeds to sweep on")
    kind = bundle.kind_of(concept)
    target, retain = removal_pairs(concept, retain_per_concept)
    pair_seeds(seeds, [])  # refuses evaluation seeds before any work
    rows = []
    for count in counts:
        for gamma in gammas:
            ivs = bundle.unlearn([concept], gamma=gamma, count=count, score=score)
            t0 = time.time()
            with bundle.hooked(pipe, ivs):
                records = judge_decorrelated(pipe, judge, target + retain, seeds, steps, guidance)[0]
            m = removal_metrics(records, concept)
            row = {
                "concept": concept,
                "kind": kind,
                "count": count,
                "tau": ivs[0].per_concept()[0][1],
                "gamma": gamma,
                "score": score,
                "points": [iv.point for iv in ivs],
                **m,
            }
            row["specificity"] = {
                iv.point: specificity(
                    bundle.stats[iv.point].concept_stats(kind), concept, iv.per_concept()[0][1], score
                )
                for iv in ivs
            }
            row.update(
                score_paper=criterion_score(row, "paper"),
                score_all=criterion_score(row, "all"),
                seconds=round(time.time() - t0, 1),
            )
            rows.append(row)
    return rows


def pick(rows: list[dict], criterion: str = "all") -> dict:
    """The row with the best score under ``criterion``; ties go to the smaller edit (fewer latents, smaller |gamma|)."""
    return max(rows, key=lambda r: (round(criterion_score(r, criterion), 6), -r["count"], r["gamma"]))


STYLE_SETTINGS = ("shared", "per-concept")


def defaults_table(
    style_rows: list[dict], object_rows: list[dict], style_settings: str = "shared", criterion: str = "all"
) -> dict:
    """Objects each get their own setting. Styles share one (best mean score over styles, as in
    the paper) or, with ``style_settings="per-concept"``, each style gets its own like objects.
    Scores are ``criterion``'s (``CRITERIA``)."""
    if style_settings not in STYLE_SETTINGS:
        raise SaeuronError(f"style settings must be one of {', '.join(STYLE_SETTINGS)}, got {style_settings!r}")
    check_criterion(criterion)
    scores = {r.get("score", "paper") for r in style_rows + object_rows}
    if len(scores) > 1:
        raise SaeuronError(f"sweep rows of different scores ({', '.join(sorted(scores))}) cannot make one table")
    table: dict = {
        "kinds": {},
        "concepts": {},
        "selection": f"{CRITERIA[criterion]} on the sweep split",
        "criterion": criterion,
        "style_settings": style_settings,
    }
    if scores and scores != {"paper"}:
        table["score"] = scores.pop()  # SaeBundle.unlearn selects with it
    if style_rows:
        settings = {}
        for r in style_rows:
            settings.setdefault((r["count"], r["tau"], r["gamma"]), []).append(criterion_score(r, criterion))
        (count, tau, gamma), scores = max(
            settings.items(), key=lambda kv: (round(sum(kv[1]) / len(kv[1]), 6), -kv[0][0], kv[0][2])
        )
        table["kinds"]["style"] = {
            "tau": tau,
            "gamma": gamma,
            "latents_per_step": count,
            "mean_score": sum(scores) / len(scores),
        }
    per_concept = object_rows + (style_rows if style_settings == "per-concept" else [])
    by_concept: dict[str, list[dict]] = {}
    for r in per_concept:
        by_concept.setdefault(r["concept"], []).append(r)
    for concept, rows in by_concept.items():
        best = pick(rows, criterion)
        table["concepts"][concept] = {
            "tau": best["tau"],
            "gamma": best["gamma"],
            "latents_per_step": best["count"],
            "score": criterion_score(best, criterion),
            **{k: best[k] for k in ("UA", "IRA", "CRA", "specificity") if k in best},
        }
    return table
