"""The baselines' commands (``erase``) and the option groups of weight-edit methods, registered
into `saeuron` through the ``saeuron.commands`` entry point (pyproject.toml).

The ESD and UCE flags are derived from ``EsdConfig`` / ``UceConfig`` (``--esd-<field>``,
``--uce-<field>``): a field added to either gets its flag without an edit here.
"""

from __future__ import annotations

from pathlib import Path

from ..cli.config_flags import add_config_flags
from ..cli.options import add_model_options, add_output_options, open_model, raise_error


def add_cache_options(p) -> None:
    g = p.add_argument_group("weight-edit cache")
    g.add_argument(
        "--cache",
        default=None,
        help="folder for ESD / UCE weight edits (default $SAEURON_CACHE or ~/.cache/saeuron/erasures)",
    )
    g.add_argument("--no-cache", action="store_true", help="compute every weight edit afresh and keep none")


def cache_dir(args) -> Path | None:
    """--cache, else the default erasure cache; None with --no-cache."""
    from .methods import default_cache_dir

    return None if args.no_cache else Path(args.cache) if args.cache else default_cache_dir()


def add_esd_options(p) -> None:
    """One ``--esd-<field>`` flag per EsdConfig field."""
    from .erasure import EsdConfig

    p.set_defaults(esd_flags=add_config_flags(p.add_argument_group("ESD (EsdConfig)"), EsdConfig, prefix="esd-"))


def esd_config(args, **overrides):
    """The EsdConfig the --esd-* flags ask for (``overrides`` apply where a flag is not given)."""
    given = args.esd_flags.given(args)
    return args.esd_flags.build(args, **{k: v for k, v in overrides.items() if k not in given})


def add_uce_options(p) -> None:
    """One ``--uce-<field>`` flag per UceConfig field (``--preserve-scale`` as before)."""
    from .erasure import UceConfig

    flags = add_config_flags(
        p.add_argument_group("UCE (UceConfig)"),
        UceConfig,
        prefix="uce-",
        aliases={"preserve_scale": "--preserve-scale"},
    )
    p.set_defaults(uce_flags=flags)


def cmd_erase(args) -> int:
    from tqdm import tqdm

    from ..edits import META_FILE, WeightEdit
    from ..training import StopRequest
    from .methods import erase_to

    out = Path(args.out)
    if (out / META_FILE).is_file() and not args.overwrite:
        raise_error(f"{out} already holds an erasure; pass --overwrite to replace it")
    if args.method not in ("esd", "uce"):
        raise_error(
            f"unknown erasure method {args.method!r}; use esd or uce (SAeUron needs no erasure: see `saeuron unlearn`)"
        )
    config = esd_config(args) if args.method == "esd" else args.uce_flags.build(args)
    m = open_model(args)
    bar = tqdm(total=getattr(config, "iterations", 1), desc=f"{args.method} {'+'.join(args.concept)}", mininterval=2)

    def progress(i, n, loss):
        bar.n = i
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    with StopRequest() as stop:
        try:
            edit = erase_to(
                out,
                m.pipe,
                m.info,
                args.method,
                args.concept,
                config,
                progress=progress,
                should_stop=lambda: stop.requested,
            )
        finally:
            bar.close()
    WeightEdit.load(out)  # what was written reads back
    print(
        f"wrote {out}: {args.method} erasure of {', '.join(edit.concepts)} ({len(edit.deltas)} tensors, "
        f"{edit.storage_bytes / 2**20:.2f} MB) in {edit.setup_seconds:.1f} s"
    )
    return 0


def register(sub) -> None:
    """Add the baselines' commands to `saeuron` (the ``saeuron.commands`` entry point)."""
    er = sub.add_parser(
        "erase",
        help="erase concepts by editing U-Net weights (ESD-x fine-tuning or UCE closed form)",
        description="Write a weight edit (edit.safetensors + erasure.json: differences from the base "
        "model's cross-attention weights). ESD checkpoints to <out>.work and resumes "
        "when rerun; SIGTERM checkpoints and stops.",
    )
    add_model_options(er)
    add_esd_options(er)
    add_uce_options(er)
    er.add_argument("--method", required=True, help="esd or uce")
    er.add_argument("--concept", action="append", required=True, help="concept to erase (repeat for several)")
    add_output_options(er, help="folder to write")
    er.set_defaults(func=cmd_erase)
