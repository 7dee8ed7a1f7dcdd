"""The option groups every layer's commands share, and opening what they name.

Each group is declared once here and added to the commands that take it: the model (``--model``,
device, precision, size, steps, guidance), SAeUron's bundle (``--sae``, ``--stats``,
``--defaults``, ``--preset``) and the output (``--out``, ``--overwrite``). ``open_model`` /
``open_bundle`` resolve them once, checking before the weights are read.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path


def raise_error(message: str):
    """Stop the command with one line naming the problem (exit 2)."""
    from ..errors import SaeuronError

    raise SaeuronError(message)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set (whoever runs several processes says so there), else min(4, cores)."""
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, min(4, os.cpu_count() or 1))


def set_threads(n: int | None) -> None:
    # Oversubscription is measured to cost 25x here (and 16x for two `evaluate` processes sharing a
    # work folder on 2 cores with 2 threads each: 280 s against 17 s per image set), so an
    # OMP_NUM_THREADS the caller set wins over the default.
    import torch

    torch.set_num_threads(n or default_threads())


def add_model_options(p: argparse.ArgumentParser, steps_flag: str = "--steps") -> None:
    """--model, where and in what precision it runs, the image size, the denoising steps and
    the guidance scale (each defaults to the model's own)."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default="minicanvas", help="'minicanvas' (bundled), a diffusers pipeline folder or a hub id"
    )
    g.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else MPS, else CPU), cpu, cuda, cuda:N or mps"
    )
    g.add_argument(
        "--dtype",
        default="auto",
        help="auto (float16 on CUDA, float32 elsewhere), float32, float16 or bfloat16; SAEs always compute in float32",
    )
    g.add_argument(
        "--height",
        type=int,
        default=None,
        help="image height in pixels, a multiple of the model's downsampling factor (default: the model's)",
    )
    g.add_argument("--width", type=int, default=None, help="image width in pixels (default: the model's)")
    g.add_argument(
        steps_flag,
        dest="gen_steps",
        type=int,
        default=None,
        help="denoising steps (default: the model's, 20 for minicanvas)",
    )
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's)")


def add_bundle_options(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    """Where SAeUron's SAEs, statistics and (optionally) tau / gamma table come from."""
    g = p.add_argument_group("SAeUron")
    g.add_argument(
        "--sae",
        default=None,
        help="folder with one SAE subfolder per hook point (<point> or unet.<point>), or a hub id "
        "org/name[/subfolder] (default: bundled assets/sae)",
    )
    g.add_argument(
        "--stats", default=None, help="statistics folder, one subfolder per hook point (default: bundled assets/stats)"
    )
    if defaults:
        g.add_argument(
            "--defaults",
            default=None,
            help="tau/gamma table written by `saeuron tune` (default: the bundled table, for the bundled model only)",
        )
        g.add_argument(
            "--preset",
            default=None,
            choices=["paper"],
            help="paper: the paper's settings (styles 99.999 / -1, objects from its Table 4 where names match)",
        )


def add_output_options(
    p: argparse.ArgumentParser, required: bool = True, help: str = "output folder", overwrite: bool = True
) -> None:
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
        from ..pipeline import image_size

        return image_size(self.pipe)[0]

    @property
    def width(self) -> int:
        from ..pipeline import image_size

        return image_size(self.pipe)[1]

    def describe(self) -> str:
        """Device, precision and size, for a command's output."""
        from ..device import dtype_name

        return f"{self.pipe.device} {dtype_name(self.pipe.unet.dtype)}, {self.height}x{self.width} px"


def open_model(args, need_vocabulary: str | None = None) -> Opened:
    """Load ``args.model`` on --device in --dtype at --height x --width and resolve steps /
    guidance; ``need_vocabulary`` names what needs a benchmark vocabulary (refused on models
    without one). Device and dtype are checked before the weights are read."""
    from ..device import resolve_device, resolve_dtype
    from ..pipeline import load_pipeline, model_info

    device = resolve_device(getattr(args, "device", "cpu"))
    dtype = resolve_dtype(getattr(args, "dtype", "float32"), device)
    pipe = load_pipeline(args.model, device, dtype, getattr(args, "height", None), getattr(args, "width", None))
    info = model_info(pipe, args.model)
    if need_vocabulary and not info.concepts_of("object"):
        raise_error(f"{args.model} has no benchmark vocabulary; {need_vocabulary} runs on MiniCanvas-style models")
    steps = args.gen_steps if args.gen_steps is not None else info.default_steps
    guidance = args.guidance if args.guidance is not None else info.default_guidance
    return Opened(pipe, info, steps, guidance)


def open_bundle(args, info, pipe=None):
    """SAEs, statistics and tau/gamma table of the command; with ``pipe``, SAEs sit on its device
    and each SAE's width is checked against its block before anything is generated."""
    from ..unlearning import SaeBundle

    device = pipe.device if pipe is not None else "cpu"
    bundle = SaeBundle.load(
        info, args.sae, args.stats, getattr(args, "defaults", None), device=device, preset=getattr(args, "preset", None)
    )
    if pipe is not None:
        bundle.check_fits(pipe.unet)
    return bundle


def open_store(path: str):
    """An activation store for training or statistics; one still being cached (or stopped part
    way) is refused before any work: an SAE or statistics from part of it would pass for the whole."""
    from ..store import ActivationStore

    store = ActivationStore(path)
    if not store.is_complete:
        raise_error(
            f"the store {path} holds {len(store.completed)} of {store.n_shards} shards: finish caching "
            "(rerun the cache command) first"
        )
    return store


def check_output_folder(args) -> Path:
    """The output folder; refused before any work if it holds something and --overwrite is off."""
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        raise_error(f"{out} exists; pass --overwrite to replace it")
    return out
