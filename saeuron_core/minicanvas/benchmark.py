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
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..baselines.attack import AttackConfig, run_attack
from ..baselines.methods import Removal, check_method, prepare_removal
from ..errors import SaeuronError
from ..intervals import Rate, paired_bootstrap
from ..io import atomic_path, claim, write_json
from . import dataset as mc
from .evaluation import JudgedImage, accuracy, judge_decorrelated, removal_counts

DOMAINS = ("style", "object", "both")
PAPER = {  # SD v1.5 on UnlearnCanvas (METHOD section 6), for side-by-side context only
    "style": {"UA": 0.9676, "IRA": 0.9870, "CRA": 0.9810},
    "object": {"UA": 0.8423, "IRA": 0.9005, "CRA": 0.7678},
    "memory_gb": 2.8,
    "storage_gb": 0.2,
}
# Published baselines on UnlearnCanvas (SD v1.5), as tabulated by UnlearnCanvas (Zhang et al. 2024)
# and quoted in the SAeUron paper. The averages are the ones METHOD.md states (ESD styles 91.17,
# UCE objects 56.11, SalUn 90.57 / 94.28); SalUn's per-metric numbers are not given there.
PAPER_BASELINES = {
    "esd": {
        "style": {"UA": 0.9858, "IRA": 0.8097, "CRA": 0.9396},
        "object": {"UA": 0.9215, "IRA": 0.5578, "CRA": 0.4423},
        "memory_gb": 17.8,
        "storage_gb": 4.3,
    },
    "uce": {
        "style": {"UA": 0.9840, "IRA": 0.6022, "CRA": 0.4771},
        "object": {"UA": 0.9431, "IRA": 0.3935, "CRA": 0.3467},
        "memory_gb": 5.1,
        "storage_gb": 1.7,
    },
    "salun": {"style": {"average": 0.9057}, "object": {"average": 0.9428}},
}


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
                    f"seed {s} is in the {mc.split_of(s)!r} split; evaluation uses held-out seeds {mc.SPLITS['heldout']} only"
                )
        if not self.seeds:
            raise SaeuronError("no seeds to evaluate")
        if not isinstance(self.attack_prompts, int) or self.attack_prompts < 0:
            raise SaeuronError(f"attack_prompts must be an integer >= 0, got {self.attack_prompts!r}")
        if self.attack_prompts:
            AttackConfig(steps=self.attack_steps)  # validates the budget


def default_concepts(domain: str) -> tuple[str, ...]:
    return (mc.STYLES if domain in ("style", "both") else ()) + (mc.OBJECTS if domain in ("object", "both") else ())


def protocol_prompts() -> list[tuple[str, str | None]]:
    """Every (object, style) pair, then every unstyled prompt (style None)."""
    return mc.all_pairs() + [(o, None) for o in mc.OBJECTS]


@dataclass
class ImageSet:
    records: list[JudgedImage]
    images: np.ndarray  # uint8 [N, H, W, 3]
    features: torch.Tensor  # judge penultimate features [N, D]
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        """One .npz, written atomically (a work folder's finished piece)."""
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(
                    f,
                    images=self.images,
                    features=self.features.numpy(),
                    records=json.dumps([asdict(r) for r in self.records]),
                    seconds=self.seconds,
                )

    @classmethod
    def load(cls, path: Path) -> "ImageSet":
        z = np.load(path)
        records = [JudgedImage(**r) for r in json.loads(str(z["records"]))]
        return cls(records, z["images"], torch.from_numpy(z["features"]), float(z["seconds"]))

    @classmethod
    def concat(cls, parts: list["ImageSet"]) -> "ImageSet":
        """Image sets of several base seeds as one (records in seed order, the same for every set)."""
        return cls(
            [r for p in parts for r in p.records],
            np.concatenate([p.images for p in parts]),
            torch.cat([p.features for p in parts]),
            sum(p.seconds for p in parts),
        )


def generate_protocol(pipe, judge, seeds, steps: int, guidance: float, batch_size: int = 24) -> ImageSet:
    """Generate and judge the whole protocol once (under whatever hooks are active): every
    prompt at its own seeds derived from the base ``seeds``, so no two prompts share noise and
    every method sees the same noise per prompt."""
    t0 = time.perf_counter()
    records, feats, images = judge_decorrelated(pipe, judge, protocol_prompts(), seeds, steps, guidance, batch_size)
    return ImageSet(records, images, feats, time.perf_counter() - t0)


def stored_protocol(
    pipe, judge, path: Path | None, seed: int, steps: int, guidance: float, removal: Removal | None = None
) -> ImageSet | None:
    """The protocol at one base seed with ``removal`` active: from ``path`` if a run finished it,
    else generated here and saved there, unless another live process holds its claim (then None:
    the same command in several processes shares the work, one set at a time). ``path`` None:
    generated and not kept."""
    if path is not None and path.is_file():
        return ImageSet.load(path)
    with claim(path.with_suffix(".claim")) if path is not None else contextlib.nullcontext(True) as mine:
        if not mine:
            return None
        with removal.active(pipe) if removal is not None else contextlib.nullcontext():
            images = generate_protocol(pipe, judge, (seed,), steps, guidance)
        if path is not None:
            images.save(path)
    return images


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets [N, D]."""
    if len(a) < 2 or len(b) < 2:
        raise SaeuronError("a Frechet distance needs at least two samples per set")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    # Tr((S_a S_b)^(1/2)) = sum of sqrt of eigenvalues of S_a^(1/2) S_b S_a^(1/2) (symmetric PSD)
    w, v = torch.linalg.eigh(s_a)
    root_a = (v * w.clamp(min=0).sqrt()) @ v.T
    mid = torch.linalg.eigvalsh(root_a @ s_b @ root_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + s_a.trace() + s_b.trace() - 2 * mid)


def reference_features(judge, pairs, n_per_pair: int) -> torch.Tensor:
    """Judge features of MiniCanvas renders of ``pairs`` (held-out seeds far from generation's)."""
    seeds = mc.split_seeds("heldout", n_per_pair, offset=900_000)
    renders = np.stack([mc.render(o, s, seed) for o, s in pairs for seed in seeds])
    return judge.classify(renders)["features"]


def _retained(records, removed: tuple[str, ...]) -> np.ndarray:
    return np.array([r.style not in removed and r.object_name not in removed and r.style is not None for r in records])


def concept_row(concept_set: tuple[str, ...], edited: ImageSet, plain: ImageSet, ref_feats: torch.Tensor) -> dict:
    """Metrics for removing ``concept_set`` together."""
    row: dict = {"removed": list(concept_set)}
    for c in concept_set:
        counts = (
            removal_counts([r for r in edited.records if r.style not in concept_set or r.style == c], c)
            if len(concept_set) > 1
            else removal_counts(edited.records, c)
        )
        m = {name: rate.value for name, rate in counts.items()}
        m["intervals"] = {name: rate.as_dict() for name, rate in counts.items()}
        row.setdefault("per_concept", {})[c] = m
    kinds = {mc.concept_kind(c) for c in concept_set}
    retained = [r for r in edited.records if r.style not in concept_set and r.object_name not in concept_set]
    row["retain_style"] = accuracy([r for r in retained if r.style is not None], "style")
    row["retain_object"] = accuracy(retained, "object")
    if kinds == {"style"}:
        row["CRA_unstyled"] = accuracy([r for r in edited.records if r.style is None], "object")
    keep = _retained(edited.records, concept_set)
    row["judge_fd_retained"] = frechet_distance(edited.features[keep], ref_feats)
    row["collateral_mae"] = float(
        np.abs(edited.images[keep].astype(np.float32) - plain.images[keep].astype(np.float32)).mean() / 255
    )
    row["seconds_per_image"] = edited.seconds / len(edited.records)
    if len(concept_set) == 1:
        row.update(row["per_concept"][concept_set[0]])
    return row


def compare_methods(by_method: dict, reference: str = "saeuron") -> dict:
    """Paired bootstrap over concepts of ``reference`` minus each other method, per kind, on the
    per-concept average and on UA / IRA / CRA (both methods saw the same images' seeds)."""
    out: dict = {}
    if reference not in by_method:
        return out
    for other, res in by_method.items():
        if other == reference:
            continue
        for kind in ("style", "object"):
            mine = {r["removed"][0]: r for r in _single_rows(by_method[reference]["rows"], kind)}
            theirs = {r["removed"][0]: r for r in _single_rows(res["rows"], kind)}
            shared = [c for c in mine if c in theirs]
            if not shared:
                continue
            entry = {
                "concepts": shared,
                "average": paired_bootstrap(
                    [concept_average(mine[c]) for c in shared], [concept_average(theirs[c]) for c in shared]
                ),
            }
            for metric in ("UA", "IRA", "CRA", "kept_on_target"):
                if all(metric in mine[c] and metric in theirs[c] for c in shared):
                    entry[metric] = paired_bootstrap(
                        [mine[c][metric] for c in shared], [theirs[c][metric] for c in shared]
                    )
            out.setdefault(f"{reference} - {other}", {})[kind] = entry
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def settings_key(method: str, concept_set: tuple[str, ...], settings: dict) -> str:
    """A work folder's name for one removal: method, concepts and a hash of its settings, so a
    changed tau / gamma or ESD budget never reuses images made with the old one."""
    digest = hashlib.blake2b(json.dumps(settings, sort_keys=True, default=str).encode(), digest_size=4).hexdigest()
    return f"{method}-{'+'.join(concept_set)}-{digest}"


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
        / f"attacks-{info.name}-{plan.steps}-{plan.guidance:g}-{plan.attack_prompts}x{plan.attack_steps}-{attack_seeds[0]}"
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
                            f"attack on {method} removing {concept}: UA {row['UA_before']:.2f} -> {row['UA_after']:.2f} ({time.time() - t1:.0f} s)"
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
        "seed_derivation": "each prompt p gets seed dataset.prompt_seeds(plan.seeds, p): blake2b(base, p) mapped into the base's split; the same for every method",
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
            "extra_memory_mb": "tensors held beyond the base model while the removal is active (SAEs + statistics; for ESD / UCE the weight differences, since one base copy is edited in place)",
            "extra_storage_mb": "bytes on disk beyond the base model per removal (SAeUron: SAEs + statistics, shared by every concept; ESD / UCE: one weight edit per concept set)",
            "setup_seconds": "wall time to set up one removal (feature selection / fine-tuning / closed-form solve), mean over rows",
        },
    }
    write_reports(result, examples, out)
    return result


def attack_prompt_pairs(concept: str, n: int) -> list[tuple[str, str | None]]:
    """The first ``n`` (object, style) pairs that show ``concept``, partners in vocabulary order."""
    if mc.concept_kind(concept) == "style":
        return [(o, concept) for o in mc.OBJECTS][:n]
    return [(concept, s) for s in mc.STYLES][:n]


def attack_row(
    pipe, judge, removal: Removal, concept: str, n_prompts: int, seeds, steps: int, guidance: float, cfg: AttackConfig
) -> tuple[dict, np.ndarray]:
    """UA on ``n_prompts`` prompts of ``concept`` before and after the attack (prompt i at its own
    seed derived from base ``seeds[i % len(seeds)]``, as in the protocol), and an image strip: targets (top), edited model before (middle)
    and after the attack (bottom). ``saeuron attack`` and the benchmark both report through this."""
    pairs = attack_prompt_pairs(concept, n_prompts)
    prompts = [mc.prompt(o, s) for o, s in pairs]
    seeds = [mc.prompt_seeds([seeds[i % len(seeds)]], p)[0] for i, p in enumerate(prompts)]
    result = run_attack(pipe, lambda: removal.active(pipe), prompts, seeds, steps, guidance, cfg)
    kind = mc.concept_kind(concept)
    verdicts = {
        name: judge.classify(images)
        for name, images in (("before", result.before), ("after", result.after), ("target", result.targets))
    }
    shown = {name: [v == concept for v in verdict[kind]] for name, verdict in verdicts.items()}
    # Is the concept back, or is the judge only confused? The judge's probability of the
    # concept (not just its top-1), and how close the images come, in the judge's feature
    # space, to the un-edited model's image of the same prompt and seed (the attack's target).
    p_concept = {name: judge.probability(verdict, concept) for name, verdict in verdicts.items()}
    target_feats = verdicts["target"]["features"]
    similarity = {
        name: torch.nn.functional.cosine_similarity(verdicts[name]["features"], target_feats, dim=-1)
        for name in ("before", "after")
    }

    def ua(flags) -> float:
        return 1.0 - float(np.mean(flags))

    strip = np.concatenate(
        [np.concatenate(list(images), 1) for images in (result.targets, result.before, result.after)], 0
    )
    row = {
        "prompts": prompts,
        "seeds": seeds,
        "UA_before": ua(shown["before"]),
        "UA_after": ua(shown["after"]),
        "target_UA": ua(shown["target"]),
        "UA_before_interval": Rate(len(prompts) - sum(shown["before"]), len(prompts)).as_dict(),
        "UA_after_interval": Rate(len(prompts) - sum(shown["after"]), len(prompts)).as_dict(),
        "shows_concept_before": [bool(x) for x in shown["before"]],
        "shows_concept_after": [bool(x) for x in shown["after"]],
        "losses": [float(x) for x in result.losses],
        "final_loss": float(result.losses[-1]),
        "seconds": round(result.seconds, 1),
        **{f"p_concept_{name}": float(p.mean()) for name, p in p_concept.items()},
        "p_concept_before_each": [float(x) for x in p_concept["before"]],
        "p_concept_after_each": [float(x) for x in p_concept["after"]],
        **{f"similarity_{name}": float(sim.mean()) for name, sim in similarity.items()},
        "similarity_after_each": [float(x) for x in similarity["after"]],
    }
    row["similarity_recovered"] = similarity_recovered(row["similarity_before"], row["similarity_after"])
    row["reading"] = attack_reading(row)
    return row, strip


RESTORED_PROBABILITY = 0.5
"""The attack "restored" the concept when the judge's mean probability of it after the attack is
at least this and at least half of the feature-space distance to the un-edited images was
recovered; a top-1 flip without both is the judge being confused, not the concept coming back."""


def similarity_recovered(before: float, after: float) -> float:
    """Share of the way from the removal (similarity ``before`` to the un-edited image) back to
    the un-edited image itself (similarity 1) that the attack covered; nan if nothing was removed."""
    return (after - before) / (1 - before) if before < 1 - 1e-9 else float("nan")


def attack_reading(attack: dict) -> str:
    """A plain reading of one attack row. Restored: p(concept) after >= ``RESTORED_PROBABILITY``
    and at least half the similarity recovered. Otherwise, if the judge's top-1 flipped back to
    the concept more often (UA fell): the judge is confused, the concept not restored. Otherwise
    "moved towards the concept" if p(concept) rose by >= 0.1 or a quarter of the similarity was
    recovered, else "no effect"."""
    if attack["p_concept_after"] >= RESTORED_PROBABILITY and attack["similarity_recovered"] >= 0.5:
        return "restored"
    if attack["UA_after"] < attack["UA_before"]:
        return "judge confused, concept not restored"
    if (
        attack["p_concept_after"] - attack.get("p_concept_before", attack["p_concept_after"]) >= 0.1
        or attack["similarity_recovered"] >= 0.25
    ):
        return "moved towards the concept"
    return "no effect"


def _single_rows(rows: list[dict], kind: str) -> list[dict]:
    return [r for r in rows if len(r["removed"]) == 1 and mc.concept_kind(r["removed"][0]) == kind]


def concept_average(row: dict) -> float:
    """(UA + IRA + CRA) / 3 of one removal: the per-concept number methods are compared on."""
    return float(np.mean([row[k] for k in ("UA", "IRA", "CRA")]))


def summarize(rows: list[dict]) -> dict:
    """Averages of UA / IRA / CRA / kept_on_target (and attacked UA) over single-concept rows, per kind.

    ``intervals``: Wilson 95% intervals of UA / IRA / CRA / unrecognisable / kept_on_target pooled over the
    concepts' images (every concept has as many images, so the pooled rate is the mean), and a
    bootstrap interval over concepts of the average (between-concept spread included)."""
    out = {}
    for kind in ("style", "object"):
        single = _single_rows(rows, kind)
        if not single:
            continue
        avg = {k: float(np.mean([r[k] for r in single])) for k in ("UA", "IRA", "CRA")}
        avg["average"] = float(np.mean(list(avg.values())))
        pooled = {}
        for name in ("UA", "IRA", "CRA", "unrecognisable", "kept_on_target"):
            parts = [r["intervals"][name] for r in single if name in r.get("intervals", {})]
            if parts:
                pooled[name] = Rate(sum(p["k"] for p in parts), sum(p["n"] for p in parts)).as_dict()
        averages = [concept_average(r) for r in single]
        pooled["average"] = paired_bootstrap(averages, [0.0] * len(averages))
        avg["intervals"] = pooled
        for name in ("unrecognisable", "kept_on_target"):
            if all(name in r for r in single):
                avg[name] = float(np.mean([r[name] for r in single]))
        if kind == "style":
            avg["CRA_unstyled"] = float(np.mean([r["CRA_unstyled"] for r in single]))
        avg["judge_fd_retained"] = float(np.mean([r["judge_fd_retained"] for r in single]))
        avg["collateral_mae"] = float(np.mean([r["collateral_mae"] for r in single]))
        attacked = [r["attack"] for r in single if "attack" in r]
        if attacked:
            avg["UA_attack_before"] = float(np.mean([a["UA_before"] for a in attacked]))
            avg["UA_attack_after"] = float(np.mean([a["UA_after"] for a in attacked]))
            if all("p_concept_after" in a for a in attacked):
                for key in (
                    "p_concept_before",
                    "p_concept_after",
                    "p_concept_target",
                    "similarity_before",
                    "similarity_after",
                ):
                    avg[f"attack_{key}"] = float(np.mean([a[key] for a in attacked]))
                avg["attack_similarity_recovered"] = similarity_recovered(
                    avg["attack_similarity_before"], avg["attack_similarity_after"]
                )
                avg["attack_readings"] = {
                    r: sum(a["reading"] == r for a in attacked) for r in sorted({a["reading"] for a in attacked})
                }
        out[kind] = avg
    return out


def cost(removals: list[Removal], plain_s: float, edited_s: list[float], edited: bool = True) -> dict:
    """Extra memory and storage (largest over removals), set-up seconds (mean), extra s/image."""
    if not removals:
        return {}
    return {
        "extra_memory_mb": max(r.extra_memory_bytes for r in removals) / 2**20,
        "extra_storage_mb": max(r.extra_storage_bytes for r in removals) / 2**20,
        "setup_seconds": float(np.mean([r.setup_seconds for r in removals])),
        "extra_seconds_per_image": (float(np.mean(edited_s)) - plain_s) if edited and edited_s else 0.0,
    }


def _example_strip(concept_set, plain: ImageSet, edited: ImageSet, n: int = 6) -> np.ndarray:
    """Before (top) / after (bottom) for up to n images showing the removed concepts."""
    idx = [i for i, r in enumerate(plain.records) if r.style in concept_set or r.object_name in concept_set][
        :: max(1, len(plain.records) // 200)
    ][:n]
    return np.concatenate([np.concatenate(list(plain.images[idx]), 1), np.concatenate(list(edited.images[idx]), 1)], 0)


def _pct(v) -> str:
    return "-" if v is None or v != v else f"{100 * v:.2f}%"


def _with_interval(value, interval: dict | None) -> str:
    """'95.00% [91.2, 97.4]': a rate and its 95% interval in percentage points; "-" (no data)
    for a rate of no trials, whose interval is all of [0, 1] (results written before the
    intervals agreed stored nan there)."""
    if interval is None or interval.get("n") == 0 or interval.get("lo") != interval.get("lo"):
        return _pct(value)
    return f"{_pct(value)} [{100 * interval['lo']:.1f}, {100 * interval['hi']:.1f}]"


def _diff(entry: dict) -> str:
    return f"{100 * entry['mean']:+.1f} [{100 * entry['lo']:+.1f}, {100 * entry['hi']:+.1f}]"


def difference_lines(comparisons: dict, intro: str, first: str, name=lambda key: key) -> list[str]:
    """Markdown rows of paired differences (bootstrap intervals), one per (comparison, kind)."""
    lines = [
        "",
        intro,
        "",
        f"| {first} | kind | avg | UA | IRA | CRA | kept on target |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, kinds in comparisons.items():
        for kind, e in kinds.items():
            kept = _diff(e["kept_on_target"]) if "kept_on_target" in e else "-"
            lines.append(
                f"| {name(key)} | {kind} | {_diff(e['average'])} | {_diff(e['UA'])} | {_diff(e['IRA'])} | {_diff(e['CRA'])} | {kept} |"
            )
    return lines


def markdown_table(result: dict) -> str:
    """The comparison in the paper's format: ours (MiniCanvas), then the published numbers."""
    lines = [
        "### Ours: tiny SD-architecture model on MiniCanvas (this run)",
        "",
        "UA / IRA / CRA with Wilson 95% intervals over the images pooled across concepts; avg = (UA + IRA + CRA) / 3 (the paper's) with a bootstrap 95% interval over concepts; kept on target: share of the removed concept's own images on which the judge still sees the prompt's other concept (Wilson 95%); unrecognisable: share of the removed concept's images the judge places in neither head (top probability < 0.5 on both).",
        "",
        "| Method | Domain | UA | IRA | CRA | avg | kept on target | unrecognisable | UA attacked: before -> after | judge-FD (retained) | extra memory | extra storage | set-up s / removal | s / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, res in result["methods"].items():
        c = res["cost"]
        for kind, s in res["summary"].items():
            attacked = (
                f"{_pct(s['UA_attack_before'])} -> {_pct(s['UA_attack_after'])}" if "UA_attack_after" in s else "-"
            )
            mem = f"{c['extra_memory_mb']:.2f} MB" if c else "-"
            sto = f"{c['extra_storage_mb']:.2f} MB" if c else "-"
            setup = f"{c['setup_seconds']:.2f}" if c else "-"
            per_image = result["reference"]["seconds_per_image"] + (c.get("extra_seconds_per_image", 0.0) if c else 0.0)
            iv = s.get("intervals", {})
            cells = " | ".join(_with_interval(s[k], iv.get(k)) for k in ("UA", "IRA", "CRA", "average"))
            kept = _with_interval(s.get("kept_on_target"), iv.get("kept_on_target"))
            lines.append(
                f"| {method} | {kind} | {cells} | {kept} | {_pct(s.get('unrecognisable'))} | {attacked} | {s['judge_fd_retained']:.2f} | {mem} | {sto} | {setup} | {per_image:.3f} |"
            )
    attacked = [
        (m, k, s)
        for m, res in result["methods"].items()
        for k, s in res["summary"].items()
        if "attack_p_concept_after" in s
    ]
    if attacked:
        lines += [
            "",
            "Attack: is the removed concept back, or is the judge only confused? p(concept): the judge's mean probability of the removed concept (un-edited images of the same prompts: the target value). Similarity: cosine of the judge's penultimate features to the un-edited image of the same prompt and seed; recovered: share of the way back to it. Reading per attacked prompt set: restored when p(concept) after >= 0.5 and at least half the similarity recovered; judge confused when UA fell without that; moved towards the concept when p(concept) rose by >= 0.1 or a quarter of the similarity was recovered; else no effect.",
            "",
            "| Method | Domain | UA before -> after | p(concept) before -> after (un-edited) | similarity before -> after | recovered | readings |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, kind, s in attacked:
            readings = ", ".join(f"{r}: {n}" for r, n in s["attack_readings"].items())
            lines.append(
                f"| {method} | {kind} | {_pct(s['UA_attack_before'])} -> {_pct(s['UA_attack_after'])} | {s['attack_p_concept_before']:.3f} -> {s['attack_p_concept_after']:.3f} ({s['attack_p_concept_target']:.3f}) | {s['attack_similarity_before']:.3f} -> {s['attack_similarity_after']:.3f} | {_pct(s['attack_similarity_recovered'])} | {readings} |"
            )
    if result.get("comparisons"):
        lines += difference_lines(
            result["comparisons"],
            "Paired differences (bootstrap 95% interval over concepts, percentage points; methods share every prompt's seeds):",
            "Difference",
        )
    variants = {m: res["variant"] for m, res in result["methods"].items() if res.get("variant")}
    if variants:
        lines += [
            "",
            "SAE removal variants: "
            + "; ".join(
                f"`{m}` = {v}"
                + (" (the paper's method: the default is the paper's)" if v == "paper" and m == "saeuron" else "")
                for m, v in variants.items()
            )
            + ".",
        ]
    ref = result["reference"]
    lines += [
        "",
        f"Un-edited reference: style accuracy {_pct(ref['style_accuracy'])}, object accuracy {_pct(ref['object_accuracy'])} (unstyled prompts: {_pct(ref['object_accuracy_unstyled'])}), judge-FD {ref['judge_fd']:.2f}. Method `none` is that model judged as if it had removed each concept (its UA is the judge's error).",
    ]
    lines += [
        "",
        "### Published: SD v1.5 on UnlearnCanvas (a different model and dataset; context only)",
        "",
        "| Method | Style UA | IRA | CRA | avg | Object UA | IRA | CRA | avg | memory | storage |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    published = {"saeuron": {**PAPER}, **PAPER_BASELINES}
    for method, p in published.items():
        cells = []
        for kind in ("style", "object"):
            k = p[kind]
            avg = k.get("average", sum(k.get(m, 0) for m in ("UA", "IRA", "CRA")) / 3)
            cells += [_pct(k.get("UA")), _pct(k.get("IRA")), _pct(k.get("CRA")), _pct(avg)]
        mem = f"{p['memory_gb']} GB" if "memory_gb" in p else "-"
        sto = f"{p['storage_gb']} GB" if "storage_gb" in p else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mem} | {sto} |")
    for method, res in result["methods"].items():
        if not res["rows"]:
            continue
        lines += [
            "",
            f"#### {method}: per removal (Wilson 95% intervals)",
            "",
            "| Removed | UA | IRA | CRA | kept on target | unrecognisable | retain style | retain object | collateral MAE | attacked UA before -> after | attack: p(concept) before -> after | attack: similarity before -> after | attack reading |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in res["rows"]:

            def cell(name):
                labelled = name in ("UA", "kept_on_target") and len(r["per_concept"]) > 1
                return " / ".join(
                    (f"{c}: " if labelled else "") + _with_interval(m.get(name), m.get("intervals", {}).get(name))
                    for c, m in r["per_concept"].items()
                )

            a = r.get("attack", {})
            attacked = f"{_pct(a['UA_before'])} -> {_pct(a['UA_after'])}" if a else "-"
            p_concept = f"{a['p_concept_before']:.3f} -> {a['p_concept_after']:.3f}" if "p_concept_after" in a else "-"
            sim = f"{a['similarity_before']:.3f} -> {a['similarity_after']:.3f}" if "similarity_after" in a else "-"
            lines.append(
                f"| {'+'.join(r['removed'])} | {cell('UA')} | {cell('IRA')} | {cell('CRA')} | {cell('kept_on_target')} | {cell('unrecognisable')} | {_pct(r['retain_style'])} | {_pct(r['retain_object'])} | {r['collateral_mae']:.4f} | {attacked} | {p_concept} | {sim} | {a.get('reading', '-')} |"
            )
    return "\n".join(lines) + "\n"


def write_reports(result: dict, examples: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result)
    with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "method",
                "removed",
                "concept",
                "UA",
                "IRA",
                "CRA",
                "kept_on_target",
                "CRA_unstyled",
                "retain_style",
                "retain_object",
                "judge_fd_retained",
                "collateral_mae",
                "seconds_per_image",
                "setup_seconds",
                "UA_attack_before",
                "UA_attack_after",
                "p_concept_attack_before",
                "p_concept_attack_after",
                "similarity_attack_before",
                "similarity_attack_after",
            ]
        )
        for method, res in result["methods"].items():
            for r in res["rows"]:
                a = r.get("attack", {})
                for c, m in r["per_concept"].items():
                    w.writerow(
                        [
                            method,
                            "+".join(r["removed"]),
                            c,
                            m["UA"],
                            m["IRA"],
                            m["CRA"],
                            m.get("kept_on_target", ""),
                            r.get("CRA_unstyled", ""),
                            r["retain_style"],
                            r["retain_object"],
                            r["judge_fd_retained"],
                            r["collateral_mae"],
                            r["seconds_per_image"],
                            r["setup_seconds"],
                            a.get("UA_before", ""),
                            a.get("UA_after", ""),
                            a.get("p_concept_before", ""),
                            a.get("p_concept_after", ""),
                            a.get("similarity_before", ""),
                            a.get("similarity_after", ""),
                        ]
                    )
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(markdown_table(result))
    with atomic_path(out / "report.html") as tmp:
        tmp.write_text(html_report(result, examples))


def html_report(result: dict, examples: dict) -> str:
    import base64
    import html
    import io

    from PIL import Image

    parts = [
        "<html><head><meta charset='utf-8'><title>MiniCanvas unlearning benchmark</title></head><body>",
        "<h1>Concept removal on MiniCanvas: " + ", ".join(result["methods"]) + "</h1>",
    ]
    try:
        import plotly.graph_objects as go

        for kind in ("style", "object"):
            summaries = {m: res["summary"][kind] for m, res in result["methods"].items() if kind in res["summary"]}
            if not summaries:
                continue
            fig = go.Figure()
            metrics = ["UA", "IRA", "CRA", "average", "kept_on_target"] + (
                ["UA_attack_after"] if any("UA_attack_after" in s for s in summaries.values()) else []
            )
            for method, s in summaries.items():
                iv = s.get("intervals", {})
                ys = [s.get(m) for m in metrics]
                plus = [(iv[m]["hi"] - y) if m in iv and y is not None else 0 for m, y in zip(metrics, ys)]
                minus = [(y - iv[m]["lo"]) if m in iv and y is not None else 0 for m, y in zip(metrics, ys)]
                fig.add_bar(
                    name=method,
                    x=metrics,
                    y=ys,
                    error_y=dict(type="data", symmetric=False, array=plus, arrayminus=minus),
                )
            fig.update_layout(
                barmode="group",
                title=f"{kind} removal: methods compared (mean over concepts; bars: 95% intervals)",
                yaxis_range=[0, 1],
            )
            parts.append(fig.to_html(full_html=False, include_plotlyjs="cdn"))
    except ImportError:
        parts.append("<p>(install plotly for charts)</p>")
    parts.append("<pre>" + html.escape(markdown_table(result)) + "</pre>")
    for name, strip in examples.items():
        buf = io.BytesIO()
        Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(buf, format="PNG")
        caption = (
            "attack targets (top) / removed, plain prompt (middle) / removed, attack prompt (bottom)"
            if "attacked" in name
            else "before (top) / after (bottom)"
        )
        parts.append(
            f"<h3>{html.escape(name)}: {caption}</h3><img src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"
        )
    settings = {k: result[k] for k in ("plan", "wall_seconds", "peak_rss_mb", "cost_definitions")}
    settings["cost"] = {m: res["cost"] for m, res in result["methods"].items()}
    parts.append("<h2>Settings</h2><pre>" + html.escape(json.dumps(settings, indent=2)) + "</pre></body></html>")
    return "\n".join(parts)
