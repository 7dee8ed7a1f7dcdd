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
    from .recipe import RecipeConfig, build_model

    overrides = json.loads(args.config) if args.config else {}
    if args.unet_minutes is not None:
        overrides["unet_minutes"] = args.unet_minutes
    cfg = RecipeConfig(**overrides)
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
    images = generate(pipe, prompts, seeds, steps, guidance)
    image = images[0] if len(images) == 1 else image_grid(images, len(prompts), len(seeds))
    save_image(image, out)
    print(f"wrote {out} ({len(prompts)} prompt(s) x {len(seeds)} seed(s), {steps} steps, guidance {guidance})")
    return 0


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
    b.add_argument("--unet-minutes", type=float, default=None, help="wall-clock budget of U-Net training (default 90)")
    b.add_argument("--config", default=None, help='JSON overrides of RecipeConfig fields, e.g. \'{"unet_steps": 10}\'')
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
    g.add_argument("--out", default=None, help="output image path (.png, .jpg, .webp)")
    g.set_defaults(func=cmd_generate)
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
