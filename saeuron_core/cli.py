"""The `saeuron` command line. Every subcommand prints bad input as one line and exits 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path


def _threads(n: int | None) -> None:
    # Oversubscription is measured to cost 25x here: pick the thread count on purpose.
    import torch

    torch.set_num_threads(n or max(1, min(4, os.cpu_count() or 1)))


# --------------------------------------------------------------------------- shared options
# Each option group is declared once here and added to the commands that take it.


def add_model_options(p: argparse.ArgumentParser, steps_flag: str = "--steps") -> None:
    """--model, where and in what precision it runs, the image size, the denoising steps and
    the guidance scale (each defaults to the model's own)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="minicanvas", help="'minicanvas' (bundled), a diffusers pipeline folder or a hub id")
    g.add_argument("--device", default="auto", help="auto (CUDA when present, else MPS, else CPU), cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default="auto", help="auto (float16 on CUDA, float32 elsewhere), float32, float16 or bfloat16; SAEs always compute in float32")
    g.add_argument("--height", type=int, default=None, help="image height in pixels, a multiple of the model's downsampling factor (default: the model's)")
    g.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")
    g.add_argument(steps_flag, dest="gen_steps", type=int, default=None, help="denoising steps (default: the model's, 20 for minicanvas)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)")


def add_bundle_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Where SAeUron's SAEs, statistics and (optionally) tau / gamma table come from."""
    g = p.add_argument_group("SAeUron")
    g.add_argument("--sae", default=None, help="folder with one SAE subfolder per hook point (<point> or unet.<point>), or a hub id org/name[/subfolder] (default: bundled assets/sae)")
    g.add_argument("--stats", default=None, help="statistics folder, one subfolder per hook point (default: bundled assets/stats)")
    if defaults:
        g.add_argument("--defaults", default=None, help="tau/gamma table written by `saeuron tune` (default: the bundled table, for the bundled model only)")
        g.add_argument("--preset", default=None, choices=["paper"], help="paper: the paper's settings (styles 99.999 / -1, objects from its Table 4 where names match)")


def add_sae_training_options(p: argparse.ArgumentParser) -> None:
    """SAE shape and training schedule (each default lives in SaeConfig / TrainConfig)."""
    g = p.add_argument_group("SAE training")
    g.add_argument("--expansion-factor", type=int, default=None, help="num_latents = expansion factor * channels (default: SaeConfig.expansion_factor, 16 as the paper)")
    g.add_argument("--num-latents", type=int, default=None, help="dictionary size, instead of --expansion-factor")
    g.add_argument("--k", type=int, default=None, help="active latents per token (default: SaeConfig.k, 32 as the paper)")
    g.add_argument("--dead-feature-threshold", type=int, default=None, help="tokens without firing before a latent is dead (default: SaeConfig.dead_feature_threshold)")
    g.add_argument("--batch-size", type=int, default=None, help="tokens per step (default: TrainConfig.batch_size)")
    g.add_argument("--epochs", type=int, default=None, help="passes over the store (default: TrainConfig.epochs)")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: scaled with the dictionary size, as sparsify)")
    g.add_argument("--seed", type=int, default=None, help="initialisation and shuffling seed (default: TrainConfig.seed)")


def train_config(args):
    """The TrainConfig (holding its SaeConfig) that the SAE-training flags ask for; unset flags keep the dataclasses' defaults."""
    from .sae import SaeConfig
    from .sae_train import TrainConfig

    if args.expansion_factor is not None and args.num_latents is not None:
        raise_error("give --expansion-factor or --num-latents, not both")
    sae = {k: getattr(args, k) for k in ("expansion_factor", "num_latents", "k", "dead_feature_threshold") if getattr(args, k) is not None}
    train = {k: getattr(args, k) for k in ("batch_size", "epochs", "lr", "seed") if getattr(args, k) is not None}
    return TrainConfig(sae=SaeConfig(**sae), **train)


def add_judge_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--judge", default=None, help="judge folder (default: bundled assets/judge; prepare: no tuning without one)")


def add_cache_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("weight-edit cache")
    g.add_argument("--cache", default=None, help="folder for ESD / UCE weight edits (default $SAEURON_CACHE or ~/.cache/saeuron/erasures)")
    g.add_argument("--no-cache", action="store_true", help="compute every weight edit afresh and keep none")


def add_esd_options(p: argparse.ArgumentParser, batch_size: bool = False) -> None:
    g = p.add_argument_group("ESD")
    g.add_argument("--esd-iterations", type=int, default=None, help="ESD fine-tuning iterations (default 150)")
    g.add_argument("--esd-lr", type=float, default=None, help="ESD Adam learning rate")
    if batch_size:
        g.add_argument("--esd-batch-size", type=int, default=None)


def add_output_options(p: argparse.ArgumentParser, required: bool = True, help: str = "output folder", overwrite: bool = True) -> None:
    p.add_argument("--out", required=required, default=None, help=help)
    if overwrite:
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")


@dataclass
class Opened:
    """A command's model, resolved once: the pipeline, what the project knows of it, and the
    steps / guidance the command runs at (the command's flags, else the model's defaults)."""

    pipe: object
    info: object
    steps: int
    guidance: float

    @property
    def height(self) -> int:
        from .pipeline import image_size

        return image_size(self.pipe)[0]

    @property
    def width(self) -> int:
        from .pipeline import image_size

        return image_size(self.pipe)[1]

    def describe(self) -> str:
        """Device, precision and size, for a command's output."""
        from .device import dtype_name

        return f"{self.pipe.device} {dtype_name(self.pipe.unet.dtype)}, {self.height}x{self.width} px"


def open_model(args, need_vocabulary: str | None = None) -> Opened:
    """Load ``args.model`` on --device in --dtype at --height x --width and resolve steps /
    guidance; ``need_vocabulary`` names what needs a benchmark vocabulary (refused on models
    without one). Device and dtype are checked before the weights are read."""
    from .device import resolve_device, resolve_dtype
    from .pipeline import load_pipeline, model_info

    device = resolve_device(getattr(args, "device", "cpu"))
    dtype = resolve_dtype(getattr(args, "dtype", "float32"), device)
    pipe = load_pipeline(args.model, device, dtype, getattr(args, "height", None), getattr(args, "width", None))
    info = model_info(pipe, args.model)
    if need_vocabulary and not info.objects:
        raise_error(f"{args.model} has no benchmark vocabulary; {need_vocabulary} runs on MiniCanvas-style models")
    steps = args.gen_steps if args.gen_steps is not None else info.default_steps
    guidance = args.guidance if args.guidance is not None else info.default_guidance
    return Opened(pipe, info, steps, guidance)


def open_bundle(args, info, pipe=None):
    """SAEs, statistics and tau/gamma table of the command; with ``pipe``, SAEs sit on its device
    and each SAE's width is checked against its block before anything is generated."""
    from .unlearning import SaeBundle

    device = pipe.device if pipe is not None else "cpu"
    bundle = SaeBundle.load(info, args.sae, args.stats, getattr(args, "defaults", None), device=device, preset=getattr(args, "preset", None))
    if pipe is not None:
        bundle.check_fits(pipe.unet)
    return bundle


def open_judge(args):
    from .minicanvas.judge import Judge
    from .paths import ASSETS

    return Judge.load(args.judge or ASSETS / "judge")


def check_output_folder(args) -> Path:
    """The output folder; refused before any work if it holds something and --overwrite is off."""
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise_error(f"{out} exists; pass --overwrite to replace it")
    return out


# --------------------------------------------------------------------------- commands
def cmd_build_model(args) -> int:
    from .paths import ASSETS
    from .minicanvas.build import BuildConfig, build_model

    overrides = json.loads(args.config) if args.config else {}
    if args.unet_minutes is not None:
        overrides["unet_minutes"] = args.unet_minutes
    cfg = BuildConfig(**overrides)
    out = Path(args.out) if args.out else ASSETS / "minicanvas"
    judge_out = Path(args.judge_out) if args.judge_out else ASSETS / "judge"
    report = build_model(cfg, Path(args.work), out, judge_out)
    print(json.dumps(report, indent=2))
    return 0


def cmd_generate(args) -> int:
    from . import minicanvas as mc
    from .edits import WeightEdit, applied
    from .pipeline import generate, image_grid, save_image

    if args.out is None:
        raise_error("--out is required (an image path such as img.png)")
    prompts = list(args.prompt or [])
    if args.object or args.style:
        objects = args.object or [None]
        styles = args.style or [None]
        if objects == [None]:
            raise_error("--style needs --object (prompts read 'An image of {object} in {style} style.')")
        prompts += [mc.prompt(o, s) for o in objects for s in styles]
    if not prompts:
        raise_error("give --prompt TEXT or --object NAME [--style NAME]")
    if any(not p.strip() for p in prompts):
        raise_error("empty prompt")
    edit = WeightEdit.load(args.erasure) if args.erasure else None
    m = open_model(args)
    seeds = args.seed or [0]
    with applied(m.pipe.unet, edit):
        images = generate(m.pipe, prompts, seeds, m.steps, m.guidance)
    image = images[0] if len(images) == 1 else image_grid(images, len(prompts), len(seeds))
    save_image(image, Path(args.out))
    erased = f", {edit.method} erasure of {'+'.join(edit.concepts)}" if edit else ""
    print(f"wrote {args.out} ({len(prompts)} prompt(s) x {len(seeds)} seed(s), {m.steps} steps, guidance {m.guidance}, {m.describe()}{erased})")
    return 0


def cmd_cache(args) -> int:
    from . import distributed as dist

    with dist.session():
        return _cache(args)


def _cache(args) -> int:
    from . import distributed as dist
    from .minicanvas import prompt_items
    from .store import cache_activations, read_prompt_file

    items = read_prompt_file(args.prompts) if args.prompts else None
    m = open_model(args)
    if items is None:
        if not m.info.objects:
            raise_error(f"{args.model} has no built-in prompt set; pass --prompts FILE (.txt or .csv)")
        items = prompt_items(args.seeds_per_pair, split="train")
    points = args.point or sorted(set(m.info.hook_points.values()))
    store = cache_activations(m.pipe, items, points, args.out, m.steps, m.guidance, items_per_shard=args.items_per_shard, model_name=args.model)
    if dist.is_main():
        ranks = f" ({dist.world()} ranks)" if dist.world() > 1 else ""
        print(f"store {args.out}: {len(store.items)} images x {m.steps} steps at {', '.join(points)} ({m.describe()}); {len(store.completed)}/{store.n_shards} shards{ranks}")
    return 0


def cmd_train_sae(args) -> int:
    from . import distributed as dist

    with dist.session():
        return _train_sae(args)


def _train_sae(args) -> int:
    from . import distributed as dist
    from .sae_train import train_sae

    cfg = train_config(args)
    store = open_store(args.store)
    points = args.point or store.points
    for point in points:  # every point checked on every rank before any work
        store._check_point(point)
    if args.by_point:
        # hook points on different ranks, each SAE trained by one process (sparsify's --distribute_modules)
        mine = [points[i] for i in dist.split(len(points))]
        if not mine:
            print(f"train-sae: rank {dist.rank()} of {dist.world()} has no hook point ({len(points)} points); it idles")
    else:
        mine = points
    for point in mine:
        metrics = train_sae(store, point, cfg, args.out, data_parallel=not args.by_point)
        if args.by_point or dist.is_main():
            print(f"{point}: " + json.dumps(metrics))
    dist.barrier()
    return 0


def cmd_stats(args) -> int:
    from . import distributed as dist

    with dist.session():
        return _stats(args)


def _stats(args) -> int:
    from . import distributed as dist
    from .sae import TopKSae
    from .hooks import normalize_point
    from .hub import point_folder, resolve_sae_dir
    from .stats import add_thumbnails, compute_stats

    if args.top_m < 1 or args.thumbnail_size < 8:
        raise_error(f"--top-m must be >= 1 and --thumbnail-size >= 8, got {args.top_m} and {args.thumbnail_size}")
    store = open_store(args.store)
    points = [normalize_point(p) for p in args.point] if args.point else store.points
    sae_root = resolve_sae_dir(args.sae, points)
    saes = {}
    for point in points:  # every SAE before any work
        folder = point_folder(sae_root, point)
        if folder is None:
            raise_error(f"no SAE for hook point {point} in {sae_root} (looked for {point}/ and unet.{point}/)")
        saes[point] = TopKSae.load(folder)
        if dist.is_main():
            print(f"{point}: SAE of {saes[point].num_latents} latents, {saes[point].cfg.inference_topk()}")
    model = None
    if not args.no_thumbnails:
        from .pipeline import load_pipeline, resolve_spec

        model = args.model or store.meta.get("model")
        if not model:
            raise_error(f"the store at {args.store} does not name its model; pass --model, or --no-thumbnails")
        resolve_spec(model)  # a wrong model fails here; it is loaded only after the statistics (peak memory)
    all_stats = {point: compute_stats(store, point, sae, top_m=args.top_m, distinct=args.distinct) for point, sae in saes.items()}
    del saes
    if model is not None:
        pipe = load_pipeline(model)
        count = add_thumbnails(pipe, store, list(all_stats.values()), max_side=args.thumbnail_size)
        if dist.is_main():
            print(f"thumbnails: generated {count} images once ({args.thumbnail_size} px max)")
    if dist.is_main():  # every rank holds the merged statistics; one writes them
        for point, stats in all_stats.items():
            out = Path(args.out) / point
            stats.save(out)
            size = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
            unlabelled = "" if stats.concepts else " (the prompts carry no concept labels: frequencies and top examples only)"
            print(f"{point}: statistics of {stats.n_latents} latents over {len(stats.concepts)} concepts{unlabelled}, {stats.top_m} examples per feature ({size:.1f} MB) -> {out}")
    dist.barrier()
    return 0


def cmd_unlearn(args) -> int:
    from . import minicanvas as mc
    from .pipeline import image_grid, save_image
    from .unlearning import generate_with

    if args.out is None:
        raise_error("--out is required (an image path such as pair.png)")
    if (args.tau is None) != (args.gamma is None):
        raise_error("give both --tau and --gamma, or neither (then --defaults, --preset or, for the bundled model, its table applies)")
    if args.prompt and any(not p.strip() for p in args.prompt):
        raise_error("empty prompt")
    m = open_model(args)
    bundle = open_bundle(args, m.info, m.pipe)
    interventions = bundle.unlearn(args.concept, args.tau, args.gamma)
    print(f"removal variant: {'paper (--tau/--gamma)' if args.tau is not None else bundle.variant()}")
    for point in dict.fromkeys(iv.point for iv in interventions):
        sae = bundle.saes[point]
        print(f"{point}: SAE of {sae.num_latents} latents, {sae.cfg.inference_topk()}")
    for concept in dict.fromkeys(args.concept):
        source = "--tau/--gamma" if args.tau is not None else bundle.params_source(concept)
        print(f"{concept}: tau/gamma from {source}")
    prompts = list(args.prompt or [])
    if not prompts:
        if not m.info.objects:
            raise_error("give --prompt TEXT")
        # default: the removed concepts in a few contexts
        for c in args.concept:
            if c in mc.STYLES:
                prompts += [mc.prompt(o, c) for o in mc.OBJECTS[:3]]
            else:
                prompts += [mc.prompt(c, s) for s in mc.STYLES[:3]]
    seeds = args.seed or [0]
    before = generate_with(m.pipe, bundle, [], prompts, seeds, m.steps, m.guidance)
    after = generate_with(m.pipe, bundle, interventions, prompts, seeds, m.steps, m.guidance)
    # rows: prompts; columns: (before, after) for each seed
    cells = [im for i in range(len(before)) for im in (before[i], after[i])]
    save_image(image_grid(cells, len(prompts), 2 * len(seeds)), args.out)
    print(f"wrote {args.out} ({m.describe()}): rows = prompts, columns = before/after per seed; " + "; ".join(f"{iv.point}: {iv.per_concept()}" for iv in interventions))
    return 0


def cmd_prepare(args) -> int:
    from .hooks import normalize_point
    from .prepare import RunSpec, prepare, route_kinds
    from .store import read_prompt_file

    items = read_prompt_file(args.concepts)  # a bad concepts file fails before the model loads
    kind_points = {}
    for entry in args.kind_point or []:
        kind, sep, point = entry.partition("=")
        if not sep or not kind.strip() or not point.strip():
            raise_error(f"--kind-point takes KIND=POINT, got {entry!r}")
        kind_points[kind.strip()] = point.strip()
    train = train_config(args)
    m = open_model(args)
    defaults = {kind: normalize_point(p) for kind, p in m.info.hook_points.items()}
    if args.point:
        points = [normalize_point(p) for p in args.point]
        defaults = {kind: p for kind, p in defaults.items() if p in points} or {"features": points[0]}
        extra = [p for p in points if p not in defaults.values()]
        defaults.update({f"point{i}": p for i, p in enumerate(extra)})
    routing, notes = route_kinds(items, defaults, kind_points)
    for note in notes:
        print(note)
    given = args.sae
    if given is not None and Path(given).expanduser().exists():
        given = str(Path(given).expanduser().resolve())
    kinds = {}
    for it in items:
        for kind, name in it.labels.items():
            kinds.setdefault(kind, [])
            if name not in kinds[kind]:
                kinds[kind].append(name)
    model = str(Path(args.model).resolve()) if Path(args.model).expanduser().is_dir() else args.model
    spec = RunSpec(model=model, hook_points=routing, height=m.height, width=m.width, steps=m.steps, guidance=m.guidance, sae=given or "sae", concept_kinds=kinds, n_prompts=len(items))
    tune = _prepare_tuner(args, m) if args.judge else None
    print(f"prepare {args.out}: {args.model} on {m.describe()}, {m.steps} steps, guidance {m.guidance}; {len(items)} prompts, "
          + (", ".join(f"{len(v)} {k} concept(s)" for k, v in kinds.items()) or "no concept labels (statistics will have frequencies only)"))
    prepare(m.pipe, spec, items, args.out, train_config=train, given_sae=given, top_m=args.top_m, items_per_shard=args.items_per_shard, tune=tune)
    return 0


def _prepare_tuner(args, m):
    """The tuning stage of prepare: the MiniCanvas sweep with the judge (benchmark models only)."""
    from . import minicanvas as mc
    from .minicanvas.tuning import PAPER_GAMMAS, defaults_table, sweep_concept

    if not m.info.objects:
        raise_error(f"tuning with a judge needs a model with a benchmark vocabulary (MiniCanvas-style); {args.model} has none: leave out --judge and pass --tau/--gamma or --preset paper later")
    judge = open_judge(args)
    seeds = mc.split_seeds("sweep", 1)

    def tune(pipe, bundle):
        style_rows, object_rows = [], []
        for concept in [*mc.STYLES, *mc.OBJECTS]:
            rows = sweep_concept(pipe, bundle, judge, concept, (1, 2, 3), tuple(PAPER_GAMMAS), seeds, m.steps, m.guidance)
            (style_rows if mc.concept_kind(concept) == "style" else object_rows).extend(rows)
        return defaults_table(style_rows, object_rows, "shared")

    return tune


def cmd_tune(args) -> int:
    from . import minicanvas as mc
    from .io import write_json
    from .minicanvas.tuning import CRITERIA, PAPER_GAMMAS, check_criterion, criterion_score, defaults_table, sweep_concept
    from .scoring import check_score
    from .unlearning import SaeBundle

    if args.domain not in ("style", "object", "both"):
        raise_error(f"unknown domain {args.domain!r}; use style, object or both")
    check_criterion(args.criterion)
    check_score(args.score)
    if args.seeds < 1:
        raise_error(f"--seeds must be >= 1, got {args.seeds}")
    if args.from_report:
        # Rebuild the table from saved sweep rows (e.g. styles and objects swept in parallel).
        rows = [r for path in args.from_report for r in _read_rows(path)]
        missing = [r.get("concept") for r in rows if not {"UA", "IRA", "CRA"} <= set(r)]
        if missing:
            raise_error(f"sweep rows without UA / IRA / CRA (concepts {', '.join(map(str, sorted(set(missing))))}); rerun the sweep")
        table = defaults_table([r for r in rows if r["kind"] == "style"], [r for r in rows if r["kind"] == "object"], args.style_settings, args.criterion)
        table["reports"] = list(args.from_report)
        write_json(args.out, table)
        print(f"wrote {args.out} from {len(rows)} sweep rows")
        return 0
    m = open_model(args, need_vocabulary="tuning (with a judge)")
    bundle = SaeBundle.load(m.info, args.sae, args.stats, defaults=None, device=m.pipe.device)
    bundle.check_fits(m.pipe.unet)
    judge = open_judge(args)
    seeds = mc.split_seeds("sweep", args.seeds)
    gammas = tuple(args.gamma or PAPER_GAMMAS)
    counts = tuple(args.count or (1, 2, 3))
    wanted = args.concept or ([*mc.STYLES] if args.domain in ("style", "both") else []) + ([*mc.OBJECTS] if args.domain in ("object", "both") else [])
    style_rows, object_rows = [], []
    for concept in wanted:
        rows = sweep_concept(m.pipe, bundle, judge, concept, counts, gammas, seeds, m.steps, m.guidance, score=args.score)
        (style_rows if mc.concept_kind(concept) == "style" else object_rows).extend(rows)
        best = max(rows, key=lambda r: criterion_score(r, args.criterion))
        print(f"{concept}: best {CRITERIA[args.criterion]} = {criterion_score(best, args.criterion):.3f} at {best['count']} latents/step, gamma {best['gamma']} (UA {best['UA']:.2f}, IRA {best['IRA']:.2f}, CRA {best['CRA']:.2f})", flush=True)
    table = defaults_table(style_rows, object_rows, args.style_settings, args.criterion)
    table.update(seeds=seeds, seed_derivation="each pair its own seeds: dataset.prompt_seeds(bases, prompt)", steps=m.steps, guidance=m.guidance, counts=counts, gammas=gammas)
    write_json(args.out, table)
    if args.report:
        write_json(args.report, {"rows": style_rows + object_rows})
    print(f"wrote {args.out}")
    return 0


def esd_config(args):
    """The ESD configuration from --esd-* flags (fewer iterations with --quick)."""
    from .baselines.erasure import EsdConfig

    overrides = {}
    for name in ("iterations", "lr", "batch_size"):
        value = getattr(args, f"esd_{name}", None)
        if value is not None:
            overrides[name] = value
    if getattr(args, "quick", False) and "iterations" not in overrides:
        overrides["iterations"] = QUICK_ESD_ITERATIONS
    return EsdConfig(**overrides)


QUICK_ESD_ITERATIONS = 60
PUBLISHED_SEEDS = 6
"""Seeds per prompt of the published tables (``evaluate`` default)."""
QUICK_SEEDS = 1


def cache_dir(args) -> Path | None:
    """--cache, else the default erasure cache; None with --no-cache."""
    from .baselines.methods import default_cache_dir

    return None if args.no_cache else Path(args.cache) if args.cache else default_cache_dir()


def cmd_evaluate(args) -> int:
    import shutil

    from . import minicanvas as mc
    from .baselines.methods import parse_methods
    from .minicanvas.benchmark import EvalPlan, default_concepts, run

    out = check_output_folder(args)
    if args.generalisation:
        return cmd_generalisation(args, out)
    for flag in ("split_seed", "sae_concept"):
        if getattr(args, flag) is not None:
            raise_error(f"--{flag.replace('_', '-')} belongs to --generalisation")
    if args.method and args.methods:
        raise_error("give --method or --methods, not both")
    methods = parse_methods(args.methods or args.method or "saeuron")
    if args.seeds is not None and args.seeds < 1:
        raise_error(f"--seeds must be >= 1, got {args.seeds}")
    n_seeds = args.seeds or (QUICK_SEEDS if args.quick else PUBLISHED_SEEDS)
    # base seeds: each prompt gets its own seed per base (dataset.prompt_seeds), the same for every method
    seeds = tuple(args.seed) if args.seed else tuple(mc.split_seeds("heldout", n_seeds))
    concepts = tuple(args.concept) if args.concept else default_concepts(args.domain or "style")
    multi = ()
    if args.multi:
        styles = mc.STYLES
        multi = tuple(tuple(styles[:n]) for n in (2, 3, 4)) + ((styles[0], mc.OBJECTS[0]),)
    if args.control:
        return _evaluate_control(args, out, concepts, seeds)
    attack_prompts = args.attack_prompts if args.attack_prompts is not None else (2 if args.quick else 6)
    esd = esd_config(args)
    m = open_model(args, need_vocabulary="evaluate")
    plan = EvalPlan(methods, args.domain or "style", concepts, seeds, m.steps, m.guidance, multi, attack_prompts, args.attack_steps)
    bundle = open_bundle(args, m.info, m.pipe) if set(methods) & {"saeuron", "saeuron-paper"} else None
    judge = open_judge(args)
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    work = Path(args.work) if args.work else out.with_name(out.name + ".work")
    result = run(m.pipe, m.info, bundle, judge, plan, out, cache=cache_dir(args), esd=esd, work=work, log=lambda msg: print(msg, flush=True))
    print((out / "table.md").read_text())
    print(f"wrote {out}/metrics.json, metrics.csv, table.md, report.html in {result['wall_seconds']} s (work folder {work})")
    return 0


def cmd_generalisation(args, out: Path) -> int:
    """`evaluate --generalisation`: an SAE trained on half of the concepts removes all of them."""
    import shutil

    from . import minicanvas as mc
    from .minicanvas.generalisation import GeneralisationConfig, check_split_seed, prepare, run
    from .paths import ASSETS
    from .unlearning import DEFAULTS_FILE

    for flag, given in (("--multi", args.multi or None), ("--attack-prompts", args.attack_prompts)):
        if given is not None:
            raise_error(f"{flag} does not apply to --generalisation (it runs single removals, no attack)")
    if args.no_full_reference and args.match_tokens:
        raise_error("--match-tokens matches the reference SAE's tokens; it needs the reference (drop --no-full-reference)")
    if args.no_full_reference and (args.sae or args.stats):
        raise_error("--sae / --stats name the full reference; drop them or --no-full-reference")
    if (args.methods or args.method or "saeuron") != "saeuron":
        raise_error("--generalisation evaluates SAeUron only (--method saeuron)")
    if args.seeds is not None and args.seeds < 1:
        raise_error(f"--seeds must be >= 1, got {args.seeds}")
    if args.train_seeds_per_pair < 1:
        raise_error(f"--train-seeds-per-pair must be >= 1, got {args.train_seeds_per_pair}")
    split_seed = check_split_seed(args.split_seed if args.split_seed is not None else 0)
    if args.domain is not None and args.domain not in ("style", "object", "both"):
        raise_error(f"unknown domain {args.domain!r}; use style, object or both")
    n_seeds = args.seeds or (QUICK_SEEDS if args.quick else PUBLISHED_SEEDS)
    seeds = tuple(args.seed) if args.seed else tuple(mc.split_seeds("heldout", n_seeds))
    settings = dict(split_seed=split_seed, sae_concepts=tuple(args.sae_concept or ()), seeds=seeds, concepts=tuple(args.concept or ()), train_seeds_per_pair=args.train_seeds_per_pair, batch_size=args.sae_batch_size, match_tokens=args.match_tokens)
    GeneralisationConfig(**settings)  # bad seeds or names refused before the model loads
    work = Path(args.work) if args.work else out.with_name(out.name + ".work")
    defaults = Path(args.defaults) if args.defaults else ASSETS / DEFAULTS_FILE
    m = open_model(args, need_vocabulary="--generalisation")
    if not args.concept:  # the model's own concepts of the domain (default: every kind)
        domain = args.domain or "both"
        settings["concepts"] = tuple(m.info.objects if domain in ("object", "both") else ()) + tuple(m.info.styles if domain in ("style", "both") else ())
    cfg = GeneralisationConfig(**settings)
    prepare(m.info, cfg, defaults, work)  # split, concepts, defaults and work folder refused before any work
    full = None if args.no_full_reference else open_bundle(args, m.info, m.pipe)
    judge = open_judge(args)
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    result = run(m.pipe, m.info, judge, cfg, defaults, work, out, m.steps, m.guidance, full=full, log=lambda msg: print(msg, flush=True))
    print((out / "table.md").read_text())
    print(f"wrote {out}/metrics.json, metrics.csv, table.md, report.html in {result['wall_seconds']} s (work folder {work})")
    return 0


def _evaluate_control(args, out: Path, concepts, seeds) -> int:
    import shutil
    import time

    from . import minicanvas as mc
    from .io import atomic_path, write_json
    from .minicanvas.control import DEFAULT_STRENGTHS, DEFAULT_TOPS, control_rows, markdown, summary

    for s in seeds:
        if mc.split_of(s) != "heldout":
            raise_error(f"seed {s} is in the {mc.split_of(s)!r} split; evaluation uses held-out seeds {mc.SPLITS['heldout']} only")
    for c in concepts:
        mc.concept_kind(c)
    tops = tuple(args.control_top or DEFAULT_TOPS)
    strengths = tuple(args.control_strength or DEFAULT_STRENGTHS)
    if any(n < 1 for n in tops):
        raise_error(f"--control-top counts must be >= 1, got {tops}")
    if any(x <= 0 for x in strengths):
        raise_error(f"steering strengths must be > 0, got {strengths}")
    m = open_model(args, need_vocabulary="evaluate --control")
    bundle = open_bundle(args, m.info, m.pipe)
    judge = open_judge(args)
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    t0 = time.time()
    rows = control_rows(m.pipe, bundle, judge, concepts, seeds, m.steps, m.guidance, tops, strengths, log=lambda msg: print(msg, flush=True))
    result = {"seeds": list(seeds), "steps": m.steps, "guidance": m.guidance, "tops": tops, "strengths": strengths, "rows": rows, "summary": summary(rows, top=max(tops)), "wall_seconds": round(time.time() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "control.json", result)
    with atomic_path(out / "control.md") as tmp:
        tmp.write_text(markdown(rows))
    print(markdown(rows))
    print(f"wrote {out}/control.json and control.md in {result['wall_seconds']} s")
    return 0


def cmd_erase(args) -> int:
    from tqdm import tqdm

    from .baselines.erasure import UceConfig
    from .baselines.methods import erase_to
    from .edits import META_FILE, WeightEdit
    from .training import StopRequest

    out = Path(args.out)
    if (out / META_FILE).is_file() and not args.overwrite:
        raise_error(f"{out} already holds an erasure; pass --overwrite to replace it")
    if args.method not in ("esd", "uce"):
        raise_error(f"unknown erasure method {args.method!r}; use esd or uce (SAeUron needs no erasure: see `saeuron unlearn`)")
    config = esd_config(args) if args.method == "esd" else UceConfig(**({"preserve_scale": args.preserve_scale} if args.preserve_scale is not None else {}))
    m = open_model(args)
    bar = tqdm(total=getattr(config, "iterations", 1), desc=f"{args.method} {'+'.join(args.concept)}", mininterval=2)

    def progress(i, n, loss):
        bar.n = i
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    with StopRequest() as stop:
        try:
            edit = erase_to(out, m.pipe, m.info, args.method, args.concept, config, progress=progress, should_stop=lambda: stop.requested)
        finally:
            bar.close()
    WeightEdit.load(out)  # what was written reads back
    print(f"wrote {out}: {args.method} erasure of {', '.join(edit.concepts)} ({len(edit.deltas)} tensors, {edit.storage_bytes / 2**20:.2f} MB) in {edit.setup_seconds:.1f} s")
    return 0


def cmd_attack(args) -> int:
    from dataclasses import asdict

    from . import minicanvas as mc
    from .baselines.attack import AttackConfig
    from .baselines.erasure import check_concepts
    from .baselines.methods import Removal, check_method, prepare_removal
    from .edits import WeightEdit
    from .io import write_json
    from .minicanvas.benchmark import attack_row
    from .pipeline import save_image

    method = check_method(args.method)
    cfg = AttackConfig(steps=args.steps, lr=args.lr, n_tokens=args.tokens)
    if args.prompts is not None and args.prompts < 1:
        raise_error(f"--prompts must be >= 1, got {args.prompts}")
    out = check_output_folder(args)
    seed = args.seed if args.seed is not None else mc.split_seeds("heldout", 1)[0]
    if mc.split_of(seed) != "heldout":
        raise_error(f"seed {seed} is in the {mc.split_of(seed)!r} split; attacks are reported on held-out seeds {mc.SPLITS['heldout']}")
    edit = WeightEdit.load(args.erasure) if args.erasure else None
    if edit is not None and edit.method != method:
        raise_error(f"{args.erasure} holds a {edit.method} erasure, not {method}")
    m = open_model(args, need_vocabulary="the attack (judged)")
    (concept,) = check_concepts(m.info, [args.concept])
    if edit is not None:
        if concept not in edit.concepts:
            raise_error(f"{args.erasure} erases {', '.join(edit.concepts)}, not {concept}")
        removal = Removal.from_edit(edit)
    else:
        bundle = open_bundle(args, m.info, m.pipe) if method in ("saeuron", "saeuron-paper") else None
        removal = prepare_removal(m.pipe, m.info, method, [concept], bundle=bundle, cache=cache_dir(args), log=print)
    judge = open_judge(args)
    n_prompts = args.prompts or len(m.info.objects if concept in m.info.styles else m.info.styles)
    row, strip = attack_row(m.pipe, judge, removal, concept, n_prompts, (seed,), m.steps, m.guidance, cfg)
    report = {"method": method, "concept": concept, "attack": asdict(cfg), **row}
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "attack.json", report)
    save_image(Image.fromarray(strip), out / "attack.png")
    print(f"{method} on {concept}: UA {row['UA_before']:.3f} before the attack, {row['UA_after']:.3f} after ({len(row['prompts'])} prompts, {cfg.steps} steps, {row['seconds']:.0f} s)")
    print(f"wrote {out}/attack.json and attack.png (rows: target, removed, removed + attack)")
    return 0


def cmd_locate(args) -> int:
    from .locate import SwapCase, check_blocks, locate, markdown_table, write_locate

    out = check_output_folder(args)
    if args.pairs < 1:
        raise_error(f"--pairs must be >= 1, got {args.pairs}")
    if args.seeds < 1:
        raise_error(f"--seeds must be >= 1, got {args.seeds}")
    kinds = tuple(args.kind or ("object", "style"))
    custom = []
    for spec in args.case or []:
        kind, sep, rest = spec.partition(":")
        right, sep2, wrong = rest.partition("|")
        if not (sep and sep2 and kind and right.strip() and wrong.strip()):
            raise_error(f"--case {spec!r}: write KIND:RIGHT PROMPT|SWAPPED PROMPT")
        custom += [SwapCase(kind, right.strip(), wrong.strip(), kind, seed) for seed in range(args.seeds)]
    m = open_model(args)
    blocks = check_blocks(m.pipe.unet, args.block)  # bad names refused before any generation
    shows = None
    if custom:
        cases = custom
    else:
        if not m.info.objects:
            raise_error(f"{args.model} has no benchmark vocabulary; pass --case KIND:RIGHT|SWAPPED (repeat)")
        from . import minicanvas as mc
        from .minicanvas.locating import judge_shows, swap_cases

        for k in kinds:
            if k not in ("object", "style"):
                raise_error(f"unknown kind {k!r}; MiniCanvas kinds: object, style")
        cases = swap_cases(kinds, args.pairs, mc.split_seeds("sweep", args.seeds))
        if not args.no_judge:
            shows = judge_shows(open_judge(args))
    result = locate(m.pipe, cases, m.steps, m.guidance, blocks, shows, batch_size=args.batch_size, log=lambda msg: print(msg, flush=True), on_kind=lambda partial: write_locate(partial, out))
    result["model"] = args.model
    write_locate(result, out)
    print(markdown_table(result))
    print(f"wrote {out}/locate.json, locate.md, heatmap.html in {result['seconds']} s")
    return 0


def _read_rows(path: str) -> list[dict]:
    try:
        return json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError) as e:
        raise_error(f"{path} is not a sweep report written by `saeuron tune --report` ({e})")


def open_store(path: str):
    """An activation store for training or statistics; one still being cached (or stopped part
    way) is refused before any work: an SAE or statistics from part of it would pass for the whole."""
    from .store import ActivationStore

    store = ActivationStore(path)
    if not store.is_complete:
        raise_error(f"the store {path} holds {len(store.completed)} of {store.n_shards} shards: finish caching (rerun the cache command) first")
    return store


def raise_error(message: str):
    from .errors import SaeuronError

    raise SaeuronError(message)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="saeuron", description=__doc__)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: min(4, cores))")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "build-model",
        help="train the bundled MiniCanvas model (judge, autoencoder, text encoder + U-Net) from scratch",
        description="Train the bundled MiniCanvas pipeline and judge. Resumable: run the same command again after an interruption.",
    )
    b.add_argument("--work", default="build/minicanvas", help="folder for data, checkpoints and stage markers (default: build/minicanvas)")
    b.add_argument("--out", default=None, help="pipeline folder to write (default: the bundled assets/minicanvas)")
    b.add_argument("--judge-out", default=None, help="judge folder to write (default: assets/judge)")
    b.add_argument("--unet-minutes", type=float, default=None, help="wall-clock budget of U-Net training in minutes (default 75)")
    b.add_argument("--config", default=None, help='JSON overrides of BuildConfig fields, e.g. \'{"unet_steps": 10}\'')
    b.set_defaults(func=cmd_build_model)

    g = sub.add_parser("generate", help="generate an image (or a grid: rows = prompts, columns = seeds)", description="Generate images with a Stable Diffusion pipeline. Several prompts or seeds make a grid.")
    add_model_options(g)
    g.add_argument("--prompt", action="append", help="prompt text; repeat for several rows")
    g.add_argument("--object", action="append", help="MiniCanvas object; builds 'An image of {object} in {style} style.'")
    g.add_argument("--style", action="append", help="MiniCanvas style (with --object); repeat for several")
    g.add_argument("--seed", action="append", type=int, help="generation seed; repeat for several columns (default 0)")
    g.add_argument("--erasure", default=None, help="generate with a weight edit from `saeuron erase` applied")
    add_output_options(g, required=False, help="output image path (.png, .jpg, .webp)", overwrite=False)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("cache", help="store block activations of a prompt set at every denoising step", description="Run the pipeline over a prompt set and write the conditional half of each hook point's output, per step, as sharded fp16 safetensors. Resumable.")
    add_model_options(c)
    c.add_argument("--prompts", default=None, help="a .txt (one prompt per line) or .csv (prompt[,seed][,labels...]); default: MiniCanvas prompts")
    c.add_argument("--seeds-per-pair", type=int, default=6, help="MiniCanvas: train-split seeds per prompt (default 6)")
    c.add_argument("--point", action="append", help="hook point (repeat); default: the model's default points")
    c.add_argument("--items-per-shard", type=int, default=16, help="images per shard (the resume granularity)")
    add_output_options(c, help="store folder", overwrite=False)
    c.set_defaults(func=cmd_cache)

    t = sub.add_parser("train-sae", help="train a TopK SAE per hook point of an activation store", description="Train TopK SAEs (sparsify layout: <out>/<point>/cfg.json + sae.safetensors) with periodic checkpoints; rerun to resume.")
    t.add_argument("--store", required=True)
    t.add_argument("--point", action="append", help="hook point (repeat); default: every point of the store")
    add_sae_training_options(t)
    t.add_argument("--by-point", action="store_true", help="under torchrun: train each hook point's SAE on one rank (round-robin) instead of every SAE data-parallel on all ranks")
    add_output_options(t, help="folder for one subfolder per hook point", overwrite=False)
    t.set_defaults(func=cmd_train_sae)

    st = sub.add_parser("stats", help="feature statistics (concept means per step, top patches, histograms)", description="Encode a store with its SAEs once and write compact feature statistics per hook point.")
    st.add_argument("--store", required=True)
    st.add_argument("--sae", required=True, help="folder with one SAE subfolder per hook point (<point> or unet.<point>), or a hub id org/name[/subfolder]")
    st.add_argument("--point", action="append")
    st.add_argument("--top-m", type=int, default=8, help="top examples kept per feature (diverse: see --distinct)")
    st.add_argument("--distinct", choices=("image", "prompt"), default="image", help="at most one example per image (prompt + seed) or per prompt")
    st.add_argument("--model", default=None, help="pipeline that renders the examples' thumbnails (default: the store's model)")
    st.add_argument("--thumbnail-size", type=int, default=128, help="longest side of the stored thumbnails in pixels")
    st.add_argument("--no-thumbnails", action="store_true", help="store no thumbnails (feature cards then show heatmaps on grey)")
    add_output_options(st, help="statistics folder", overwrite=False)
    st.set_defaults(func=cmd_stats)

    u = sub.add_parser("unlearn", help="generate before/after pairs with concepts removed (SAeUron)", description="Remove one or more concepts with SAeUron and write a grid: rows = prompts, columns = before/after per seed.")
    add_model_options(u)
    add_bundle_options(u)
    u.add_argument("--concept", action="append", required=True, help="concept to remove (repeat for several)")
    u.add_argument("--prompt", action="append", help="prompt (repeat); default: the concept in three contexts")
    u.add_argument("--seed", action="append", type=int)
    u.add_argument("--tau", type=float, default=None, help="selection percentile in (0, 100) (default: per-concept table)")
    u.add_argument("--gamma", type=float, default=None, help="negative multiplier (default: per-concept table)")
    add_output_options(u, required=False, help="output image path", overwrite=False)
    u.set_defaults(func=cmd_unlearn)

    pr = sub.add_parser(
        "prepare",
        help="one resumable command from a model and a concepts file to a folder the explorer opens",
        description="Cache activations of the concepts file's prompts, train one SAE per hook point (unless --sae gives them), compute feature statistics and, with --judge, tune tau/gamma; write a run folder for `saeuron-explorer --run DIR`. Rerun the same command to resume.",
    )
    add_model_options(pr)
    pr.add_argument("--concepts", required=True, help="prompts and concepts: .csv (prompt[,seed][,<kind>...]: each label column is a concept kind), .json / .yaml (rows), or .txt (one prompt per line, no concepts)")
    pr.add_argument("--sae", default=None, help="existing SAEs (folder or hub id org/name[/subfolder]) instead of training")
    pr.add_argument("--point", action="append", help="hook point (repeat); default: the model's object and style points")
    pr.add_argument("--kind-point", action="append", help="KIND=POINT: route a concept kind (label column) to a hook point (repeat)")
    add_sae_training_options(pr)
    pr.add_argument("--top-m", type=int, default=8, help="top-activating entries kept per feature and timestep bucket")
    pr.add_argument("--items-per-shard", type=int, default=16, help="images per activation shard (the resume granularity)")
    add_judge_option(pr)
    add_output_options(pr, help="run folder (rerun the same command to resume)", overwrite=False)
    pr.set_defaults(func=cmd_prepare)

    tu = sub.add_parser("tune", help="sweep tau/gamma per concept on the sweep split; write the defaults table", description="The paper's per-concept sweep, picking by (UA + IRA + CRA) / 3 (or the paper's (UA + IRA) / 2, --criterion paper) on seeds of the sweep split (never the evaluation seeds). Styles share one setting (or each its own, --style-settings per-concept); objects get one each.")
    add_model_options(tu)
    add_bundle_options(tu, defaults=False)
    add_judge_option(tu)
    tu.add_argument("--domain", default="both", help="style, object or both")
    tu.add_argument("--concept", action="append", help="only these concepts (repeat)")
    tu.add_argument("--seeds", type=int, default=4, help="sweep-split base seeds; each pair gets its own seed per base (default 4)")
    tu.add_argument("--criterion", default="all", help="how to pick a setting: all = (UA + IRA + CRA) / 3 (default), paper = (UA + IRA) / 2")
    tu.add_argument("--score", default="paper", help="concept score that selects latents: paper (default) or specific = the paper's times max(0, (m_c - m_o) / (m_c + m_o)); the table records it")
    tu.add_argument("--count", type=int, action="append", help="latents selected per step (repeat; default 1 2 3, the paper's tau grid)")
    tu.add_argument("--gamma", type=float, action="append", help="multipliers (repeat; default the paper's -1 ... -30)")
    tu.add_argument("--report", default=None, help="also write every grid row as JSON")
    tu.add_argument("--from-report", action="append", help="build the table from saved sweep reports instead of sweeping (repeat)")
    tu.add_argument("--style-settings", default="shared", help="shared: one setting for every style (the paper); per-concept: each style its own")
    add_output_options(tu, help="defaults table to write, e.g. assets/unlearn_defaults.json", overwrite=False)
    tu.set_defaults(func=cmd_tune)

    ev = sub.add_parser("evaluate", help="the MiniCanvas benchmark: SAeUron vs ESD / UCE / none on UA / IRA / CRA, fidelity, cost, attack", description="Generate the full protocol (every pair and unstyled prompt, held-out seeds) with each concept removed by each method, judge it, attack each removal, and write metrics.json, metrics.csv, table.md and report.html.")
    add_model_options(ev)
    add_bundle_options(ev)
    add_judge_option(ev)
    add_cache_options(ev)
    add_esd_options(ev)
    ev.add_argument("--methods", default=None, help="comma-separated: saeuron,saeuron-paper,esd,uce,none (default saeuron: the project's default SAE removal; saeuron-paper: the paper's exact method)")
    ev.add_argument("--method", default=None, help="one method (same as --methods with one name)")
    ev.add_argument("--domain", default=None, help="style, object or both (default style; with --generalisation: every concept)")
    ev.add_argument("--concept", action="append", help="only these concepts (repeat)")
    ev.add_argument("--seeds", type=int, default=None, help=f"held-out seeds per prompt, each prompt its own (default {PUBLISHED_SEEDS}, {QUICK_SEEDS} with --quick)")
    ev.add_argument("--seed", type=int, action="append", help="explicit held-out base seeds (repeat); each prompt derives its own seed from each base")
    ev.add_argument("--multi", action="store_true", help="also remove 2, 3, 4 styles at once and a style with an object")
    ev.add_argument("--quick", action="store_true", help=f"{QUICK_SEEDS} seed per prompt, 2 attacked prompts per concept, ESD {QUICK_ESD_ITERATIONS} iterations: for CI")
    ev.add_argument("--attack-prompts", type=int, default=None, help="prompts attacked per removed concept (default 6, 2 with --quick; 0: no attack)")
    ev.add_argument("--attack-steps", type=int, default=40, help="attack budget in Adam steps (default 40, as UnlearnDiffAtk)")
    ev.add_argument("--work", default=None, help="work folder of finished image sets and attacks (with --generalisation also stores, SAEs, statistics): rerun to resume, run the same command in a second process to share the work, add seeds to reuse the first ones (default <out>.work)")
    gen = ev.add_argument_group("generalisation (the paper's Table 3)")
    gen.add_argument("--generalisation", action="store_true", help="train an SAE on half of the concepts of each kind (and a reference SAE on all), remove every concept with each, report UA / IRA / CRA for concepts in and outside the SAE's half")
    gen.add_argument("--split-seed", default=None, help="integer seed that draws the halves (default 0; recorded)")
    gen.add_argument("--sae-concept", action="append", help="name the SAE's half instead of drawing it (repeat)")
    gen.add_argument("--train-seeds-per-pair", type=int, default=4, help="train-split seeds per cached prompt (default 4, as the bundled store)")
    gen.add_argument("--sae-batch-size", type=int, default=4096, help="tokens per SAE optimiser step (default 4096, as the bundled SAEs)")
    gen.add_argument("--match-tokens", action="store_true", help="train the half SAE on as many tokens as the reference SAE saw at each hook point (recorded in its folder), not 5 passes over its smaller store")
    gen.add_argument("--no-full-reference", action="store_true", help="skip the reference SAE trained on every concept (--sae / --stats, default the bundled one; halves the removals)")
    ev.add_argument("--control", action="store_true", help="feature control instead of the comparison: ablate each concept's top-ranked features (UA, CRA) and steer them into prompts without it (concept rate, retention); writes control.json / control.md")
    ev.add_argument("--control-top", type=int, action="append", help="top-n ranked features for --control (repeat; default 1 and 3)")
    ev.add_argument("--control-strength", type=float, action="append", help="steering strength in units of the feature's typical top activation (repeat; default 1 and 3)")
    add_output_options(ev, help="output folder for the reports")
    ev.set_defaults(func=cmd_evaluate)

    er = sub.add_parser("erase", help="erase concepts by editing U-Net weights (ESD-x fine-tuning or UCE closed form)", description="Write a weight edit (edit.safetensors + erasure.json: differences from the base model's cross-attention weights). ESD checkpoints to <out>.work and resumes when rerun; SIGTERM checkpoints and stops.")
    add_model_options(er)
    add_esd_options(er, batch_size=True)
    er.add_argument("--method", required=True, help="esd or uce")
    er.add_argument("--concept", action="append", required=True, help="concept to erase (repeat for several)")
    er.add_argument("--preserve-scale", type=float, default=None, help="UCE weight of the preserved concepts")
    add_output_options(er, help="folder to write")
    er.set_defaults(func=cmd_erase)

    lo = sub.add_parser("locate", help="where concepts enter the U-Net: text-swap patching of every cross-attention block", description="For each cross-attention block and concept kind: only this block sees the swapped concept word (is it necessary?) and only this block sees the right one (is it sufficient?). Judged on MiniCanvas models; on others (or with --no-judge) the image and block-output changes are reported. Writes locate.json, locate.md and a plotly heatmap.html.")
    add_model_options(lo)
    add_judge_option(lo)
    lo.add_argument("--block", action="append", help="cross-attention block to test (repeat; default: every one)")
    lo.add_argument("--kind", action="append", help="MiniCanvas concept kind: object, style (repeat; default both)")
    lo.add_argument("--pairs", type=int, default=16, help="MiniCanvas prompts per kind (default 16)")
    lo.add_argument("--seeds", type=int, default=2, help="seeds per prompt, sweep split (default 2)")
    lo.add_argument("--case", action="append", help="a prompt pair for any model: KIND:RIGHT PROMPT|SWAPPED PROMPT (repeat; judge-free)")
    lo.add_argument("--no-judge", action="store_true", help="report image / block-output change only")
    lo.add_argument("--batch-size", type=int, default=16)
    add_output_options(lo, help="output folder")
    lo.set_defaults(func=cmd_locate)

    at = sub.add_parser("attack", help="UnlearnDiffAtk-style soft-prompt attack on a concept removal", description="Optimise soft prompt tokens so that the edited model regenerates the un-edited model's image of the concept; report UA before and after.")
    # --steps is the attack budget here, so the denoising steps are --gen-steps
    add_model_options(at, steps_flag="--gen-steps")
    add_bundle_options(at)
    add_judge_option(at)
    add_cache_options(at)
    at.add_argument("--method", required=True, help="saeuron, esd, uce or none")
    at.add_argument("--concept", required=True)
    at.add_argument("--erasure", default=None, help="a folder from `saeuron erase` (esd / uce) instead of the cached default edit")
    at.add_argument("--prompts", type=int, default=None, help="how many of the concept's prompts to attack (default all)")
    at.add_argument("--steps", type=int, default=40, help="attack budget: Adam steps (default 40)")
    at.add_argument("--lr", type=float, default=0.01)
    at.add_argument("--tokens", type=int, default=5, help="soft tokens (default 5)")
    at.add_argument("--seed", type=int, default=None, help="held-out generation seed")
    add_output_options(at)
    at.set_defaults(func=cmd_attack)
    return p


def main(argv: list[str] | None = None) -> int:
    from .errors import SaeuronError

    parser = build_parser()
    args = parser.parse_args(argv)
    _threads(args.threads)
    try:
        return args.func(args)
    except SaeuronError as e:
        print(f"saeuron {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saeuron {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
