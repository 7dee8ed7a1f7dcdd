"""Commands that generate images: ``generate``, ``unlearn`` and ``locate``.

Extension points an upper layer may set on these parsers (``parser.set_defaults(name=f)``):
- ``generate``: ``more_prompts``, ``f(args)`` -> prompts added to ``--prompt``'s, built and
  checked before the model loads (the benchmark's ``--object`` / ``--style``);
- ``locate`` runs the prompt pairs given with ``--case``; an upper layer may set
``default_cases`` on its parser (``parser.set_defaults(default_cases=f)``): ``f(args)`` checks
its own flags before the model loads and returns ``cases(opened) -> (swap cases, shows or
None)``, used when no ``--case`` is given (the benchmark's judged swap over its vocabulary).
"""

from __future__ import annotations

from pathlib import Path

from .options import (
    add_bundle_options,
    add_model_options,
    add_output_options,
    check_output_folder,
    open_bundle,
    open_model,
    raise_error,
)


def cmd_generate(args) -> int:
    from ..edits import WeightEdit, applied
    from ..pipeline import generate, image_grid, save_image

    if args.out is None:
        raise_error("--out is required (an image path such as img.png)")
    prompts = list(args.prompt or [])
    more_prompts = getattr(args, "more_prompts", None)
    if more_prompts:
        prompts += more_prompts(args)
    if not prompts:
        raise_error("give --prompt TEXT" + (" or --object NAME [--style NAME]" if more_prompts else ""))
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
    print(
        f"wrote {args.out} ({len(prompts)} prompt(s) x {len(seeds)} seed(s), {m.steps} steps, guidance {m.guidance}, "
        f"{m.describe()}{erased})"
    )
    return 0


def cmd_unlearn(args) -> int:
    from ..pipeline import image_grid, save_image
    from ..prompts import concept_prompt
    from ..unlearning import generate_with

    if args.out is None:
        raise_error("--out is required (an image path such as pair.png)")
    if (args.tau is None) != (args.gamma is None):
        raise_error(
            "give both --tau and --gamma, or neither (then --defaults, --preset or, for the bundled model, "
            "its table applies)"
        )
    if args.prompt and any(not p.strip() for p in args.prompt):
        raise_error("empty prompt")
    m = open_model(args)
    bundle = open_bundle(args, m.info, m.pipe)
    interventions = bundle.unlearn(args.concept, args.tau, args.gamma)
    print(f"removal variant: {'paper (--tau/--gamma)' if args.tau is not None else bundle.variant()}")
    for point in dict.fromkeys(iv.point for iv in interventions):
        sae = bundle.saes[point]
        print(f"{point}: SAE of {sae.num_latents} latents, {sae.cfg.inference_topk()}")
    from ..interventions import Reroute

    for iv in interventions:
        for concept, *settings in iv.per_concept():
            if isinstance(iv, Reroute):
                blocks = ", ".join(iv.blocks) or "every cross-attention block outside the mid block"
                print(
                    f"{concept}: rerouted to {settings[1]} where its SAE features at {iv.point} detect it "
                    f"(detect {iv.detect:g}; blocks: {blocks}); from {bundle.params_source(concept)}"
                )
            else:
                source = "--tau/--gamma" if args.tau is not None else bundle.params_source(concept)
                print(f"{concept}: tau/gamma from {source}")
    prompts = list(args.prompt or [])
    if not prompts:
        if not m.info.concepts_of("object"):
            raise_error("give --prompt TEXT")
        # default: the removed concepts in a few contexts of the model's vocabulary
        for c in args.concept:
            if c in m.info.concepts_of("style"):
                prompts += [concept_prompt(o, c) for o in m.info.concepts_of("object")[:3]]
            else:
                prompts += [concept_prompt(c, s) for s in m.info.concepts_of("style")[:3]]
    seeds = args.seed or [0]
    before = generate_with(m.pipe, bundle, [], prompts, seeds, m.steps, m.guidance)
    after = generate_with(m.pipe, bundle, interventions, prompts, seeds, m.steps, m.guidance)
    # rows: prompts; columns: (before, after) for each seed
    cells = [im for i in range(len(before)) for im in (before[i], after[i])]
    save_image(image_grid(cells, len(prompts), 2 * len(seeds)), args.out)
    print(
        f"wrote {args.out} ({m.describe()}): rows = prompts, columns = before/after per seed; "
        + "; ".join(f"{iv.point}: {iv.per_concept()}" for iv in interventions)
    )
    return 0


def swap_cases_from_flags(specs: list[str], seeds: int) -> list:
    """``--case KIND:RIGHT PROMPT|SWAPPED PROMPT`` as swap cases, one per seed."""
    from ..locate import SwapCase

    cases = []
    for spec in specs:
        kind, sep, rest = spec.partition(":")
        right, sep2, wrong = rest.partition("|")
        if not (sep and sep2 and kind and right.strip() and wrong.strip()):
            raise_error(f"--case {spec!r}: write KIND:RIGHT PROMPT|SWAPPED PROMPT")
        cases += [SwapCase(kind, right.strip(), wrong.strip(), kind, seed) for seed in range(seeds)]
    return cases


def cmd_locate(args) -> int:
    from ..locate import CHART_NEEDS_APP, chart_available, check_blocks, locate, markdown_table, write_locate

    out = check_output_folder(args)
    chart = chart_available()  # known before any computation: a core install still gets the table
    if not chart:
        print(CHART_NEEDS_APP, flush=True)
    if args.seeds < 1:
        raise_error(f"--seeds must be >= 1, got {args.seeds}")
    custom = swap_cases_from_flags(args.case or [], args.seeds)
    default_cases = None if custom else getattr(args, "default_cases", None)
    cases_of = default_cases(args) if default_cases else None  # its flags checked before the model loads
    m = open_model(args)
    blocks = check_blocks(m.pipe.unet, args.block)  # bad names refused before any generation
    shows = None
    if custom:
        cases = custom
    else:
        found = cases_of(m) if cases_of else None
        if found is None:
            raise_error(f"{args.model} has no benchmark vocabulary; pass --case KIND:RIGHT|SWAPPED (repeat)")
        cases, shows = found
    result = locate(
        m.pipe,
        cases,
        m.steps,
        m.guidance,
        blocks,
        shows,
        batch_size=args.batch_size,
        log=lambda msg: print(msg, flush=True),
        on_kind=lambda partial: write_locate(partial, out, chart),
    )
    result["model"] = args.model
    written = write_locate(result, out, chart)
    print(markdown_table(result))
    print(f"wrote {', '.join(str(p) for p in written)} in {result['seconds']} s")
    return 0


def register(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="generate an image (or a grid: rows = prompts, columns = seeds)",
        description="Generate images with a Stable Diffusion pipeline. Several prompts or seeds make a grid.",
    )
    add_model_options(g)
    g.add_argument("--prompt", action="append", help="prompt text; repeat for several rows")
    g.add_argument("--seed", action="append", type=int, help="generation seed; repeat for several columns (default 0)")
    g.add_argument("--erasure", default=None, help="generate with a weight edit from `saeuron erase` applied")
    add_output_options(g, required=False, help="output image path (.png, .jpg, .webp)", overwrite=False)
    g.set_defaults(func=cmd_generate)

    u = sub.add_parser(
        "unlearn",
        help="generate before/after pairs with concepts removed (SAeUron)",
        description="Remove one or more concepts with SAeUron and write a grid: rows = prompts, "
        "columns = before/after per seed.",
    )
    add_model_options(u)
    add_bundle_options(u)
    u.add_argument("--concept", action="append", required=True, help="concept to remove (repeat for several)")
    u.add_argument("--prompt", action="append", help="prompt (repeat); default: the concept in three contexts")
    u.add_argument("--seed", action="append", type=int)
    u.add_argument(
        "--tau", type=float, default=None, help="selection percentile in (0, 100) (default: per-concept table)"
    )
    u.add_argument("--gamma", type=float, default=None, help="negative multiplier (default: per-concept table)")
    add_output_options(u, required=False, help="output image path", overwrite=False)
    u.set_defaults(func=cmd_unlearn)

    lo = sub.add_parser(
        "locate",
        help="where concepts enter the U-Net: text-swap patching of every cross-attention block",
        description="For each cross-attention block and concept kind: only this block sees the "
        "swapped concept word (is it necessary?) and only this block sees the right one "
        "(is it sufficient?). Judged on MiniCanvas models; on others (or with "
        "--no-judge) the image and block-output changes are reported. Writes "
        "locate.json, locate.md and a plotly heatmap.html.",
    )
    add_model_options(lo)
    lo.add_argument("--block", action="append", help="cross-attention block to test (repeat; default: every one)")
    lo.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    lo.add_argument(
        "--case",
        action="append",
        help="a prompt pair for any model: KIND:RIGHT PROMPT|SWAPPED PROMPT (repeat; judge-free)",
    )
    lo.add_argument("--batch-size", type=int, default=16)
    add_output_options(lo, help="output folder")
    lo.set_defaults(func=cmd_locate)
