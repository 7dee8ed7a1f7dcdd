"""Generalisation to unseen concepts (the paper's Table 3), on MiniCanvas.

The concepts of each kind are split in two halves with a fixed, recorded integer seed. An SAE
is trained (per hook point) on activations of the prompts of one half only: pairs of an in-half
object with an in-half style, plus the unstyled prompts of the in-half objects. Then every
concept, in-half and out-of-half, is removed with the same selection procedure (the paper's
score over the statistics, the defaults table's tau / gamma) and UA / IRA / CRA are reported
for the two groups separately.

Statistics are computed with the half SAE over the prompts of *every* concept: selecting the
features of a concept needs its mean activations (METHOD section 3), so a concept the SAE never
saw in training can only be removed if its prompts are encoded once for scoring. The SAE's
dictionary, not the scoring data, is what the split withholds (as in the paper).

A reference SAE trained the same way on every concept's prompts ("full"; by default the bundled
SAE, which was trained on exactly those prompts with this recipe) removes the same concepts on
the same seeds, so each group has a paired baseline: a gap between the groups that
also appears with the full SAE is the concepts' difficulty, not the SAE's blind spot.

Everything is kept in a work folder (split, activation stores, SAEs, statistics, the un-edited
reference images and one row per finished removal); the same command resumes. The summaries
and report writers are in ``generalisation_report``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SaeuronError
from ..io import write_json
from ..sae import SaeConfig
from ..store import PromptItem
from . import dataset as mc
from .benchmark_scores import _retained, concept_row, frechet_distance, reference_features
from .evaluation import accuracy
from .generalisation_report import GROUP_NAMES, PAPER_TABLE3, compare_groups, summarize_groups, write_reports
from .image_sets import ImageSet, stored_protocol


# --------------------------------------------------------------------------- the split
def check_split_seed(seed) -> int:
    """The split seed as an int; an integer-valued string is accepted (the command line)."""
    if isinstance(seed, bool):
        raise SaeuronError(f"the split seed must be an integer, got {seed!r}")
    if isinstance(seed, int):
        return seed
    if isinstance(seed, str):
        try:
            return int(seed.strip())
        except ValueError:
            pass
    raise SaeuronError(f"the split seed must be an integer, got {seed!r}")


@dataclass(frozen=True)
class ConceptSplit:
    """Which concepts of each kind the SAE is trained on."""

    seed: int | None
    """The integer seed that drew the split (None: chosen by name)."""
    in_half: dict[str, tuple[str, ...]]
    """Per kind, the concepts whose prompts the SAE is trained on (vocabulary order)."""
    out_half: dict[str, tuple[str, ...]]
    """Per kind, the concepts the SAE never sees in training."""

    def group_of(self, concept: str) -> str:
        for kind, names in self.in_half.items():
            if concept in names:
                return "in"
            if concept in self.out_half[kind]:
                return "out"
        raise SaeuronError(f"{concept!r} is in neither half of the split")

    def as_dict(self) -> dict:
        return {
            "seed": self.seed,
            "in_half": {k: list(v) for k, v in self.in_half.items()},
            "out_half": {k: list(v) for k, v in self.out_half.items()},
        }


def split_concepts(vocabulary: dict[str, tuple[str, ...]], seed=0, chosen: tuple[str, ...] = ()) -> ConceptSplit:
    """Split each kind's concepts in two halves: ``len // 2`` concepts drawn with ``seed`` go to
    the SAE's half (or, with ``chosen``, exactly the named ones); the rest stay out.

    Deterministic: the same seed and vocabulary give the same split in any process. A kind that
    would end up with no concept on one side is refused.
    """
    if not vocabulary or not any(vocabulary.values()):
        raise SaeuronError(
            "the model has no concept vocabulary (objects / styles); the generalisation mode runs on "
            "MiniCanvas-style models"
        )
    seed = None if chosen else check_split_seed(seed)
    if chosen:
        known = {c for names in vocabulary.values() for c in names}
        unknown = [c for c in chosen if c not in known]
        if unknown:
            raise SaeuronError(
                f"unknown concept {unknown[0]!r} for the SAE's half; the model knows {', '.join(sorted(known))}"
            )
    in_half, out_half = {}, {}
    for i, kind in enumerate(sorted(vocabulary)):
        names = tuple(vocabulary[kind])
        if chosen:
            picked = {c for c in names if c in chosen}
        else:
            order = np.random.default_rng([seed, i]).permutation(len(names))
            picked = {names[j] for j in order[: len(names) // 2]}
        in_half[kind] = tuple(c for c in names if c in picked)
        out_half[kind] = tuple(c for c in names if c not in picked)
        for side, group in (("in", in_half[kind]), ("outside", out_half[kind])):
            if not group:
                raise SaeuronError(
                    f"the split leaves no {kind} {side} the SAE's half ({len(names)} {kind}s: "
                    f"{', '.join(names) or 'none'}); each kind needs concepts on both sides"
                )
    return ConceptSplit(seed, in_half, out_half)


def training_items(split: ConceptSplit, seeds_per_pair: int, half: bool = True) -> list[PromptItem]:
    """Train-split prompts for the SAE: every (object, style) pair of the half (both concepts in
    it) and the half's unstyled objects; ``half=False``: every concept's prompts."""
    objects = split.in_half["object"] if half else split.in_half["object"] + split.out_half["object"]
    styles = split.in_half["style"] if half else split.in_half["style"] + split.out_half["style"]
    objects = [o for o in mc.OBJECTS if o in objects]
    styles = [s for s in mc.STYLES if s in styles]
    seeds = mc.split_seeds("train", seeds_per_pair)
    items = [
        PromptItem(mc.prompt(o, s), seed, {"object": o, "style": s}) for o in objects for s in styles for seed in seeds
    ]
    return items + [PromptItem(mc.prompt(o), seed, {"object": o}) for o in objects for seed in seeds]


# --------------------------------------------------------------------------- configuration
def _bundled_sae() -> SaeConfig:
    # the bundled SAEs' recipe (scripts/build_assets.sh step 3)
    return SaeConfig(expansion_factor=16, k=16, dead_feature_threshold=1_000_000)


@dataclass(frozen=True)
class GeneralisationConfig:
    """What the generalisation experiment trains and evaluates."""

    split_seed: int = 0
    """Integer seed of the split (recorded in split.json and metrics.json)."""
    sae_concepts: tuple[str, ...] = ()
    """Name the SAE's half instead of drawing it (then ``split_seed`` is not used)."""
    seeds: tuple[int, ...] = (1_000_000,)
    """Held-out base seeds; every prompt derives its own seed from each (as ``evaluate``)."""
    concepts: tuple[str, ...] = ()
    """Concepts to remove (default: every concept of the model)."""
    train_seeds_per_pair: int = 4
    """Train-split seeds per cached prompt (the bundled store: 4)."""
    sae: SaeConfig = field(default_factory=_bundled_sae)
    """SAE shape and training constants (the bundled SAEs': 1024 latents for 64 channels, k 16)."""
    epochs: int = 5
    """Passes over the store when training each SAE (the bundled SAEs: 5)."""
    batch_size: int = 4096
    """Tokens per optimiser step."""
    match_tokens: bool = False
    """Train the half SAE at each hook point on as many tokens as the reference SAE there saw (its
    recorded training tokens) instead of ``epochs`` passes, so that which concepts it saw is not
    mixed up with how long it trained (on half the prompts, ``epochs`` passes are fewer steps)."""

    def __post_init__(self):
        object.__setattr__(self, "split_seed", check_split_seed(self.split_seed))
        if not self.seeds:
            raise SaeuronError("no seeds to evaluate")
        for s in self.seeds:
            if mc.split_of(s) != "heldout":
                raise SaeuronError(
                    f"seed {s} is in the {mc.split_of(s)!r} split; evaluation uses held-out seeds "
                    f"{mc.SPLITS['heldout']} only"
                )
        if not isinstance(self.train_seeds_per_pair, int) or self.train_seeds_per_pair < 1:
            raise SaeuronError(f"train_seeds_per_pair must be an integer >= 1, got {self.train_seeds_per_pair!r}")
        if (
            not isinstance(self.batch_size, int)
            or self.batch_size < 1
            or not isinstance(self.epochs, int)
            or self.epochs < 1
        ):
            raise SaeuronError(
                f"batch_size and epochs must be integers >= 1, got {self.batch_size!r} and {self.epochs!r}"
            )
        for c in self.concepts + self.sae_concepts:
            mc.concept_kind(c)


# --------------------------------------------------------------------------- the run
def _vocabulary(info) -> dict[str, tuple[str, ...]]:
    return {k: info.concepts_of(k) for k in ("object", "style") if info.concepts_of(k)}


def check_defaults(table: dict, concepts) -> None:
    """Every concept to remove has a tau / gamma (per concept, else per kind): refused before any work."""
    missing = [
        c for c in concepts if c not in table.get("concepts", {}) and mc.concept_kind(c) not in table.get("kinds", {})
    ]
    if missing:
        raise SaeuronError(
            f"the defaults table has no tau/gamma for {', '.join(missing)}; tune them (`saeuron tune`) or remove "
            "other concepts (--concept)"
        )


def prepare(info, cfg: GeneralisationConfig, defaults: Path, work: Path) -> tuple[ConceptSplit, tuple[str, ...], dict]:
    """Validate everything cheap (split, concepts, defaults, work folder) before any work."""
    vocab = _vocabulary(info)
    split = split_concepts(vocab, cfg.split_seed, cfg.sae_concepts)
    known = [c for names in vocab.values() for c in names]
    concepts = cfg.concepts or tuple(known)
    for c in concepts:
        if c not in known:
            raise SaeuronError(f"{c!r} is not in the model's vocabulary ({', '.join(known)})")
    if not defaults.is_file():
        raise SaeuronError(f"no defaults table at {defaults}")
    table = json.loads(defaults.read_text())
    check_defaults(table, concepts)
    recorded = work / "split.json"
    if recorded.is_file():
        old = json.loads(recorded.read_text())
        if old != split.as_dict():
            raise SaeuronError(f"{work} holds a run with another split ({old['in_half']}); use another --work")
    return split, concepts, table


def reference_tokens(full) -> dict[str, int]:
    """Per hook point, the training tokens the reference bundle's SAE recorded (its
    ``train_metrics.json`` or ``.train/<point>/metrics.json``); refused when one is missing."""
    from ..sae_train import METRICS_FILE

    found = {}
    for point in full.saes:
        # the bundle's folders are per hook point (SAE folders, then statistics folders)
        folder = next(Path(f) for f in full.folders if Path(f).name in (point, f"unet.{point}"))
        for path in (folder / "train_metrics.json", folder.parent / ".train" / point / METRICS_FILE):
            if path.is_file() and "tokens" in (m := json.loads(path.read_text())):
                found[point] = int(m["tokens"])
                break
        else:
            raise SaeuronError(f"matching tokens needs the reference SAE's recorded training tokens; {folder} has none")
    return found


def _train_and_score(
    pipe,
    info,
    name: str,
    train_items,
    stats_store,
    cfg: GeneralisationConfig,
    steps: int,
    guidance: float,
    work: Path,
    log,
    tokens: dict[str, int] | None = None,
) -> tuple[Path, Path]:
    """SAEs trained on ``train_items`` and their statistics over ``stats_store``; resumable.
    ``tokens``: per hook point, train on about this many tokens instead of ``cfg.epochs`` passes."""
    from ..sae import TopKSae
    from ..sae_train import TrainConfig, train_sae
    from ..stats import compute_stats
    from ..store import cache_activations

    points = sorted({p for ps in info.points_of_kind.values() for p in ps})
    store_dir = work / f"store_{name}"
    store = (
        stats_store
        if store_dir == stats_store.root
        else cache_activations(pipe, train_items, points, store_dir, steps, guidance, model_name=info.name)
    )
    sae_dir, stats_dir = work / f"sae_{name}", work / f"stats_{name}"
    for point in points:
        if not (sae_dir / ".train" / point / "metrics.json").is_file():
            t0 = time.time()
            epochs = cfg.epochs if tokens is None else max(1, round(tokens[point] / store.token_count(point)))
            m = train_sae(store, point, TrainConfig(sae=cfg.sae, batch_size=cfg.batch_size, epochs=epochs), sae_dir)
            log(
                f"SAE {name} {point}: FVU {m.get('fvu', float('nan')):.3f} after {m['steps']} steps "
                f"({time.time() - t0:.0f} s, {store.token_count(point)} tokens per epoch)"
            )
        if not (stats_dir / point / "stats.json").is_file():
            stats = compute_stats(stats_store, point, TopKSae.load(sae_dir / point), top_m=2)
            tmp = stats_dir / f".{point}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            stats.save(tmp)
            tmp.rename(stats_dir / point)
    return sae_dir, stats_dir


def run(
    pipe,
    info,
    judge,
    cfg: GeneralisationConfig,
    defaults: Path,
    work: Path,
    out: Path,
    steps: int,
    guidance: float,
    full=None,
    log=print,
) -> dict:
    """The whole experiment; see the module docstring. Writes metrics.json / metrics.csv /
    table.md / report.html under ``out``; ``work`` keeps every intermediate for resuming.

    ``full``: the reference ``SaeBundle`` whose SAEs were trained on every concept (the bundled
    one was trained on exactly ``training_items(split, 4, half=False)`` with this recipe), or
    None for no reference."""
    from ..baselines.methods import prepare_removal
    from ..store import cache_activations
    from ..unlearning import SaeBundle

    t0 = time.time()
    split, concepts, table = prepare(info, cfg, defaults, work)
    if cfg.match_tokens and full is None:
        raise SaeuronError("matching tokens needs the reference SAE (drop --no-full-reference)")
    matched = reference_tokens(full) if cfg.match_tokens else None  # refused before any work
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / "split.json", split.as_dict())
    log(f"split (seed {split.seed}): SAE trained on {split.in_half}; never sees {split.out_half}")
    points = sorted({p for ps in info.points_of_kind.values() for p in ps})
    every_item = training_items(split, cfg.train_seeds_per_pair, half=False)
    t_cache = time.time()
    store_all = cache_activations(pipe, every_item, points, work / "store_full", steps, guidance, model_name=info.name)
    # the half SAE trained to the reference's tokens is another SAE: its own folders and image sets
    half = "half-matched" if cfg.match_tokens else "half"
    sae_dir, stats_dir = _train_and_score(
        pipe,
        info,
        half,
        training_items(split, cfg.train_seeds_per_pair),
        store_all,
        cfg,
        steps,
        guidance,
        work,
        log,
        tokens=matched,
    )
    build_seconds = time.time() - t_cache
    bundles = {"half": SaeBundle.load(info, sae_dir, stats_dir, defaults)}
    set_name = {"half": half, "full": "full"}
    if full is not None:
        bundles["full"] = full

    # One image set per (SAE, concept, base seed) on disk: a rerun with more seeds reuses the
    # finished ones, and every set is generated before any is summarised.
    sets = work / f"sets-{steps}-{guidance:g}"

    def image_set(key: str, seed: int, removal=None) -> ImageSet | None:
        return stored_protocol(pipe, judge, sets / key / f"{seed}.npz", seed, steps, guidance, removal)

    removals = {}
    for i, seed in enumerate(cfg.seeds):
        log(
            f"base seed {seed} ({i + 1}/{len(cfg.seeds)}): reference (no edit), "
            f"{len(mc.all_pairs()) + len(mc.OBJECTS)} prompts"
        )
        image_set("plain", seed)
        for name, bundle in bundles.items():
            for concept in concepts:
                if not (sets / f"{set_name[name]}-{concept}" / f"{seed}.npz").is_file():
                    if (name, concept) not in removals:
                        removals[name, concept] = prepare_removal(pipe, info, "saeuron", (concept,), bundle=bundle)
                    t1 = time.time()
                    if image_set(f"{set_name[name]}-{concept}", seed, removals[name, concept]) is not None:
                        log(f"  {name} SAE, {concept} removed: {time.time() - t1:.0f} s")
    keys = ["plain"] + [f"{set_name[name]}-{c}" for name in bundles for c in concepts]
    while any(image_set(k, s) is None for k in keys for s in cfg.seeds):
        time.sleep(10)  # another process is finishing a claimed set
    plain = ImageSet.concat([image_set("plain", s) for s in cfg.seeds])
    ref_feats = reference_features(judge, mc.all_pairs(), 2)
    styled = [r for r in plain.records if r.style is not None]
    reference = {
        "style_accuracy": accuracy(styled, "style"),
        "object_accuracy": accuracy(styled, "object"),
        "seconds_per_image": plain.seconds / len(plain.records),
        "judge_fd": frechet_distance(plain.features[_retained(plain.records, ())], ref_feats),
    }
    rows: dict[str, list[dict]] = {}
    for name, bundle in bundles.items():
        rows[name] = []
        for concept in concepts:
            edited = ImageSet.concat([image_set(f"{set_name[name]}-{concept}", s) for s in cfg.seeds])
            row = concept_row((concept,), edited, plain, ref_feats)
            settings = {iv.point: iv.per_concept() for iv in bundle.unlearn([concept])}
            row.update(settings=settings, group=split.group_of(concept), kind=mc.concept_kind(concept))
            rows[name].append(row)
            log(
                f"{name} SAE removed {concept} ({GROUP_NAMES[row['group']]}): UA {row['UA']:.3f}, IRA "
                f"{row['IRA']:.3f}, CRA {row['CRA']:.3f}, kept on target {row['kept_on_target']:.3f}"
            )

    result = {
        "mode": "generalisation",
        "split": split.as_dict(),
        "config": {
            **asdict(cfg),
            "full_reference": [str(f) for f in full.folders] if full is not None else None,
            "hook_points": {k: list(v) for k, v in info.points_of_kind.items()},
            "variant": next(iter(bundles.values())).variant(),
            "steps": steps,
            "guidance": guidance,
            "defaults": str(defaults),
        },
        "settings_note": (
            "every concept, in-half and out-of-half, is removed with its entry of the defaults table (latents per "
            "step and gamma, else the kind's tau / gamma), turned into a percentile for the SAE's width: the same "
            "selection procedure for both groups, tuned once on the sweep split with the bundled SAE of every "
            "concept, so neither group's settings were tuned on the SAE being tested"
        ),
        "statistics_note": (
            "the half SAE is trained on the half's prompts only; its statistics are computed over every concept's "
            "prompts, since selecting a concept's features needs that concept's mean activations"
        ),
        "seed_derivation": "each prompt p gets seed dataset.prompt_seeds(seeds, p); the same for both SAEs (paired)",
        "training_items": {"half": len(training_items(split, cfg.train_seeds_per_pair)), "full": len(every_item)},
        "reference": reference,
        "rows": rows,
        "summary": {name: summarize_groups(r) for name, r in rows.items()},
        "comparisons": compare_groups(rows),
        "paper": PAPER_TABLE3,
        "build_seconds": round(build_seconds, 1),
        "wall_seconds": round(time.time() - t0, 1),
    }
    write_reports(result, out)
    return result
