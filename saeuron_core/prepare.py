"""``saeuron prepare``: from a model and a concepts file to a run folder the explorer opens.

Stages, each resumable (run the same command again after an interruption; finished stages are
kept, the activation cache resumes at its first missing shard, SAE training at its last
checkpoint)::

    DIR/run.json        the plan (model, size, steps, guidance, hook point of each concept kind)
    DIR/store/          1. activations of every prompt at every hook point, every step
    DIR/sae/<point>/    2. one TopK SAE per hook point (skipped when --sae gives existing SAEs)
    DIR/stats/<point>/  3. feature statistics per hook point
    DIR/defaults.json   4. per-concept tau / gamma, only when a tuning step is given (a judge)

``saeuron-explorer --run DIR`` opens the folder: the same model, size, SAEs, statistics and
concept routing. Concept kinds are the label columns of the concepts file (any names); each
kind is routed to one hook point (``kind_points``), by default the model's point for "object"
and "style" and the first hook point for any other kind.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from .errors import SaeuronError
from .io import write_json
from .store import PromptItem

RUN_FILE = "run.json"
FORMAT = 1


@dataclass(frozen=True)
class RunSpec:
    """What a run folder holds (``run.json``); paths relative to the folder where inside it."""

    model: str
    """The model spec: 'minicanvas', an absolute pipeline folder or a hub id."""
    hook_points: dict
    """Hook point of each concept kind, e.g. {"object": "up_blocks.1.attentions.1", ...}."""
    height: int
    width: int
    steps: int
    guidance: float
    sae: str
    """SAE folder ("sae" inside the run) or the --sae given (a folder or a hub id)."""
    stats: str = "stats"
    defaults: str | None = None
    """tau / gamma table written by the tuning stage (None: untuned)."""
    concept_kinds: dict = field(default_factory=dict)
    """Concept names per kind, as read from the concepts file."""
    n_prompts: int = 0
    complete: bool = False
    """True once every stage finished."""
    format: int = FORMAT

    def resolved(self, folder: Path) -> "RunSpec":
        """Paths inside the run made absolute (an external --sae, e.g. a hub id, is kept)."""

        def inside(p):
            return str(folder / p) if p is not None and (folder / p).exists() else p

        return replace(self, sae=inside(self.sae), stats=inside(self.stats), defaults=inside(self.defaults))


def load_run(folder: str | Path) -> RunSpec:
    """The finished run in ``folder`` (paths resolved), or one clear error."""
    folder = Path(folder)
    path = folder / RUN_FILE
    if not path.is_file():
        raise SaeuronError(f"{folder} is not a prepared run (no {RUN_FILE}); create one with `saeuron prepare`")
    try:
        spec = RunSpec(**json.loads(path.read_text()))
    except (TypeError, ValueError) as e:
        raise SaeuronError(f"{path} is not a run file of this version ({e})") from None
    if not spec.complete:
        raise SaeuronError(
            f"the run in {folder} is not finished; run the same `saeuron prepare` command again to complete it"
        )
    return spec.resolved(folder)


def route_kinds(
    items: list[PromptItem], default_points: dict, kind_points: dict | None = None
) -> tuple[dict, list[str]]:
    """(hook point of each concept kind, notes). Kinds of the model's defaults go to their point,
    ``kind_points`` overrides, other kinds go to the first default point (noted)."""
    from .hooks import normalize_point

    kinds = list(dict.fromkeys(k for it in items for k in it.labels))
    explicit = {k: normalize_point(p) for k, p in (kind_points or {}).items()}
    unknown = sorted(set(explicit) - set(kinds) - set(default_points))
    if unknown:
        raise SaeuronError(
            f"--kind-point names kind(s) {', '.join(unknown)} that no label column of the concepts file has "
            f"({', '.join(kinds) or 'no labels'})"
        )
    first = next(iter(default_points.values()))
    routing = {k: normalize_point(p) for k, p in default_points.items()}
    routing.update(explicit)
    notes = []
    for kind in kinds:
        if kind not in routing:
            routing[kind] = first
            notes.append(
                f"concept kind {kind!r} has no hook point of its own; using {first} (choose with --kind-point "
                f"{kind}=POINT)"
            )
    return routing, notes


def _same_plan(old: dict, new: dict) -> bool:
    keys = ("model", "hook_points", "height", "width", "steps", "guidance", "sae", "concept_kinds", "n_prompts")
    return all(old.get(k) == new.get(k) for k in keys)


def prepare(
    pipe,
    spec: RunSpec,
    items: list[PromptItem],
    out: str | Path,
    train_config=None,
    given_sae: str | None = None,
    top_m: int = 8,
    items_per_shard: int = 16,
    tune: Callable | None = None,
    log: Callable[[str], None] = print,
    sae_device: str | None = None,
) -> RunSpec:
    """Run (or resume) every stage for ``spec`` into ``out``; returns the finished spec.

    ``given_sae``: existing SAEs (folder or hub id, also recorded as ``spec.sae``) instead of
    training; each is checked against its block's channels before anything is generated.
    ``tune(pipe, bundle) -> table``: the optional tuning stage, whose table is written to
    ``defaults.json``. ``sae_device``: where the training and statistics stages run (auto, cpu,
    cuda, cuda:N, mps); None: ``train_config.device`` where that names a device, else (auto, or no
    config) the model's device. It is checked before anything is generated.
    """
    from .device import process_device
    from .hooks import block_channels
    from .hub import point_folder, resolve_sae_dir
    from .sae import TopKSae
    from .sae_train import METRICS_FILE, train_dir
    from .stats import FeatureStats, add_thumbnails, compute_stats
    from .store import cache_activations

    out = Path(out)
    if sae_device is None:  # an explicit training device wins; auto follows the model
        wanted = getattr(train_config, "device", "auto")
        sae_device = pipe.device if str(wanted).strip().lower() == "auto" else wanted
    sae_device = str(process_device(sae_device))
    points = list(dict.fromkeys(spec.hook_points.values()))
    # fail fast: hook points exist and given SAEs fit their blocks, before any generation
    channels = {p: block_channels(pipe.unet, p) for p in points}
    sae_root = None
    if given_sae is not None:
        sae_root = resolve_sae_dir(given_sae, points)
        for p in points:
            sae = TopKSae.load(point_folder(sae_root, p))
            if channels[p] is not None and sae.d_in != channels[p]:
                raise SaeuronError(
                    f"the SAE for {p} in {given_sae} has d_in={sae.d_in}, but that block outputs {channels[p]} channels"
                )
            log(f"{p}: given SAE of {sae.num_latents} latents, {sae.cfg.inference_topk()}")
    run_file = out / RUN_FILE
    plan = asdict(spec)
    if run_file.is_file():
        old = json.loads(run_file.read_text())
        if not _same_plan(old, plan):
            raise SaeuronError(
                f"{out} holds a run with a different plan (model, concepts, size, steps, guidance, hook points or "
                "SAEs); use another --out"
            )
        log(f"resuming the run in {out}")
    plan["complete"] = False
    write_json(run_file, plan)

    log(
        f"[1/4] cache: {len(items)} prompts x {spec.steps} steps at {', '.join(points)} ({spec.height}x{spec.width} px)"
    )
    store = cache_activations(
        pipe,
        items,
        points,
        out / "store",
        spec.steps,
        spec.guidance,
        items_per_shard=items_per_shard,
        model_name=spec.model,
    )

    if sae_root is None:
        sae_root = out / "sae"
        log(f"[2/4] train: one SAE per hook point into {sae_root}")
        for p in points:
            if (train_dir(sae_root, p) / METRICS_FILE).is_file():  # written once training finished
                log(f"  {p}: trained already")
                continue
            metrics = _train(store, p, train_config, sae_root, log, sae_device)
            log(
                f"  {p}: FVU {metrics.get('fvu', float('nan')):.3f}, {metrics['num_latents']} latents, k {metrics['k']}"
            )
    else:
        log(f"[2/4] train: skipped, using the SAEs in {given_sae}")

    log(f"[3/4] stats: feature statistics into {out / 'stats'}")
    for p in points:
        target = out / "stats" / p
        sae = TopKSae.load(point_folder(sae_root, p))
        if (target / "stats.json").is_file() and FeatureStats.load(target).n_latents == sae.num_latents:
            log(f"  {p}: computed already")
            continue
        stats = compute_stats(store, p, sae, top_m=top_m, device=sae_device)
        # the feature cards show stored thumbnails: each example image is generated once, here
        count = add_thumbnails(pipe, store, [stats])
        stats.save(target)
        log(f"  {p}: {stats.n_latents} latents over {len(stats.concepts)} concepts, {count} example thumbnails")

    defaults = None
    if tune is not None:
        from .pipeline import ModelInfo
        from .unlearning import SaeBundle

        log("[4/4] tune: per-concept tau / gamma with the judge")
        info = ModelInfo(spec.model, spec.height, dict(spec.hook_points), spec.steps, spec.guidance)
        bundle = SaeBundle.load(info, sae_root, out / "stats", defaults=None, device=pipe.device)
        write_json(out / "defaults.json", tune(pipe, bundle))
        defaults = "defaults.json"
    else:
        log(
            "[4/4] tune: skipped (no judge given); the explorer and `saeuron unlearn` take --tau/--gamma or --preset "
            "paper"
        )

    finished = replace(spec, defaults=defaults, complete=True)
    write_json(run_file, asdict(finished))
    log(f"done: open it with `saeuron-explorer --run {out}`")
    return finished.resolved(out)


def _train(store, point: str, train_config, root: Path, log, device: str) -> dict:
    """Train one SAE; a batch larger than a sixteenth of the store shrinks (with a note) so a
    small store still gives enough optimiser steps."""
    from .sae_train import TrainConfig, train_sae

    cfg = replace(train_config or TrainConfig(), device=device)
    tokens = store.token_count(point)
    batch = max(1, min(cfg.batch_size, tokens // 16))
    if batch != cfg.batch_size:
        log(f"  {point}: the store holds {tokens} tokens; batch size {cfg.batch_size} -> {batch}")
        cfg = replace(cfg, batch_size=batch)
    return train_sae(store, point, cfg, root)
