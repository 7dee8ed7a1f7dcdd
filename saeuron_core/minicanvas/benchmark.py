"""The MiniCanvas unlearning benchmark (`saeuron evaluate`): UA / IRA / CRA, fidelity, cost.

For every removed concept, images of every (object, style) pair and every unstyled prompt are
generated at held-out seeds with the concept removed, and judged (METHOD section 6):

- UA  = 1 - judge accuracy on the removed concept's images (its own kind)
- IRA = judge accuracy (same kind) on the other concepts' images
- CRA = judge accuracy of the other kind. Two definitions, both reported: ``CRA`` on styled
  images (UnlearnCanvas) and ``CRA_unstyled`` on the unstyled prompts "An image of {object}."
  (what the reference code measures for styles).
- kept_on_target = judge accuracy of the other kind on the removed concept's own images (remove
  "dots" from "star in dots style": is it still a star?). UA counts a wrecked image as a
  removal and CRA, over other prompts, does not see it; this does.

Fidelity: a Frechet distance between retained-concept images and MiniCanvas renders of the same
pairs, in the judge's penultimate feature space ("judge-FD"; not FID, which uses Inception), and
the mean absolute pixel change of retained images against the un-edited model (collateral).

Methods (``methods.METHODS``): SAeUron, the ESD and UCE weight-editing baselines, and "none"
(the un-edited model judged with the same protocol: its UA is the judge's error). All run on
the same pipeline object and the same held-out seeds. Costs per method: extra memory, extra
storage, seconds to set up one concept removal, seconds per image.

Robustness (``attack_prompts`` > 0): for each removed concept, the UnlearnDiffAtk-style attack
(``attack.run_attack``) on that many of the concept's prompts; UA before and after the attack.

This module holds the plan and the run loop; the pieces live beside it: ``image_sets`` (the
work folder's generated and judged image sets), ``benchmark_scores`` (metrics rows, summaries,
paired comparisons, costs), ``benchmark_attack`` (attack rows and their reading) and
``benchmark_report`` (metrics.json / metrics.csv / table.md / report.html).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..baselines.attack import AttackConfig
from ..baselines.methods import Removal, check_method, prepare_removal
from ..errors import SaeuronError
from ..io import atomic_path, claim
from . import dataset as mc
from .benchmark_attack import attack_row
from .benchmark_report import PAPER, PAPER_BASELINES, _example_strip, write_reports
from .benchmark_scores import (
    _retained,
    compare_methods,
    concept_row,
    cost,
    frechet_distance,
    reference_features,
    summarize,
)
from .evaluation import accuracy
from .image_sets import ImageSet, settings_key, stored_protocol

DOMAINS = ("style", "object", "both")


@dataclass(frozen=True)
class EvalPlan:
    """What to evaluate."""

    methods: tuple[str, ...]
    domain: str
    concepts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    guidance: float
    multi: tuple[tuple[str, ...], ...] = ()
    """Concept sets removed together (multi-concept rows)."""
    attack_prompts: int = 0
    """Prompts per removed concept to attack (0: no attack)."""
    attack_steps: int = 40
    """Attack budget: Adam steps on the soft tokens."""

    def __post_init__(self):
        if isinstance(self.methods, str):
            object.__setattr__(self, "methods", (self.methods,))
        if not self.methods:
            raise SaeuronError("no method to evaluate")
        for m in self.methods:
            check_method(m)
        if self.domain not in DOMAINS:
            raise SaeuronError(f"unknown domain {self.domain!r}; domains: {', '.join(DOMAINS)}")
        for c in self.concepts + tuple(c for group in self.multi for c in group):
            mc.concept_kind(c)
        for s in self.seeds:
            if mc.split_of(s) != "heldout":
                raise SaeuronError(
                    f"seed {s} is in the {mc.split_of(s)!r} split; evaluation uses held-out seeds "
                    f"{mc.SPLITS['heldout']} only"
                )
        if not self.seeds:
            raise SaeuronError("no seeds to evaluate")
        if not isinstance(self.attack_prompts, int) or self.attack_prompts < 0:
            raise SaeuronError(f"attack_prompts must be an integer >= 0, got {self.attack_prompts!r}")
        if self.attack_prompts:
            AttackConfig(steps=self.attack_steps)  # validates the budget


def default_concepts(domain: str) -> tuple[str, ...]:
    return (mc.STYLES if domain in ("style", "both") else ()) + (mc.OBJECTS if domain in ("object", "both") else ())


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(
    pipe,
    info,
    bundle,
    judge,
    plan: EvalPlan,
    out: Path,
    cache: Path | None = None,
    esd=None,
    uce=None,
    work: Path | None = None,
    log=print,
) -> dict:
    """Run ``plan``, write metrics.json / metrics.csv / table.md / report.html under ``out``.

    ``cache``: folder for ESD / UCE weight edits (reused across runs); ``esd`` / ``uce``: their
    configs (None: defaults). ``work``: folder that keeps every finished image set (per removal
    and base seed) and attack, so a stopped run resumes where it was, a run with more seeds reuses
    the fewer seeds' sets, and the same command started in a second process shares the work
    (each takes the next unclaimed set). None: nothing kept.
    """
    t0 = time.time()
    sets_root = work / f"sets-{info.name}-{plan.steps}-{plan.guidance:g}" if work is not None else None

    def image_set(key: str, seed: int, removal: Removal | None) -> ImageSet | None:
        return stored_protocol(
            pipe,
            judge,
            sets_root / key / f"{seed}.npz" if sets_root is not None else None,
            seed,
            plan.steps,
            plan.guidance,
            removal,
        )

    sets = [(c,) for c in plan.concepts] + list(plan.multi)
    removals: dict[tuple[str, tuple[str, ...]], Removal] = {}
    keys: dict[tuple[str, tuple[str, ...]], str] = {}
    for method in plan.methods:
        for concept_set in sets:
            if method == "none":
                removals[method, concept_set], keys[method, concept_set] = (
                    Removal("none", concept_set, 0.0, 0, 0),
                    "plain",
                )
            else:
                removal = prepare_removal(
                    pipe, info, method, concept_set, bundle=bundle, cache=cache, esd=esd, uce=uce, log=log
                )
                # saeuron-paper shares saeuron's images when the default is the paper's method (same settings)
                keys[method, concept_set] = settings_key(
                    "saeuron" if method == "saeuron-paper" else method, concept_set, removal.settings
                )
                removals[method, concept_set] = removal
    # attacks use the first base seed only (each prompt its own seed from it), so a report on fewer
    # seeds of the same work folder reuses them
    attack_seeds = plan.seeds[:1]
    attacks_root = (
        work
        / (
            f"attacks-{info.name}-{plan.steps}-{plan.guidance:g}-"
            f"{plan.attack_prompts}x{plan.attack_steps}-{attack_seeds[0]}"
        )
        if work is not None
        else None
    )

    attacks: dict[tuple[str, str], tuple[dict, np.ndarray]] = {}

    def attack_of(method: str, concept: str, wait: bool = True) -> tuple[dict, np.ndarray] | None:
        """The attack on one removal, from the work folder or run here; when another process holds
        its claim: waited for, or None with ``wait`` off."""
        if (method, concept) not in attacks:
            found = run_or_load_attack(method, concept, wait)
            if found is None:
                return None
            attacks[method, concept] = found
        return attacks[method, concept]

    def run_or_load_attack(method: str, concept: str, wait: bool) -> tuple[dict, np.ndarray] | None:
        removal = removals[method, (concept,)]
        if attacks_root is None:
            return attack_row(
                pipe,
                judge,
                removal,
                concept,
                plan.attack_prompts,
                attack_seeds,
                plan.steps,
                plan.guidance,
                AttackConfig(steps=plan.attack_steps),
            )
        path = attacks_root / f"{keys[method, (concept,)]}.npz"
        while not path.is_file():
            with claim(path.with_suffix(".claim")) as mine:
                if mine:
                    row, strip = attack_row(
                        pipe,
                        judge,
                        removal,
                        concept,
                        plan.attack_prompts,
                        attack_seeds,
                        plan.steps,
                        plan.guidance,
                        AttackConfig(steps=plan.attack_steps),
                    )
                    with atomic_path(path) as tmp:
                        with open(tmp, "wb") as f:
                            np.savez(f, row=json.dumps(row), strip=strip)
                    return row, strip
            if not wait:
                return None
            time.sleep(10)
        z = np.load(path)
        return json.loads(str(z["row"])), z["strip"]

    by_seed: dict[tuple[str, int], ImageSet] = {}
    while True:  # seed by seed: a stopped run leaves whole seeds behind
        waiting = False
        for i, seed in enumerate(plan.seeds):
            for method, concept_set in [(None, ())] + [(m, c) for m in plan.methods if m != "none" for c in sets]:
                key = "plain" if method is None else keys[method, concept_set]
                if (key, seed) in by_seed or (sets_root is not None and (sets_root / key / f"{seed}.npz").is_file()):
                    continue
                t1 = time.time()
                found = image_set(key, seed, None if method is None else removals[method, concept_set])
                if found is None:
                    waiting = True
                    continue
                if sets_root is None:
                    by_seed[key, seed] = found
                log(
                    f"base seed {seed} ({i + 1}/{len(plan.seeds)}): "
                    + ("reference (no edit)" if method is None else f"{method} removed {'+'.join(concept_set)}")
                    + f", {len(found.records)} images in {time.time() - t1:.0f} s"
                )
            if i == 0 and not waiting and plan.attack_prompts:  # attacks after the first seed: a short run has them too
                for method in plan.methods:
                    for concept in plan.concepts if method != "none" else ():
                        if (method, concept) in attacks:
                            continue  # done on an earlier pass
                        t1 = time.time()
                        found = attack_of(method, concept, wait=False)
                        if found is None:
                            waiting = True
                            continue
                        row = found[0]
                        log(
                            f"attack on {method} removing {concept}: UA {row['UA_before']:.2f} -> "
                            f"{row['UA_after']:.2f} ({time.time() - t1:.0f} s)"
                        )
        if not waiting:
            break
        time.sleep(10)  # another process is finishing a claimed set

    def images_of(key: str) -> ImageSet:
        return ImageSet.concat(
            [
                by_seed[key, s] if (key, s) in by_seed else ImageSet.load(sets_root / key / f"{s}.npz")
                for s in plan.seeds
            ]
        )

    plain = images_of("plain")
    styled = [r for r in plain.records if r.style is not None]
    reference = {
        "style_accuracy": accuracy(styled, "style"),
        "object_accuracy": accuracy(styled, "object"),
        "object_accuracy_unstyled": accuracy([r for r in plain.records if r.style is None], "object"),
        "seconds_per_image": plain.seconds / len(plain.records),
    }
    ref_feats = reference_features(judge, mc.all_pairs(), 2)
    reference["judge_fd"] = frechet_distance(plain.features[_retained(plain.records, ())], ref_feats)
    by_method, examples = {}, {}
    for method in plan.methods:
        rows, used = [], []
        for concept_set in sets:
            removal = removals[method, concept_set]
            edited = plain if method == "none" else images_of(keys[method, concept_set])
            used.append(removal)
            row = concept_row(concept_set, edited, plain, ref_feats)
            row["settings"] = removal.settings
            row["setup_seconds"] = removal.setup_seconds
            if plan.attack_prompts and method != "none" and len(concept_set) == 1:
                row["attack"], examples[f"{method} attacked: {concept_set[0]}"] = attack_of(method, concept_set[0])
            rows.append(row)
            if method != "none":
                examples[f"{method}: {'+'.join(concept_set)}"] = _example_strip(concept_set, plain, edited)
            shown = {
                k: v
                for k, v in row.items()
                if isinstance(v, float) and k in ("UA", "IRA", "CRA", "kept_on_target", "setup_seconds")
            }
            attacked = (
                f", attacked UA {row['attack']['UA_before']:.3f} -> {row['attack']['UA_after']:.3f}"
                if "attack" in row
                else ""
            )
            log(
                f"{method} removed {'+'.join(concept_set)}: "
                + ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
                + attacked
            )
        by_method[method] = {
            "variant": next((r.variant for r in used if r.variant is not None), None),
            "rows": rows,
            "summary": summarize(rows),
            "cost": cost(
                used,
                plain.seconds / len(plain.records),
                [r["seconds_per_image"] for r in rows],
                edited=method != "none",
            ),
        }
    result = {
        "plan": asdict(plan),
        "seed_derivation": (
            "each prompt p gets seed dataset.prompt_seeds(plan.seeds, p): blake2b(base, p) mapped into the base's "
            "split; the same for every method"
        ),
        "reference": reference,
        "methods": by_method,
        "comparisons": compare_methods(by_method),
        "paper": PAPER,
        "paper_baselines": PAPER_BASELINES,
        "wall_seconds": round(time.time() - t0, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "cra_definitions": {
            "CRA": "other-kind accuracy on styled images (UnlearnCanvas)",
            "CRA_unstyled": "object accuracy on 'An image of {object}.' (reference code, styles only)",
        },
        "cost_definitions": {
            "extra_memory_mb": (
                "tensors held beyond the base model while the removal is active (SAEs + statistics; for ESD / UCE "
                "the weight differences, since one base copy is edited in place)"
            ),
            "extra_storage_mb": (
                "bytes on disk beyond the base model per removal (SAeUron: SAEs + statistics, shared by every "
                "concept; ESD / UCE: one weight edit per concept set)"
            ),
            "setup_seconds": (
                "wall time to set up one removal (feature selection / fine-tuning / closed-form solve), mean over rows"
            ),
        },
    }
    write_reports(result, examples, out)
    return result
