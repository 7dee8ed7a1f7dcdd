"""The benchmark's commands, registered into `saeuron` through the ``saeuron.commands`` entry
point (pyproject.toml): ``build-model``, ``tune``, ``attack`` and ``evaluate`` (``evaluation_command``),
and the benchmark's part of four library commands, set on their extension points:
- ``generate``: ``--object`` / ``--style``, prompts of the MiniCanvas vocabulary;
- ``locate``: ``--judge`` / ``--kind`` / ``--pairs`` / ``--no-judge`` and the judged swap of the
  vocabulary's concept words, used when no ``--case`` is given;
- ``prepare``: ``--judge``, which adds the tau / gamma sweep as the last stage;
- ``cache``: the MiniCanvas prompt set (``--seeds-per-pair``), used without ``--prompts``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..cli.config_flags import add_config_flags
from ..cli.options import (
    add_bundle_options,
    add_model_options,
    add_output_options,
    check_output_folder,
    open_bundle,
    open_model,
    raise_error,
)
from ..cli.registry import extend


def add_judge_option(p) -> None:
    p.add_argument(
        "--judge", default=None, help="judge folder (default: bundled assets/judge; prepare: no tuning without one)"
    )


def open_judge(args):
    from ..paths import ASSETS
    from .judge import Judge

    return Judge.load(args.judge or ASSETS / "judge")


# --------------------------------------------------------------------------- build-model
def build_config(args):
    """The BuildConfig of ``build-model``: its defaults, then ``--config``'s JSON, then the flags."""
    from dataclasses import fields

    from .model import BuildConfig

    try:
        overrides = json.loads(args.config) if args.config else {}
    except ValueError as e:
        raise_error(f"--config is not JSON: {e}")
    if not isinstance(overrides, dict):
        raise_error(f"--config takes a JSON object of BuildConfig fields, got {args.config!r}")
    unknown = sorted(set(overrides) - {f.name for f in fields(BuildConfig)})
    if unknown:
        raise_error(f"--config: BuildConfig has no field {', '.join(unknown)}")
    given = args.build_flags.given(args)  # a flag wins over the same field in --config
    return args.build_flags.build(args, **{k: v for k, v in overrides.items() if k not in given})


def cmd_build_model(args) -> int:
    from ..paths import ASSETS
    from .build import build_model

    cfg = build_config(args)
    out = Path(args.out) if args.out else ASSETS / "minicanvas"
    judge_out = Path(args.judge_out) if args.judge_out else ASSETS / "judge"
    report = build_model(cfg, Path(args.work), out, judge_out)
    print(json.dumps(report, indent=2))
    return 0


# --------------------------------------------------------------------------- tune
def _read_rows(path: str) -> list[dict]:
    try:
        return json.loads(Path(path).read_text())["rows"]
    except (OSError, ValueError, KeyError) as e:
        raise_error(f"{path} is not a sweep report written by `saeuron tune --report` ({e})")


def cmd_tune(args) -> int:
    from .. import minicanvas as mc
    from ..io import write_json
    from ..scoring import check_score
    from ..unlearning import SaeBundle
    from .tuning import CRITERIA, PAPER_GAMMAS, check_criterion, criterion_score, defaults_table, sweep_concept

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
            raise_error(
                f"sweep rows without UA / IRA / CRA (concepts {', '.join(map(str, sorted(set(missing))))}); "
                "rerun the sweep"
            )
        table = defaults_table(
            [r for r in rows if r["kind"] == "style"],
            [r for r in rows if r["kind"] == "object"],
            args.style_settings,
            args.criterion,
        )
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
    domains = ("style", "both"), ("object", "both")
    wanted = args.concept or ([*mc.STYLES] if args.domain in domains[0] else []) + (
        [*mc.OBJECTS] if args.domain in domains[1] else []
    )
    style_rows, object_rows = [], []
    for concept in wanted:
        rows = sweep_concept(
            m.pipe, bundle, judge, concept, counts, gammas, seeds, m.steps, m.guidance, score=args.score
        )
        (style_rows if mc.concept_kind(concept) == "style" else object_rows).extend(rows)
        best = max(rows, key=lambda r: criterion_score(r, args.criterion))
        print(
            f"{concept}: best {CRITERIA[args.criterion]} = {criterion_score(best, args.criterion):.3f} at "
            f"{best['count']} latents/step, gamma {best['gamma']} (UA {best['UA']:.2f}, IRA {best['IRA']:.2f}, "
            f"CRA {best['CRA']:.2f})",
            flush=True,
        )
    table = defaults_table(style_rows, object_rows, args.style_settings, args.criterion)
    table.update(
        seeds=seeds,
        seed_derivation="each pair its own seeds: dataset.prompt_seeds(bases, prompt)",
        steps=m.steps,
        guidance=m.guidance,
        counts=counts,
        gammas=gammas,
    )
    write_json(args.out, table)
    if args.report:
        write_json(args.report, {"rows": style_rows + object_rows})
    print(f"wrote {args.out}")
    return 0


# --------------------------------------------------------------------------- attack
def cmd_attack(args) -> int:
    from dataclasses import asdict

    from PIL import Image

    from .. import minicanvas as mc
    from ..baselines.commands import cache_dir
    from ..baselines.erasure import check_concepts
    from ..baselines.methods import SAE_METHODS, Removal, check_method, prepare_removal
    from ..edits import WeightEdit
    from ..io import write_json
    from ..pipeline import save_image
    from .benchmark_attack import attack_row

    method = check_method(args.method)
    cfg = args.attack_flags.build(args)
    if args.prompts is not None and args.prompts < 1:
        raise_error(f"--prompts must be >= 1, got {args.prompts}")
    out = check_output_folder(args)
    seed = args.seed if args.seed is not None else mc.split_seeds("heldout", 1)[0]
    if mc.split_of(seed) != "heldout":
        raise_error(
            f"seed {seed} is in the {mc.split_of(seed)!r} split; attacks are reported on held-out seeds "
            f"{mc.SPLITS['heldout']}"
        )
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
        bundle = open_bundle(args, m.info, m.pipe) if method in SAE_METHODS else None
        removal = prepare_removal(m.pipe, m.info, method, [concept], bundle=bundle, cache=cache_dir(args), log=print)
    judge = open_judge(args)
    styles = m.info.concepts_of("style")
    n_prompts = args.prompts or len(m.info.concepts_of("object") if concept in styles else styles)
    row, strip = attack_row(m.pipe, judge, removal, concept, n_prompts, (seed,), m.steps, m.guidance, cfg)
    report = {"method": method, "concept": concept, "attack": asdict(cfg), **row}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "attack.json", report)
    save_image(Image.fromarray(strip), out / "attack.png")
    print(
        f"{method} on {concept}: UA {row['UA_before']:.3f} before the attack, {row['UA_after']:.3f} after "
        f"({len(row['prompts'])} prompts, {cfg.steps} steps, {row['seconds']:.0f} s)"
    )
    print(f"wrote {out}/attack.json and attack.png (rows: target, removed, removed + attack)")
    return 0


# --------------------------------------------------------------------------- library commands' extension points
def object_style_prompts(args) -> list[str]:
    """``generate --object / --style``: the paper's prompt for each MiniCanvas object and style given."""
    from .dataset import prompt

    if not (args.object or args.style):
        return []
    if not args.object:
        raise_error("--style needs --object (prompts read 'An image of {object} in {style} style.')")
    return [prompt(o, s) for o in args.object for s in args.style or [None]]


def locate_cases(args):
    """``locate`` without ``--case``: the vocabulary's concept words swapped, judged unless --no-judge."""
    if args.pairs < 1:
        raise_error(f"--pairs must be >= 1, got {args.pairs}")
    kinds = tuple(args.kind or ("object", "style"))
    for k in kinds:
        if k not in ("object", "style"):
            raise_error(f"unknown kind {k!r}; MiniCanvas kinds: object, style")

    def cases(m):
        from .. import minicanvas as mc
        from .locating import judge_shows, swap_cases

        if not m.info.concepts_of("object"):
            return None
        shows = None if args.no_judge else judge_shows(open_judge(args))
        return swap_cases(kinds, args.pairs, mc.split_seeds("sweep", args.seeds)), shows

    return cases


def prepare_tuner(args):
    """``prepare --judge``: the MiniCanvas sweep with the judge as the last stage (benchmark models only)."""
    if not args.judge:
        return None

    def tuner(m):
        from .. import minicanvas as mc
        from .tuning import PAPER_GAMMAS, defaults_table, sweep_concept

        if not m.info.concepts_of("object"):
            raise_error(
                f"tuning with a judge needs a model with a benchmark vocabulary (MiniCanvas-style); "
                f"{args.model} has none: leave out --judge and pass --tau/--gamma or --preset paper later"
            )
        judge = open_judge(args)
        seeds = mc.split_seeds("sweep", 1)

        def tune(pipe, bundle):
            style_rows, object_rows = [], []
            for concept in [*mc.STYLES, *mc.OBJECTS]:
                rows = sweep_concept(
                    pipe, bundle, judge, concept, (1, 2, 3), tuple(PAPER_GAMMAS), seeds, m.steps, m.guidance
                )
                (style_rows if mc.concept_kind(concept) == "style" else object_rows).extend(rows)
            return defaults_table(style_rows, object_rows, "shared")

        return tune

    return tuner


def cache_prompts(args):
    """``cache`` without ``--prompts``: every MiniCanvas prompt at ``--seeds-per-pair`` train-split seeds."""

    def items(m):
        from .dataset import prompt_items

        return prompt_items(args.seeds_per_pair, split="train") if m.info.concepts_of("object") else None

    return items


# --------------------------------------------------------------------------- registration
def register(sub) -> None:
    """Add the benchmark's commands to `saeuron` and its options to ``generate``, ``locate``, ``prepare`` and
    ``cache`` (the ``saeuron.commands`` entry point)."""
    from .evaluation_command import register_evaluate
    from .model import BuildConfig

    b = sub.add_parser(
        "build-model",
        help="train the bundled MiniCanvas model (judge, autoencoder, text encoder + U-Net) from scratch",
        description="Train the bundled MiniCanvas pipeline and judge. Resumable: run the same command again after an "
        "interruption. Every BuildConfig field has a flag.",
    )
    b.add_argument(
        "--work",
        default="build/minicanvas",
        help="folder for data, checkpoints and stage markers (default: build/minicanvas)",
    )
    b.add_argument("--out", default=None, help="pipeline folder to write (default: the bundled assets/minicanvas)")
    b.add_argument("--judge-out", default=None, help="judge folder to write (default: assets/judge)")
    b.add_argument(
        "--config", default=None, help="JSON overrides of BuildConfig fields, e.g. '{\"unet_steps\": 10}' (a flag wins)"
    )
    b.set_defaults(
        func=cmd_build_model, build_flags=add_config_flags(b.add_argument_group("recipe (BuildConfig)"), BuildConfig)
    )

    tu = sub.add_parser(
        "tune",
        help="sweep tau/gamma per concept on the sweep split; write the defaults table",
        description="The paper's per-concept sweep, picking by (UA + IRA + CRA) / 3 (or the paper's "
        "(UA + IRA) / 2, --criterion paper) on seeds of the sweep split (never the "
        "evaluation seeds). Styles share one setting (or each its own, --style-settings "
        "per-concept); objects get one each.",
    )
    add_model_options(tu)
    add_bundle_options(tu, defaults=False)
    add_judge_option(tu)
    tu.add_argument("--domain", default="both", help="style, object or both")
    tu.add_argument("--concept", action="append", help="only these concepts (repeat)")
    tu.add_argument(
        "--seeds", type=int, default=4, help="sweep-split base seeds; each pair gets its own seed per base (default 4)"
    )
    tu.add_argument(
        "--criterion",
        default="all",
        help="how to pick a setting: all = (UA + IRA + CRA) / 3 (default), paper = (UA + IRA) / 2",
    )
    tu.add_argument(
        "--score",
        default="paper",
        help="concept score that selects latents: paper (default) or specific = the paper's times "
        "max(0, (m_c - m_o) / (m_c + m_o)); the table records it",
    )
    tu.add_argument(
        "--count",
        type=int,
        action="append",
        help="latents selected per step (repeat; default 1 2 3, the paper's tau grid)",
    )
    tu.add_argument("--gamma", type=float, action="append", help="multipliers (repeat; default the paper's -1 ... -30)")
    tu.add_argument("--report", default=None, help="also write every grid row as JSON")
    tu.add_argument(
        "--from-report", action="append", help="build the table from saved sweep reports instead of sweeping (repeat)"
    )
    tu.add_argument(
        "--style-settings",
        default="shared",
        help="shared: one setting for every style (the paper); per-concept: each style its own",
    )
    add_output_options(tu, help="defaults table to write, e.g. assets/unlearn_defaults.json", overwrite=False)
    tu.set_defaults(func=cmd_tune)

    register_evaluate(sub)
    register_attack(sub)

    g = extend(sub, "generate").add_argument_group("MiniCanvas prompts")
    g.add_argument(
        "--object", action="append", help="MiniCanvas object; builds 'An image of {object} in {style} style.'"
    )
    g.add_argument("--style", action="append", help="MiniCanvas style (with --object); repeat for several")
    extend(sub, "generate").set_defaults(more_prompts=object_style_prompts)

    lo = extend(sub, "locate").add_argument_group("MiniCanvas (without --case)")
    add_judge_option(lo)
    lo.add_argument("--kind", action="append", help="MiniCanvas concept kind: object, style (repeat; default both)")
    lo.add_argument("--pairs", type=int, default=16, help="MiniCanvas prompts per kind (default 16)")
    lo.add_argument("--no-judge", action="store_true", help="report image / block-output change only")
    extend(sub, "locate").set_defaults(default_cases=locate_cases)

    add_judge_option(extend(sub, "prepare"))
    extend(sub, "prepare").set_defaults(tuner=prepare_tuner)

    extend(sub, "cache").add_argument(
        "--seeds-per-pair", type=int, default=6, help="MiniCanvas: train-split seeds per prompt (default 6)"
    )
    extend(sub, "cache").set_defaults(default_prompts=cache_prompts)


def register_attack(sub) -> None:
    from ..baselines.attack import AttackConfig
    from ..baselines.commands import add_cache_options

    at = sub.add_parser(
        "attack",
        help="UnlearnDiffAtk-style soft-prompt attack on a concept removal",
        description="Optimise soft prompt tokens so that the edited model regenerates the un-edited "
        "model's image of the concept; report UA before and after.",
    )
    # --steps is the attack budget here, so the denoising steps are --gen-steps
    add_model_options(at, steps_flag="--gen-steps")
    add_bundle_options(at)
    add_judge_option(at)
    add_cache_options(at)
    at.add_argument("--method", required=True, help="saeuron, esd, uce or none")
    at.add_argument("--concept", required=True)
    at.add_argument(
        "--erasure", default=None, help="a folder from `saeuron erase` (esd / uce) instead of the cached default edit"
    )
    at.add_argument(
        "--prompts", type=int, default=None, help="how many of the concept's prompts to attack (default all)"
    )
    flags = add_config_flags(
        at.add_argument_group("attack (AttackConfig)"),
        AttackConfig,
        prefix="attack-",
        aliases={"steps": "--steps", "lr": "--lr", "n_tokens": "--tokens"},
    )
    at.add_argument("--seed", type=int, default=None, help="held-out generation seed")
    add_output_options(at)
    at.set_defaults(func=cmd_attack, attack_flags=flags)
