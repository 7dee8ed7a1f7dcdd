"""The `saeuron` command line. Every subcommand prints bad input as one line and exits 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _threads(n: int | None) -> None:
    # Oversubscription is measured to cost 25x here: pick the thread count on purpose.
    import torch

    torch.set_num_threads(n or max(1, min(4, os.cpu_count() or 1)))


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
    from .pipeline import generate, image_grid, load_pipeline, model_info, save_image

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
    out = Path(args.out)
    pipe = load_pipeline(args.model)
    info = model_info(pipe, args.model)
    steps = args.steps if args.steps is not None else info.default_steps
    guidance = args.guidance if args.guidance is not None else info.default_guidance
    seeds = args.seed or [0]
    from .edits import WeightEdit, applied

    edit = WeightEdit.load(args.erasure) if args.erasure else None
    with applied(pipe.unet, edit):
        images = generate(pipe, prompts, seeds, steps, guidance)
    image = images[0] if len(images) == 1 else image_grid(images, len(prompts), len(seeds))
    save_image(image, out)
    print(f"wrote {out} ({len(prompts)} prompt(s) x {len(seeds)} seed(s), {steps} steps, guidance {guidance}" + (f", {edit.method} erasure of {'+'.join(edit.concepts)})" if edit else ")"))
    return 0


def cmd_cache(args) -> int:
    from .pipeline import load_pipeline, model_info
    from .minicanvas import prompt_items
    from .store import cache_activations, read_prompt_file

    pipe = load_pipeline(args.model)
    info = model_info(pipe, args.model)
    if args.prompts:
        items = read_prompt_file(args.prompts)
    elif info.objects:
        items = prompt_items(args.seeds_per_pair, split="train")
    else:
        raise_error(f"{args.model} has no built-in prompt set; pass --prompts FILE (.txt or .csv)")
    points = args.point or sorted(set(info.hook_points.values()))
    steps = args.steps or info.default_steps
    guidance = args.guidance if args.guidance is not None else info.default_guidance
    store = cache_activations(pipe, items, points, args.out, steps, guidance, items_per_shard=args.items_per_shard, model_name=args.model)
    print(f"store {args.out}: {len(store.items)} images x {steps} steps at {', '.join(points)}; {len(store.completed)}/{store.n_shards} shards")
    return 0


def cmd_train_sae(args) -> int:
    from .sae_train import TrainConfig, train_sae
    from .store import ActivationStore

    store = ActivationStore(args.store)
    cfg = TrainConfig(expansion_factor=args.expansion_factor, k=args.k, batch_size=args.batch_size, epochs=args.epochs, lr=args.lr, seed=args.seed)
    for point in args.point or store.points:
        metrics = train_sae(store, point, cfg, args.out)
        print(f"{point}: " + json.dumps(metrics))
    return 0


def cmd_stats(args) -> int:
    from .sae import TopKSae
    from .stats import add_thumbnails, compute_stats
    from .store import ActivationStore

    if args.top_m < 1 or args.thumbnail_size < 8:
        raise_error(f"--top-m must be >= 1 and --thumbnail-size >= 8, got {args.top_m} and {args.thumbnail_size}")
    store = ActivationStore(args.store)
    points = args.point or store.points
    saes = {point: TopKSae.load(Path(args.sae) / point) for point in points}  # every SAE before any work
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
        print(f"thumbnails: generated {count} images once ({args.thumbnail_size} px max)")
    for point, stats in all_stats.items():
        out = Path(args.out) / point
        stats.save(out)
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file()) / 1e6
        print(f"{point}: statistics of {stats.n_latents} latents over {len(stats.concepts)} concepts, {stats.top_m} examples per feature ({size:.1f} MB) -> {out}")
    return 0


def cmd_unlearn(args) -> int:
    from . import minicanvas as mc
    from .pipeline import image_grid, load_pipeline, model_info, save_image
    from .unlearning import SaeBundle, generate_with

    if args.out is None:
        raise_error("--out is required (an image path such as pair.png)")
    if (args.tau is None) != (args.gamma is None):
        raise_error("give both --tau and --gamma, or neither (then the bundled defaults apply)")
    pipe = load_pipeline(args.model)
    info = model_info(pipe, args.model)
    bundle = SaeBundle.load(info, args.sae, args.stats, args.defaults)
    interventions = bundle.unlearn(args.concept, args.tau, args.gamma)
    prompts = list(args.prompt or [])
    if not prompts:
        if not info.objects:
            raise_error("give --prompt TEXT")
        # default: the removed concepts in a few contexts
        for c in args.concept:
            if c in mc.STYLES:
                prompts += [mc.prompt(o, c) for o in mc.OBJECTS[:3]]
            else:
                prompts += [mc.prompt(c, s) for s in mc.STYLES[:3]]
    if any(not p.strip() for p in prompts):
        raise_error("empty prompt")
    steps = args.steps or info.default_steps
    guidance = args.guidance if args.guidance is not None else info.default_guidance
    seeds = args.seed or [0]
    before = generate_with(pipe, bundle, [], prompts, seeds, steps, guidance)
    after = generate_with(pipe, bundle, interventions, prompts, seeds, steps, guidance)
    # rows: prompts; columns: (before, after) for each seed
    cells = [im for i in range(len(before)) for im in (before[i], after[i])]
    grid = image_grid(cells, len(prompts), 2 * len(seeds))
    save_image(grid, args.out)
    print(f"wrote {args.out}: rows = prompts, columns = before/after per seed; " + "; ".join(f"{iv.point}: {iv.per_concept()}" for iv in interventions))
    return 0


def cmd_tune(args) -> int:
    from . import minicanvas as mc
    from .io import write_json
    from .minicanvas.judge import Judge
    from .paths import ASSETS
    from .pipeline import load_pipeline, model_info
    from .minicanvas.tuning import PAPER_GAMMAS, defaults_table, sweep_concept
    from .unlearning import SaeBundle

    if args.domain not in ("style", "object", "both"):
        raise_error(f"unknown domain {args.domain!r}; use style, object or both")
    if args.from_report:
        # Rebuild the table from saved sweep rows (e.g. styles and objects swept in parallel).
        rows = [r for path in args.from_report for r in _read_rows(path)]
        table = defaults_table([r for r in rows if r["kind"] == "style"], [r for r in rows if r["kind"] == "object"], args.style_settings)
        table["reports"] = list(args.from_report)
        write_json(args.out, table)
        print(f"wrote {args.out} from {len(rows)} sweep rows")
        return 0
    pipe = load_pipeline(args.model)
    info = model_info(pipe, args.model)
    if not info.objects:
        raise_error(f"{args.model} has no benchmark vocabulary; tuning needs MiniCanvas-style concepts and a judge")
    bundle = SaeBundle.load(info, args.sae, args.stats, defaults=None)
    judge = Judge.load(args.judge or ASSETS / "judge")
    steps = args.steps or info.default_steps
    guidance = args.guidance if args.guidance is not None else info.default_guidance
    seeds = mc.split_seeds("sweep", args.seeds)
    gammas = tuple(args.gamma or PAPER_GAMMAS)
    counts = tuple(args.count or (1, 2, 3))
    wanted = args.concept or ([*mc.STYLES] if args.domain in ("style", "both") else []) + ([*mc.OBJECTS] if args.domain in ("object", "both") else [])
    style_rows, object_rows = [], []
    for concept in wanted:
        rows = sweep_concept(pipe, bundle, judge, concept, counts, gammas, seeds, steps, guidance)
        (style_rows if mc.concept_kind(concept) == "style" else object_rows).extend(rows)
        best = max(rows, key=lambda r: r["score"])
        print(f"{concept}: best (UA+IRA)/2 = {best['score']:.3f} at {best['count']} latents/step, gamma {best['gamma']}")
    table = defaults_table(style_rows, object_rows, args.style_settings)
    table.update(seeds=seeds, steps=steps, guidance=guidance, counts=counts, gammas=gammas)
    write_json(args.out, table)
    if args.report:
        write_json(args.report, {"rows": style_rows + object_rows})
    print(f"wrote {args.out}")
    return 0


def _esd_config(args):
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


def _cache_dir(args) -> Path | None:
    """--cache, else the default erasure cache; None with --no-cache."""
    from .baselines.methods import default_cache_dir

    return None if args.no_cache else Path(args.cache) if args.cache else default_cache_dir()


def cmd_evaluate(args) -> int:
    import shutil

    from . import minicanvas as mc
    from .minicanvas.benchmark import EvalPlan, default_concepts, run
    from .minicanvas.judge import Judge
    from .baselines.methods import parse_methods
    from .paths import ASSETS
    from .pipeline import load_pipeline, model_info
    from .unlearning import SaeBundle

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise_error(f"{out} exists; pass --overwrite to replace its reports")
    if args.method and args.methods:
        raise_error("give --method or --methods, not both")
    methods = parse_methods(args.methods or args.method or "saeuron")
    n_seeds = args.seeds or (1 if args.quick else 3)
    seeds = tuple(args.seed) if args.seed else tuple(mc.split_seeds("heldout", n_seeds))
    concepts = tuple(args.concept) if args.concept else default_concepts(args.domain)
    multi = ()
    if args.multi:
        styles = mc.STYLES
        multi = tuple(tuple(styles[:n]) for n in (2, 3, 4)) + ((styles[0], mc.OBJECTS[0]),)
    attack_prompts = args.attack_prompts if args.attack_prompts is not None else (2 if args.quick else 6)
    esd = _esd_config(args)
    pipe = load_pipeline(args.model)
    info = model_info(pipe, args.model)
    if not info.objects:
        raise_error(f"{args.model} has no benchmark vocabulary; evaluate runs on MiniCanvas-style models")
    plan = EvalPlan(methods, args.domain, concepts, seeds, args.steps or info.default_steps, args.guidance if args.guidance is not None else info.default_guidance, multi, attack_prompts, args.attack_steps)
    bundle = SaeBundle.load(info, args.sae, args.stats, args.defaults) if "saeuron" in methods else None
    judge = Judge.load(args.judge or ASSETS / "judge")
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    result = run(pipe, info, bundle, judge, plan, out, cache=_cache_dir(args), esd=esd, log=lambda m: print(m, flush=True))
    print((out / "table.md").read_text())
    print(f"wrote {out}/metrics.json, metrics.csv, table.md, report.html in {result['wall_seconds']} s")
    return 0


def cmd_erase(args) -> int:
    from tqdm import tqdm

    from .baselines.erasure import UceConfig
    from .edits import WeightEdit
    from .baselines.methods import erase_to
    from .pipeline import load_pipeline, model_info
    from .minicanvas.build import _StopRequest

    from .edits import META_FILE

    out = Path(args.out)
    if (out / META_FILE).is_file() and not args.overwrite:
        raise_error(f"{out} already holds an erasure; pass --overwrite to replace it")
    if args.method not in ("esd", "uce"):
        raise_error(f"unknown erasure method {args.method!r}; use esd or uce (SAeUron needs no erasure: see `saeuron unlearn`)")
    pipe = load_pipeline(args.model)
    info = model_info(pipe, args.model)
    config = _esd_config(args) if args.method == "esd" else UceConfig(**({"preserve_scale": args.preserve_scale} if args.preserve_scale is not None else {}))
    bar = tqdm(total=getattr(config, "iterations", 1), desc=f"{args.method} {'+'.join(args.concept)}", mininterval=2)

    def progress(i, n, loss):
        bar.n = i
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    with _StopRequest() as stop:
        try:
            edit = erase_to(out, pipe, info, args.method, args.concept, config, progress=progress, should_stop=lambda: stop.requested)
        finally:
            bar.close()
    WeightEdit.load(out)  # what was written reads back
    print(f"wrote {out}: {args.method} erasure of {', '.join(edit.concepts)} ({len(edit.deltas)} tensors, {edit.storage_bytes / 2**20:.2f} MB) in {edit.setup_seconds:.1f} s")
    return 0


def cmd_attack(args) -> int:
    from dataclasses import asdict

    from . import minicanvas as mc
    from .baselines.attack import AttackConfig, run_attack
    from .minicanvas.benchmark import attack_prompt_pairs
    from .baselines.erasure import check_concepts
    from .edits import WeightEdit
    from .minicanvas.evaluation import shows_concept
    from .io import write_json
    from .minicanvas.judge import Judge
    from .baselines.methods import Removal, check_method, prepare_removal
    from .paths import ASSETS
    from .pipeline import image_grid, load_pipeline, model_info, save_image
    from .unlearning import SaeBundle

    method = check_method(args.method)
    cfg = AttackConfig(steps=args.steps, lr=args.lr, n_tokens=args.tokens)
    if args.prompts is not None and args.prompts < 1:
        raise_error(f"--prompts must be >= 1, got {args.prompts}")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise_error(f"{out} exists; pass --overwrite to replace it")
    pipe = load_pipeline(args.model)
    info = model_info(pipe, args.model)
    if not info.objects:
        raise_error(f"{args.model} has no benchmark vocabulary; the attack is judged on MiniCanvas-style models")
    (concept,) = check_concepts(info, [args.concept])
    seed = args.seed if args.seed is not None else mc.split_seeds("heldout", 1)[0]
    if mc.split_of(seed) != "heldout":
        raise_error(f"seed {seed} is in the {mc.split_of(seed)!r} split; attacks are reported on held-out seeds {mc.SPLITS['heldout']}")
    steps = args.gen_steps or info.default_steps
    guidance = args.guidance if args.guidance is not None else info.default_guidance
    if args.erasure:
        edit = WeightEdit.load(args.erasure)
        if edit.method != method:
            raise_error(f"{args.erasure} holds a {edit.method} erasure, not {method}")
        if concept not in edit.concepts:
            raise_error(f"{args.erasure} erases {', '.join(edit.concepts)}, not {concept}")
        removal = Removal.from_edit(edit)
    else:
        bundle = SaeBundle.load(info, args.sae, args.stats, args.defaults) if method == "saeuron" else None
        removal = prepare_removal(pipe, info, method, [concept], bundle=bundle, cache=_cache_dir(args), log=print)
    pairs = attack_prompt_pairs(concept, args.prompts or len(info.objects if concept in info.styles else info.styles))
    prompts = [mc.prompt(o, s) for o, s in pairs]
    judge = Judge.load(args.judge or ASSETS / "judge")
    result = run_attack(pipe, lambda: removal.active(pipe), prompts, [seed] * len(prompts), steps, guidance, cfg)
    before, after, target = (shows_concept(judge, images, concept) for images in (result.before, result.after, result.targets))
    report = {
        "method": method, "concept": concept, "prompts": prompts, "seed": seed, "attack": asdict(cfg),
        "UA_before": 1 - sum(before) / len(before), "UA_after": 1 - sum(after) / len(after), "target_shows_concept": target,
        "shows_concept_before": before, "shows_concept_after": after, "losses": result.losses, "seconds": round(result.seconds, 1),
    }
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "attack.json", report)
    rows = [Image.fromarray(im) for images in (result.targets, result.before, result.after) for im in images]
    save_image(image_grid(rows, 3, len(prompts)), out / "attack.png")
    print(f"{method} on {concept}: UA {report['UA_before']:.3f} before the attack, {report['UA_after']:.3f} after ({len(prompts)} prompts, {cfg.steps} steps, {result.seconds:.0f} s)")
    print(f"wrote {out}/attack.json and attack.png (rows: target, removed, removed + attack)")
    return 0


def _read_rows(path: str) -> list[dict]:
    try:
        return json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError) as e:
        raise_error(f"{path} is not a sweep report written by `saeuron tune --report` ({e})")


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
    g = sub.add_parser(
        "generate",
        help="generate an image (or a grid: rows = prompts, columns = seeds)",
        description="Generate images with a Stable Diffusion pipeline. Several prompts or seeds make a grid.",
    )
    g.add_argument("--model", default="minicanvas", help="'minicanvas' (bundled), a diffusers pipeline folder or a hub id")
    g.add_argument("--prompt", action="append", help="prompt text; repeat for several rows")
    g.add_argument("--object", action="append", help="MiniCanvas object; builds 'An image of {object} in {style} style.'")
    g.add_argument("--style", action="append", help="MiniCanvas style (with --object); repeat for several")
    g.add_argument("--seed", action="append", type=int, help="generation seed; repeat for several columns (default 0)")
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 20 for minicanvas)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)")
    g.add_argument("--erasure", default=None, help="generate with a weight edit from `saeuron erase` applied")
    g.add_argument("--out", default=None, help="output image path (.png, .jpg, .webp)")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("cache", help="store block activations of a prompt set at every denoising step", description="Run the pipeline over a prompt set and write the conditional half of each hook point's output, per step, as sharded fp16 safetensors. Resumable.")
    c.add_argument("--model", default="minicanvas", help="'minicanvas', a pipeline folder or a hub id")
    c.add_argument("--prompts", default=None, help="a .txt (one prompt per line) or .csv (prompt[,seed][,labels...]); default: MiniCanvas prompts")
    c.add_argument("--seeds-per-pair", type=int, default=6, help="MiniCanvas: train-split seeds per prompt (default 6)")
    c.add_argument("--point", action="append", help="hook point (repeat); default: the model's default points")
    c.add_argument("--steps", type=int, default=None)
    c.add_argument("--guidance", type=float, default=None)
    c.add_argument("--items-per-shard", type=int, default=16, help="images per shard (the resume granularity)")
    c.add_argument("--out", required=True, help="store folder")
    c.set_defaults(func=cmd_cache)

    t = sub.add_parser("train-sae", help="train a TopK SAE per hook point of an activation store", description="Train TopK SAEs (sparsify layout: <out>/<point>/cfg.json + sae.safetensors) with periodic checkpoints; rerun to resume.")
    t.add_argument("--store", required=True)
    t.add_argument("--point", action="append", help="hook point (repeat); default: every point of the store")
    t.add_argument("--out", required=True, help="folder for one subfolder per hook point")
    t.add_argument("--expansion-factor", type=int, default=16)
    t.add_argument("--k", type=int, default=16)
    t.add_argument("--batch-size", type=int, default=4096)
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train_sae)

    st = sub.add_parser("stats", help="feature statistics (concept means per step, top patches, histograms)", description="Encode a store with its SAEs once and write compact feature statistics per hook point.")
    st.add_argument("--store", required=True)
    st.add_argument("--sae", required=True, help="folder with one SAE subfolder per hook point")
    st.add_argument("--point", action="append")
    st.add_argument("--top-m", type=int, default=8, help="top examples kept per feature (diverse: see --distinct)")
    st.add_argument("--distinct", choices=("image", "prompt"), default="image", help="at most one example per image (prompt + seed) or per prompt")
    st.add_argument("--model", default=None, help="pipeline that renders the examples' thumbnails (default: the store's model)")
    st.add_argument("--thumbnail-size", type=int, default=128, help="longest side of the stored thumbnails in pixels")
    st.add_argument("--no-thumbnails", action="store_true", help="store no thumbnails (feature cards then show heatmaps on grey)")
    st.add_argument("--out", required=True)
    st.set_defaults(func=cmd_stats)

    u = sub.add_parser("unlearn", help="generate before/after pairs with concepts removed (SAeUron)", description="Remove one or more concepts with SAeUron and write a grid: rows = prompts, columns = before/after per seed.")
    u.add_argument("--model", default="minicanvas")
    u.add_argument("--concept", action="append", required=True, help="concept to remove (repeat for several)")
    u.add_argument("--prompt", action="append", help="prompt (repeat); default: the concept in three contexts")
    u.add_argument("--seed", action="append", type=int)
    u.add_argument("--tau", type=float, default=None, help="selection percentile in (0, 100) (default: per-concept table)")
    u.add_argument("--gamma", type=float, default=None, help="negative multiplier (default: per-concept table)")
    u.add_argument("--steps", type=int, default=None)
    u.add_argument("--guidance", type=float, default=None)
    u.add_argument("--sae", default=None, help="SAE folder (default: bundled assets/sae)")
    u.add_argument("--stats", default=None, help="statistics folder (default: bundled assets/stats)")
    u.add_argument("--defaults", default=None, help="tau/gamma table (default: assets/unlearn_defaults.json)")
    u.add_argument("--out", default=None)
    u.set_defaults(func=cmd_unlearn)

    tu = sub.add_parser("tune", help="sweep tau/gamma per concept on the sweep split; write the defaults table", description="The paper's per-concept sweep, picking by (UA + IRA) / 2 on seeds of the sweep split (never the evaluation seeds). Styles share one setting (or each its own, --style-settings per-concept); objects get one each.")
    tu.add_argument("--model", default="minicanvas")
    tu.add_argument("--domain", default="both", help="style, object or both")
    tu.add_argument("--concept", action="append", help="only these concepts (repeat)")
    tu.add_argument("--seeds", type=int, default=1, help="sweep-split seeds per pair (default 1)")
    tu.add_argument("--count", type=int, action="append", help="latents selected per step (repeat; default 1 2 3, the paper's tau grid)")
    tu.add_argument("--gamma", type=float, action="append", help="multipliers (repeat; default the paper's -1 ... -30)")
    tu.add_argument("--steps", type=int, default=None)
    tu.add_argument("--guidance", type=float, default=None)
    tu.add_argument("--sae", default=None)
    tu.add_argument("--stats", default=None)
    tu.add_argument("--judge", default=None, help="judge folder (default assets/judge)")
    tu.add_argument("--report", default=None, help="also write every grid row as JSON")
    tu.add_argument("--from-report", action="append", help="build the table from saved sweep reports instead of sweeping (repeat)")
    tu.add_argument("--style-settings", default="shared", help="shared: one setting for every style (the paper); per-concept: each style its own")
    tu.add_argument("--out", required=True, help="defaults table to write, e.g. assets/unlearn_defaults.json")
    tu.set_defaults(func=cmd_tune)

    ev = sub.add_parser("evaluate", help="the MiniCanvas benchmark: SAeUron vs ESD / UCE / none on UA / IRA / CRA, fidelity, cost, attack", description="Generate the full protocol (every pair and unstyled prompt, held-out seeds) with each concept removed by each method, judge it, attack each removal, and write metrics.json, metrics.csv, table.md and report.html.")
    ev.add_argument("--model", default="minicanvas")
    ev.add_argument("--methods", default=None, help="comma-separated: saeuron,esd,uce,none (default saeuron)")
    ev.add_argument("--method", default=None, help="one method (same as --methods with one name)")
    ev.add_argument("--domain", default="style", help="style, object or both")
    ev.add_argument("--concept", action="append", help="only these concepts (repeat)")
    ev.add_argument("--seeds", type=int, default=None, help="held-out seeds per prompt (default 3, 1 with --quick)")
    ev.add_argument("--seed", type=int, action="append", help="explicit held-out seeds (repeat)")
    ev.add_argument("--multi", action="store_true", help="also remove 2, 3, 4 styles at once and a style with an object")
    ev.add_argument("--quick", action="store_true", help=f"1 seed, 2 attacked prompts per concept, ESD {QUICK_ESD_ITERATIONS} iterations: for CI")
    ev.add_argument("--attack-prompts", type=int, default=None, help="prompts attacked per removed concept (default 6, 2 with --quick; 0: no attack)")
    ev.add_argument("--attack-steps", type=int, default=40, help="attack budget in Adam steps (default 40, as UnlearnDiffAtk)")
    ev.add_argument("--esd-iterations", type=int, default=None, help="ESD fine-tuning iterations (default 150)")
    ev.add_argument("--esd-lr", type=float, default=None)
    ev.add_argument("--cache", default=None, help="folder for ESD / UCE weight edits (default $SAEURON_CACHE or ~/.cache/saeuron/erasures)")
    ev.add_argument("--no-cache", action="store_true", help="compute every weight edit afresh and keep none")
    ev.add_argument("--steps", type=int, default=None)
    ev.add_argument("--guidance", type=float, default=None)
    ev.add_argument("--sae", default=None)
    ev.add_argument("--stats", default=None)
    ev.add_argument("--defaults", default=None)
    ev.add_argument("--judge", default=None)
    ev.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    ev.add_argument("--out", required=True, help="output folder for the reports")
    ev.set_defaults(func=cmd_evaluate)

    er = sub.add_parser("erase", help="erase concepts by editing U-Net weights (ESD-x fine-tuning or UCE closed form)", description="Write a weight edit (edit.safetensors + erasure.json: differences from the base model's cross-attention weights). ESD checkpoints to <out>.work and resumes when rerun; SIGTERM checkpoints and stops.")
    er.add_argument("--model", default="minicanvas")
    er.add_argument("--method", required=True, help="esd or uce")
    er.add_argument("--concept", action="append", required=True, help="concept to erase (repeat for several)")
    er.add_argument("--esd-iterations", type=int, default=None, help="ESD iterations (default 150)")
    er.add_argument("--esd-lr", type=float, default=None, help="ESD Adam learning rate")
    er.add_argument("--esd-batch-size", type=int, default=None)
    er.add_argument("--preserve-scale", type=float, default=None, help="UCE weight of the preserved concepts")
    er.add_argument("--overwrite", action="store_true")
    er.add_argument("--out", required=True, help="folder to write")
    er.set_defaults(func=cmd_erase)

    at = sub.add_parser("attack", help="UnlearnDiffAtk-style soft-prompt attack on a concept removal", description="Optimise soft prompt tokens so that the edited model regenerates the un-edited model's image of the concept; report UA before and after.")
    at.add_argument("--model", default="minicanvas")
    at.add_argument("--method", required=True, help="saeuron, esd, uce or none")
    at.add_argument("--concept", required=True)
    at.add_argument("--erasure", default=None, help="a folder from `saeuron erase` (esd / uce) instead of the cached default edit")
    at.add_argument("--prompts", type=int, default=None, help="how many of the concept's prompts to attack (default all)")
    at.add_argument("--steps", type=int, default=40, help="attack budget: Adam steps (default 40)")
    at.add_argument("--lr", type=float, default=0.01)
    at.add_argument("--tokens", type=int, default=5, help="soft tokens (default 5)")
    at.add_argument("--seed", type=int, default=None, help="held-out generation seed")
    at.add_argument("--gen-steps", type=int, default=None, help="denoising steps (default: the model's)")
    at.add_argument("--guidance", type=float, default=None)
    at.add_argument("--sae", default=None)
    at.add_argument("--stats", default=None)
    at.add_argument("--defaults", default=None)
    at.add_argument("--judge", default=None)
    at.add_argument("--cache", default=None)
    at.add_argument("--no-cache", action="store_true")
    at.add_argument("--overwrite", action="store_true")
    at.add_argument("--out", required=True)
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
