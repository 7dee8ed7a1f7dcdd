"""Commands that turn a model into SAEs and features: ``cache``, ``train-sae``, ``stats`` and
``prepare`` (all three in one resumable run folder).

The SAE training flags are derived from ``TrainConfig`` and the ``SaeConfig`` it holds
(``config_flags``): a field added to either gets its flag here without an edit.

Extension points an upper layer may set on these parsers (``parser.set_defaults(name=f)``),
each ``f(args)`` checking its own flags before the model loads and returning a function of the
opened model:
- ``cache``: ``default_prompts`` -> ``items(opened)``, the prompt set used without ``--prompts``
  (None: the model has none);
- ``prepare``: ``tuner`` -> ``tune(opened)``, the tau / gamma tuning stage (None: no tuning).
"""

from __future__ import annotations

import json
from pathlib import Path

from .config_flags import add_config_flags
from .options import add_model_options, add_output_options, open_model, open_store, raise_error

SAE_FIELDS_NOT_TRAINED = ("d_in", "input_unit_norm", "batch_topk", "multi_topk")
"""SaeConfig fields with no training flag: ``d_in`` comes from the hook point; the others record
how a loaded checkpoint was trained, and this trainer does not train that way."""


def add_sae_training_options(p):
    """One flag per field of TrainConfig and of its SaeConfig (each default lives there)."""
    from ..sae_train import TrainConfig

    g = p.add_argument_group("SAE training (TrainConfig, SaeConfig)")
    flags = add_config_flags(g, TrainConfig, exclude=SAE_FIELDS_NOT_TRAINED)
    p.set_defaults(train_flags=flags)


def train_config(args):
    """The TrainConfig (holding its SaeConfig) that the SAE-training flags ask for; unset flags keep
    the dataclasses' defaults."""
    sae = args.train_flags.given(args).get("sae", {})
    if "expansion_factor" in sae and "num_latents" in sae:
        raise_error("give --expansion-factor or --num-latents, not both")
    return args.train_flags.build(args)


def cmd_cache(args) -> int:
    from .. import distributed as dist

    with dist.session():
        return _cache(args)


def _cache(args) -> int:
    from .. import distributed as dist
    from ..store import cache_activations, read_prompt_file

    items = read_prompt_file(args.prompts) if args.prompts else None
    default_prompts = getattr(args, "default_prompts", None)
    items_of = default_prompts(args) if items is None and default_prompts else None
    m = open_model(args)
    if items is None:
        items = items_of(m) if items_of else None
        if items is None:
            raise_error(f"{args.model} has no built-in prompt set; pass --prompts FILE (.txt or .csv)")
    points = args.point or sorted(set(m.info.hook_points.values()))
    store = cache_activations(
        m.pipe,
        items,
        points,
        args.out,
        m.steps,
        m.guidance,
        items_per_shard=args.items_per_shard,
        model_name=args.model,
    )
    if dist.is_main():
        ranks = f" ({dist.world()} ranks)" if dist.world() > 1 else ""
        print(
            f"store {args.out}: {len(store.items)} images x {m.steps} steps at {', '.join(points)} ({m.describe()}); "
            f"{len(store.completed)}/{store.n_shards} shards{ranks}"
        )
    return 0


def cmd_train_sae(args) -> int:
    from .. import distributed as dist

    with dist.session():
        return _train_sae(args)


def _train_sae(args) -> int:
    from .. import distributed as dist
    from ..sae_train import train_sae

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
    from .. import distributed as dist

    with dist.session():
        return _stats(args)


def _stats(args) -> int:
    from .. import distributed as dist
    from ..device import process_device
    from ..hooks import normalize_point
    from ..hub import point_folder, resolve_sae_dir
    from ..sae import TopKSae
    from ..stats import add_thumbnails, compute_stats

    if args.top_m < 1 or args.thumbnail_size < 8:
        raise_error(f"--top-m must be >= 1 and --thumbnail-size >= 8, got {args.top_m} and {args.thumbnail_size}")
    device = process_device(args.device)  # a device that is not here fails before the store and SAEs are read
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
        from ..pipeline import load_pipeline, resolve_spec

        model = args.model or store.meta.get("model")
        if not model:
            raise_error(f"the store at {args.store} does not name its model; pass --model, or --no-thumbnails")
        resolve_spec(model)  # a wrong model fails here; it is loaded only after the statistics (peak memory)
    all_stats = {
        point: compute_stats(store, point, sae, top_m=args.top_m, distinct=args.distinct, device=device)
        for point, sae in saes.items()
    }
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
            unlabelled = (
                "" if stats.concepts else " (the prompts carry no concept labels: frequencies and top examples only)"
            )
            print(
                f"{point}: statistics of {stats.n_latents} latents over {len(stats.concepts)} concepts{unlabelled}, "
                f"{stats.top_m} examples per feature ({size:.1f} MB) -> {out}"
            )
    dist.barrier()
    return 0


def cmd_prepare(args) -> int:
    from ..device import process_device
    from ..hooks import normalize_point
    from ..prepare import RunSpec, prepare, route_kinds
    from ..store import read_prompt_file

    # a training device that is not here fails first, named by its flag (TrainConfig would say --device)
    process_device(args.train_flags.given(args).get("device", "auto"), flag="--train-device")
    items = read_prompt_file(args.concepts)  # a bad concepts file fails before the model loads
    kind_points = {}
    for entry in args.kind_point or []:
        kind, sep, point = entry.partition("=")
        if not sep or not kind.strip() or not point.strip():
            raise_error(f"--kind-point takes KIND=POINT, got {entry!r}")
        kind_points[kind.strip()] = point.strip()
    train = train_config(args)
    tuner = getattr(args, "tuner", None)
    tune_of = tuner(args) if tuner else None
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
    spec = RunSpec(
        model=model,
        hook_points=routing,
        height=m.height,
        width=m.width,
        steps=m.steps,
        guidance=m.guidance,
        sae=given or "sae",
        concept_kinds=kinds,
        n_prompts=len(items),
    )
    tune = tune_of(m) if tune_of else None
    labels = (
        ", ".join(f"{len(v)} {k} concept(s)" for k, v in kinds.items())
        or "no concept labels (statistics will have frequencies only)"
    )
    print(
        f"prepare {args.out}: {args.model} on {m.describe()}, {m.steps} steps, guidance {m.guidance}; "
        f"{len(items)} prompts, {labels}"
    )
    prepare(
        m.pipe,
        spec,
        items,
        args.out,
        train_config=train,
        given_sae=given,
        top_m=args.top_m,
        items_per_shard=args.items_per_shard,
        tune=tune,
    )
    return 0


def register(sub) -> None:
    c = sub.add_parser(
        "cache",
        help="store block activations of a prompt set at every denoising step",
        description="Run the pipeline over a prompt set and write the conditional half of each hook "
        "point's output, per step, as sharded fp16 safetensors. Resumable.",
    )
    add_model_options(c)
    c.add_argument(
        "--prompts",
        default=None,
        help="a .txt (one prompt per line) or .csv (prompt[,seed][,labels...]); default: the model's "
        "built-in prompt set where one is registered (MiniCanvas)",
    )
    c.add_argument("--point", action="append", help="hook point (repeat); default: the model's default points")
    c.add_argument("--items-per-shard", type=int, default=16, help="images per shard (the resume granularity)")
    add_output_options(c, help="store folder", overwrite=False)
    c.set_defaults(func=cmd_cache)

    t = sub.add_parser(
        "train-sae",
        help="train a TopK SAE per hook point of an activation store",
        description="Train TopK SAEs (sparsify layout: <out>/<point>/cfg.json + sae.safetensors) with "
        "periodic checkpoints; rerun to resume.",
    )
    t.add_argument("--store", required=True)
    t.add_argument("--point", action="append", help="hook point (repeat); default: every point of the store")
    add_sae_training_options(t)
    t.add_argument(
        "--by-point",
        action="store_true",
        help="under torchrun: train each hook point's SAE on one rank (round-robin) instead of every SAE "
        "data-parallel on all ranks",
    )
    add_output_options(t, help="folder for one subfolder per hook point", overwrite=False)
    t.set_defaults(func=cmd_train_sae)

    st = sub.add_parser(
        "stats",
        help="feature statistics (concept means per step, top patches, histograms)",
        description="Encode a store with its SAEs once and write compact feature statistics per hook point.",
    )
    st.add_argument("--store", required=True)
    st.add_argument(
        "--sae",
        required=True,
        help="folder with one SAE subfolder per hook point (<point> or unet.<point>), or a hub id org/name[/subfolder]",
    )
    st.add_argument("--point", action="append")
    st.add_argument("--top-m", type=int, default=8, help="top examples kept per feature (diverse: see --distinct)")
    st.add_argument(
        "--distinct",
        choices=("image", "prompt"),
        default="image",
        help="at most one example per image (prompt + seed) or per prompt",
    )
    st.add_argument(
        "--model", default=None, help="pipeline that renders the examples' thumbnails (default: the store's model)"
    )
    st.add_argument(
        "--device",
        default="auto",
        help="where the SAEs encode the store and the statistics accumulate: auto (CUDA when present, else MPS, "
        "else CPU), cpu, cuda, cuda:N or mps; under torchrun auto and cuda mean each rank's own GPU",
    )
    st.add_argument("--thumbnail-size", type=int, default=128, help="longest side of the stored thumbnails in pixels")
    st.add_argument(
        "--no-thumbnails", action="store_true", help="store no thumbnails (feature cards then show heatmaps on grey)"
    )
    add_output_options(st, help="statistics folder", overwrite=False)
    st.set_defaults(func=cmd_stats)

    pr = sub.add_parser(
        "prepare",
        help="one resumable command from a model and a concepts file to a folder the explorer opens",
        description="Cache activations of the concepts file's prompts, train one SAE per hook point (unless --sae "
        "gives them), compute feature statistics and, with --judge, tune tau/gamma; write a run folder "
        "for `saeuron-explorer --run DIR`. Training and statistics run on --train-device (auto: the "
        "model's device). Rerun the same command to resume.",
    )
    add_model_options(pr)
    pr.add_argument(
        "--concepts",
        required=True,
        help="prompts and concepts: .csv (prompt[,seed][,<kind>...]: each label column is a concept "
        "kind), .json / .yaml (rows), or .txt (one prompt per line, no concepts)",
    )
    pr.add_argument(
        "--sae", default=None, help="existing SAEs (folder or hub id org/name[/subfolder]) instead of training"
    )
    pr.add_argument(
        "--point", action="append", help="hook point (repeat); default: the model's object and style points"
    )
    pr.add_argument(
        "--kind-point", action="append", help="KIND=POINT: route a concept kind (label column) to a hook point (repeat)"
    )
    add_sae_training_options(pr)
    pr.add_argument("--top-m", type=int, default=8, help="top-activating entries kept per feature and timestep bucket")
    pr.add_argument(
        "--items-per-shard", type=int, default=16, help="images per activation shard (the resume granularity)"
    )
    add_output_options(pr, help="run folder (rerun the same command to resume)", overwrite=False)
    pr.set_defaults(func=cmd_prepare)
