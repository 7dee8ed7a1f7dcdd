"""``saeuron evaluate``: the method comparison (``benchmark``), and with ``--generalisation`` the
paper's Table 3 (``generalisation``) or with ``--control`` feature control (``control``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..cli.options import (
    add_bundle_options,
    add_model_options,
    add_output_options,
    check_output_folder,
    open_bundle,
    open_model,
    raise_error,
)
from ..interventions import PROMPT_ADD_MAX

QUICK_ESD_ITERATIONS = 60
PUBLISHED_SEEDS = 6
"""Seeds per prompt of the published tables (``evaluate`` default)."""
QUICK_SEEDS = 1


def _log(msg: str) -> None:
    print(msg, flush=True)


def cmd_evaluate(args) -> int:
    from .. import minicanvas as mc
    from ..baselines.commands import cache_dir, esd_config
    from ..baselines.methods import SAE_METHODS, parse_methods
    from .benchmark import EvalPlan, default_concepts, run
    from .commands import open_judge

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
    esd = esd_config(args, **({"iterations": QUICK_ESD_ITERATIONS} if args.quick else {}))
    m = open_model(args, need_vocabulary="evaluate")
    plan = EvalPlan(
        methods, args.domain or "style", concepts, seeds, m.steps, m.guidance, multi, attack_prompts, args.attack_steps
    )
    bundle = open_bundle(args, m.info, m.pipe) if set(methods) & set(SAE_METHODS) else None
    judge = open_judge(args)
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    work = Path(args.work) if args.work else out.with_name(out.name + ".work")
    result = run(m.pipe, m.info, bundle, judge, plan, out, cache=cache_dir(args), esd=esd, work=work, log=_log)
    print((out / "table.md").read_text())
    print(
        f"wrote {out}/metrics.json, metrics.csv, table.md, report.html in {result['wall_seconds']} s "
        f"(work folder {work})"
    )
    return 0


def cmd_generalisation(args, out: Path) -> int:
    """`evaluate --generalisation`: an SAE trained on half of the concepts removes all of them."""
    from .. import minicanvas as mc
    from ..paths import ASSETS
    from ..unlearning import DEFAULTS_FILE
    from .commands import open_judge
    from .generalisation import GeneralisationConfig, check_split_seed, prepare, run

    for flag, given in (("--multi", args.multi or None), ("--attack-prompts", args.attack_prompts)):
        if given is not None:
            raise_error(f"{flag} does not apply to --generalisation (it runs single removals, no attack)")
    if args.no_full_reference and args.match_tokens:
        raise_error(
            "--match-tokens matches the reference SAE's tokens; it needs the reference (drop --no-full-reference)"
        )
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
    settings = dict(
        split_seed=split_seed,
        sae_concepts=tuple(args.sae_concept or ()),
        seeds=seeds,
        concepts=tuple(args.concept or ()),
        train_seeds_per_pair=args.train_seeds_per_pair,
        batch_size=args.sae_batch_size,
        match_tokens=args.match_tokens,
    )
    GeneralisationConfig(**settings)  # bad seeds or names refused before the model loads
    work = Path(args.work) if args.work else out.with_name(out.name + ".work")
    defaults = Path(args.defaults) if args.defaults else ASSETS / DEFAULTS_FILE
    m = open_model(args, need_vocabulary="--generalisation")
    if not args.concept:  # the model's own concepts of the domain (default: every kind)
        domain = args.domain or "both"
        settings["concepts"] = tuple(m.info.concepts_of("object") if domain in ("object", "both") else ()) + tuple(
            m.info.concepts_of("style") if domain in ("style", "both") else ()
        )
    cfg = GeneralisationConfig(**settings)
    prepare(m.info, cfg, defaults, work)  # split, concepts, defaults and work folder refused before any work
    full = None if args.no_full_reference else open_bundle(args, m.info, m.pipe)
    judge = open_judge(args)
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    result = run(m.pipe, m.info, judge, cfg, defaults, work, out, m.steps, m.guidance, full=full, log=_log)
    print((out / "table.md").read_text())
    print(
        f"wrote {out}/metrics.json, metrics.csv, table.md, report.html in {result['wall_seconds']} s "
        f"(work folder {work})"
    )
    return 0


def _evaluate_control(args, out: Path, concepts, seeds) -> int:
    import time

    from .. import minicanvas as mc
    from ..io import atomic_path, write_json
    from .commands import open_judge
    from .control import DEFAULT_STRENGTHS, DEFAULT_TOPS, control_rows, markdown, summary

    for s in seeds:
        if mc.split_of(s) != "heldout":
            raise_error(
                f"seed {s} is in the {mc.split_of(s)!r} split; evaluation uses held-out seeds "
                f"{mc.SPLITS['heldout']} only"
            )
    for c in concepts:
        mc.concept_kind(c)
    tops = tuple(args.control_top or DEFAULT_TOPS)
    strengths = tuple(args.control_strength or DEFAULT_STRENGTHS)
    if any(n < 1 for n in tops):
        raise_error(f"--control-top counts must be >= 1, got {tops}")
    if any(x <= 0 for x in strengths):
        raise_error(f"steering strengths must be > 0, got {strengths}")
    if args.control_add_strength is not None and not 0 < args.control_add_strength <= PROMPT_ADD_MAX:
        raise_error(f"--control-add-strength must be > 0 and <= {PROMPT_ADD_MAX:g}, got {args.control_add_strength}")
    m = open_model(args, need_vocabulary="evaluate --control")
    bundle = open_bundle(args, m.info, m.pipe)
    judge = open_judge(args)
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    t0 = time.time()
    rows = control_rows(
        m.pipe,
        bundle,
        judge,
        concepts,
        seeds,
        m.steps,
        m.guidance,
        tops,
        strengths,
        log=_log,
        features=not args.control_handles_only,
        add_strength=args.control_add_strength,
    )
    result = {
        "seeds": list(seeds),
        "steps": m.steps,
        "guidance": m.guidance,
        "tops": tops,
        "strengths": strengths,
        "rows": rows,
        "summary": summary(rows, top=max(tops)),
        "wall_seconds": round(time.time() - t0, 1),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "control.json", result)
    with atomic_path(out / "control.md") as tmp:
        tmp.write_text(markdown(rows))
    print(markdown(rows))
    print(f"wrote {out}/control.json and control.md in {result['wall_seconds']} s")
    return 0


def register_evaluate(sub) -> None:
    from ..baselines.commands import add_cache_options, add_esd_options
    from .commands import add_judge_option

    ev = sub.add_parser(
        "evaluate",
        help="the MiniCanvas benchmark: SAeUron vs ESD / UCE / none on UA / IRA / CRA, fidelity, cost, attack",
        description="Generate the full protocol (every pair and unstyled prompt, held-out seeds) with "
        "each concept removed by each method, judge it, attack each removal, and write "
        "metrics.json, metrics.csv, table.md and report.html.",
    )
    add_model_options(ev)
    add_bundle_options(ev)
    add_judge_option(ev)
    add_cache_options(ev)
    add_esd_options(ev)
    ev.add_argument(
        "--methods",
        default=None,
        help="comma-separated: saeuron,saeuron-paper,esd,uce,none (default saeuron: the project's "
        "default SAE removal; saeuron-paper: the paper's exact method)",
    )
    ev.add_argument("--method", default=None, help="one method (same as --methods with one name)")
    ev.add_argument(
        "--domain", default=None, help="style, object or both (default style; with --generalisation: every concept)"
    )
    ev.add_argument("--concept", action="append", help="only these concepts (repeat)")
    ev.add_argument(
        "--seeds",
        type=int,
        default=None,
        help=f"held-out seeds per prompt, each prompt its own (default {PUBLISHED_SEEDS}, {QUICK_SEEDS} with --quick)",
    )
    ev.add_argument(
        "--seed",
        type=int,
        action="append",
        help="explicit held-out base seeds (repeat); each prompt derives its own seed from each base",
    )
    ev.add_argument(
        "--multi", action="store_true", help="also remove 2, 3, 4 styles at once and a style with an object"
    )
    ev.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_SEEDS} seed per prompt, 2 attacked prompts per concept, ESD {QUICK_ESD_ITERATIONS} "
        "iterations: for CI",
    )
    ev.add_argument(
        "--attack-prompts",
        type=int,
        default=None,
        help="prompts attacked per removed concept (default 6, 2 with --quick; 0: no attack)",
    )
    ev.add_argument(
        "--attack-steps", type=int, default=40, help="attack budget in Adam steps (default 40, as UnlearnDiffAtk)"
    )
    ev.add_argument(
        "--work",
        default=None,
        help="work folder of finished image sets and attacks (with --generalisation also stores, SAEs, "
        "statistics): rerun to resume, run the same command in a second process to share the work, "
        "add seeds to reuse the first ones (default <out>.work)",
    )
    # GeneralisationConfig's seeds / concepts come from --seed(s) / --concept above, so this group is
    # written by hand; --split-seed stays text so that check_split_seed names a bad value itself.
    gen = ev.add_argument_group("generalisation (the paper's Table 3)")
    gen.add_argument(
        "--generalisation",
        action="store_true",
        help="train an SAE on half of the concepts of each kind (and a reference SAE on all), remove "
        "every concept with each, report UA / IRA / CRA for concepts in and outside the SAE's half",
    )
    gen.add_argument("--split-seed", default=None, help="integer seed that draws the halves (default 0; recorded)")
    gen.add_argument("--sae-concept", action="append", help="name the SAE's half instead of drawing it (repeat)")
    gen.add_argument(
        "--train-seeds-per-pair",
        type=int,
        default=4,
        help="train-split seeds per cached prompt (default 4, as the bundled store)",
    )
    gen.add_argument(
        "--sae-batch-size",
        type=int,
        default=4096,
        help="tokens per SAE optimiser step (default 4096, as the bundled SAEs)",
    )
    gen.add_argument(
        "--match-tokens",
        action="store_true",
        help="train the half SAE on as many tokens as the reference SAE saw at each hook point "
        "(recorded in its folder), not 5 passes over its smaller store",
    )
    gen.add_argument(
        "--no-full-reference",
        action="store_true",
        help="skip the reference SAE trained on every concept (--sae / --stats, default the bundled "
        "one; halves the removals)",
    )
    ev.add_argument(
        "--control",
        action="store_true",
        help="feature control instead of the comparison: ablate each concept's top-ranked features (UA, "
        "CRA) and steer them into prompts without it (concept rate, retention); writes control.json "
        "/ control.md",
    )
    ev.add_argument(
        "--control-top", type=int, action="append", help="top-n ranked features for --control (repeat; default 1 and 3)"
    )
    ev.add_argument(
        "--control-strength",
        type=float,
        action="append",
        help="steering strength in units of the feature's typical top activation (repeat; default 1 and 3)",
    )
    ev.add_argument(
        "--control-handles-only",
        action="store_true",
        help="--control measures only the concept handles (remove / add a whole concept), not the top-n feature rows",
    )
    ev.add_argument(
        "--control-add-strength",
        type=float,
        help="--control: the add handle's strength (a PromptAdd's: 1 = the rewritten prompt's block outputs; "
        "default: the library's ADD_STRENGTH)",
    )
    add_output_options(ev, help="output folder for the reports")
    ev.set_defaults(func=cmd_evaluate)
