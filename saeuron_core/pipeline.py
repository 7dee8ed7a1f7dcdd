"""Loading Stable Diffusion pipelines and generating images: one code path for every model.

``load_pipeline("minicanvas")`` opens the bundled offline model; any other spec is a local
diffusers folder or a hub id (SD1.4 / SD1.5 / UnlearnCanvas checkpoints), handed to the same
``StableDiffusionPipeline.from_pretrained`` call.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .device import explain_dtype_failure, resolve_device, resolve_dtype
from .errors import SaeuronError
from .paths import ASSETS

BUNDLED = {"minicanvas": ASSETS / "minicanvas"}
INFO_FILE = "saeuron.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelInfo:
    """What the project knows about a pipeline beyond diffusers' own config."""

    name: str
    """"minicanvas", a folder path or a hub id."""
    image_size: int
    """Default generated image side in pixels."""
    hook_points: dict = field(default_factory=dict)
    """Default SAE hook point by concept kind, e.g. {"object": ..., "style": ...} (the first of
    ``points_of_kind``: the one the explorer shows)."""
    default_steps: int = 50
    default_guidance: float = 9.0
    vocabulary: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The concept names ``saeuron.json`` declares, by concept kind like ``hook_points``, e.g.
    {"object": ("circle", ...), "style": ("dots", ...)} on a benchmark model; empty for general
    models, whose concepts are whatever their statistics were labelled with."""
    points_of_kind: dict = field(default_factory=dict)
    """Every hook point a concept kind is removed at, e.g. {"style": ("up_blocks.1.attentions.1",
    "mid_block.attentions.0")}; defaults to ``hook_points``. ``saeuron.json`` may give a kind a
    list of points."""

    def __post_init__(self):
        for kind, point in self.hook_points.items():
            self.points_of_kind.setdefault(kind, (point,))

    def concepts_of(self, kind: str) -> tuple[str, ...]:
        """The declared concept names of ``kind`` (empty when the model declares none)."""
        return self.vocabulary.get(kind, ())


def split_hook_points(meta_points: dict) -> tuple[dict, dict]:
    """``saeuron.json``'s hook_points (kind -> point or list of points) as (kind -> first point,
    kind -> tuple of points)."""
    first, every = {}, {}
    for kind, points in meta_points.items():
        points = (points,) if isinstance(points, str) else tuple(points)
        if not points or not all(isinstance(p, str) and p for p in points):
            raise SaeuronError(
                f"hook points of {kind!r} must be a block name or a non-empty list of them, got {meta_points[kind]!r}"
            )
        first[kind], every[kind] = points[0], points
    return first, every


# SD1.x defaults, as used by the paper (METHOD section 1).
_SD1_HOOKS = {"object": "up_blocks.1.attentions.1", "style": "up_blocks.1.attentions.2"}


def resolve_spec(spec: str) -> str:
    """The folder or hub id that ``spec`` names, or a clear error."""
    if not isinstance(spec, str) or not spec.strip():
        raise SaeuronError("model spec is empty; use 'minicanvas', a pipeline folder or a hub id")
    if spec in BUNDLED:
        folder = BUNDLED[spec]
        if not (folder / "model_index.json").is_file():
            raise SaeuronError(f"the bundled model is missing from {folder}; run `saeuron build-model` to create it")
        return str(folder)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise SaeuronError(f"{spec} is not a diffusers pipeline folder (no model_index.json)")
        return str(path)
    if _HUB_ID.match(spec) and not spec.startswith((".", "/")):
        return spec
    raise SaeuronError(
        f"unknown model spec {spec!r}: not 'minicanvas', not an existing folder, not a hub id (org/name)"
    )


def stable_diffusion_pipeline_class():
    """diffusers' ``StableDiffusionPipeline``, imported without transformers' torchvision notices.

    Importing it makes diffusers ask transformers for ``CLIPImageProcessor`` (the safety
    checker's feature extractor, which this project never loads) and ``SiglipImageProcessor``;
    without torchvision (it breaks beside the CPU torch wheel), transformers resolves each to
    its PIL class and logs a warning at start. Binding the PIL classes first is that same
    fallback, without the notice; with torchvision installed nothing changes."""
    import sys

    import transformers
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        names = ("CLIPImageProcessor", "SiglipImageProcessor")
        pil_classes = {name: getattr(transformers, f"{name}Pil", None) for name in names}
        # resolving a class can re-register the lazy module: bind on the one imports read now
        module = sys.modules["transformers"]
        for name, pil_class in pil_classes.items():
            if pil_class is not None and name not in vars(module):
                setattr(module, name, pil_class)
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


@contextlib.contextmanager
def _quiet_loading():
    """diffusers' and transformers' loading bars off while a pipeline loads (a sub-second load
    on the bundled model; in a server's start log they are noise), as they were afterwards."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    was = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for m, _ in was:
        m.disable_progress_bar()
    try:
        yield
    finally:
        for m, enabled in was:
            if enabled:
                m.enable_progress_bar()


def load_pipeline(
    spec: str = "minicanvas",
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = torch.float32,
    height: int | None = None,
    width: int | None = None,
):
    """Load a StableDiffusionPipeline from 'minicanvas', a local folder or a hub id.

    ``device`` / ``dtype`` as ``saeuron_core.device`` resolves them ("auto" allowed);
    ``height`` / ``width`` set the image size every generation of this library uses with the
    pipeline (default: the model's native size), checked against the downsampling factor.
    """
    StableDiffusionPipeline = stable_diffusion_pipeline_class()
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    source = resolve_spec(spec)
    try:
        with _quiet_loading():
            pipe = StableDiffusionPipeline.from_pretrained(
                source, dtype=dtype, safety_checker=None, requires_safety_checker=False
            )
    except (OSError, ValueError, EnvironmentError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SaeuronError(f"could not load pipeline {spec!r}: {first_line}") from None
    pipe.set_progress_bar_config(disable=True)
    set_image_size(pipe, height, width)
    return pipe.to(device)


# --------------------------------------------------------------------------- image size
SIZE_ATTRIBUTE = "saeuron_image_size"


def size_multiple(pipe) -> int:
    """Pixels per side that height and width must be multiples of: the VAE's factor times the
    U-Net's downsampling (2 per level below the top), so every level's map has whole cells."""
    levels = len(pipe.unet.config.block_out_channels)
    return int(pipe.vae_scale_factor) * 2 ** (levels - 1)


def native_size(pipe) -> tuple[int, int]:
    """(height, width) the model was configured for: U-Net sample_size x VAE factor."""
    sample = pipe.unet.config.sample_size
    h, w = (sample, sample) if isinstance(sample, int) else tuple(sample)
    return int(h) * int(pipe.vae_scale_factor), int(w) * int(pipe.vae_scale_factor)


def check_image_size(pipe, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width), each defaulting to the native size, or one clear error."""
    native_h, native_w = native_size(pipe)
    multiple = size_multiple(pipe)
    for name, value in (("height", height), ("width", width)):
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < multiple or value % multiple
        ):
            raise SaeuronError(
                f"{name} {value!r} must be a positive multiple of {multiple} for this model (VAE factor "
                f"{pipe.vae_scale_factor} x U-Net downsampling {multiple // pipe.vae_scale_factor}); native size "
                f"{native_h}x{native_w}"
            )
    return (native_h if height is None else height), (native_w if width is None else width)


def set_image_size(pipe, height: int | None = None, width: int | None = None) -> tuple[int, int]:
    """Validate and remember the size ``generate`` uses for ``pipe``; returns (height, width)."""
    size = check_image_size(pipe, height, width)
    setattr(pipe, SIZE_ATTRIBUTE, size)
    return size


def image_size(pipe) -> tuple[int, int]:
    """(height, width) generations with ``pipe`` run at (set by ``load_pipeline``, else native)."""
    return getattr(pipe, SIZE_ATTRIBUTE, None) or native_size(pipe)


def model_info(pipe, name: str | None = None) -> ModelInfo:
    """The project's metadata for a loaded pipeline (bundled ``saeuron.json`` or SD1.x defaults)."""
    info = model_info_of_folder(pipe.name_or_path or "", name)
    if info is not None:
        return info
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return ModelInfo(name=name or str(pipe.name_or_path), image_size=int(size), hook_points=dict(_SD1_HOOKS))


def model_info_of_folder(folder: str | Path, name: str | None = None) -> ModelInfo | None:
    """The metadata in a pipeline folder's ``saeuron.json`` without loading the pipeline (None
    when the folder has none, e.g. a hub id or a plain diffusers folder)."""
    meta_file = Path(folder) / INFO_FILE
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    first, every = split_hook_points(meta["hook_points"])
    return ModelInfo(
        name=name or meta.get("name", str(folder)),
        image_size=int(meta["image_size"]),
        hook_points=first,
        points_of_kind=every,
        default_steps=int(meta["default_steps"]),
        default_guidance=float(meta["default_guidance"]),
        vocabulary=read_vocabulary(meta),
    )


# Folders written before the vocabulary was keyed by kind list their names under these keys.
_LEGACY_VOCABULARY_KEYS = {"object": "objects", "style": "styles"}


def read_vocabulary(meta: dict) -> dict[str, tuple[str, ...]]:
    """``saeuron.json``'s concept vocabulary (``"vocabulary": {kind: [name, ...]}``, or the older
    top-level ``"objects"`` / ``"styles"`` lists) as kind -> names; kinds without names left out."""
    declared = meta.get("vocabulary")
    if declared is None:
        declared = {kind: meta[key] for kind, key in _LEGACY_VOCABULARY_KEYS.items() if key in meta}
    if not isinstance(declared, dict):
        raise SaeuronError(f"{INFO_FILE}'s vocabulary must map a concept kind to a list of names, got {declared!r}")
    vocabulary = {}
    for kind, names in declared.items():
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
            raise SaeuronError(f"{INFO_FILE}'s vocabulary of {kind!r} must be a list of concept names, got {names!r}")
        if names:
            vocabulary[kind] = tuple(names)
    return vocabulary


def _check_generation_args(prompts, seeds, steps, guidance) -> None:
    if not prompts:
        raise SaeuronError("no prompt given")
    for p in prompts:
        if not isinstance(p, str):
            raise SaeuronError(f"prompt must be text, got {type(p).__name__}")
    if not seeds:
        raise SaeuronError("no seed given")
    for s in seeds:
        if not isinstance(s, int) or s < 0:
            raise SaeuronError(f"seeds must be non-negative integers, got {s!r}")
    if not isinstance(steps, int) or steps < 1:
        raise SaeuronError(f"steps must be a positive integer, got {steps!r}")
    if guidance < 0:
        raise SaeuronError(f"guidance must be >= 0, got {guidance}")


def generate(
    pipe,
    prompts: list[str] | str,
    seeds: list[int] | int,
    steps: int,
    guidance: float,
    negative_prompt: str = "",
    batch_size: int = 16,
    output_type: str = "pil",
    callback_on_step_end=None,
):
    """Images for every (prompt, seed) pair, prompt-major: [p0s0, p0s1, ..., p1s0, ...].

    Each image draws its initial noise from its own ``torch.Generator(seed)``, so an image
    depends on its prompt and seed only, not on what else is in the batch.
    ``callback_on_step_end(pipe, step, timestep, {"latents": ...})``: diffusers' step callback
    (e.g. previews), called for each batch; it returns the dict.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    _check_generation_args(prompts, seeds, steps, guidance)
    jobs = [(p, s) for p in prompts for s in seeds]
    return generate_jobs(pipe, jobs, steps, guidance, negative_prompt, batch_size, output_type, callback_on_step_end)


def token_ids(pipe, prompts: list[str]) -> torch.Tensor:
    """Token ids [N, L] of ``prompts`` as the pipeline's text encoder takes them (padded, cut)."""
    tok = pipe.tokenizer
    return tok(
        prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def text_embeddings(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids [N, L], last hidden states [N, L, d]) of the pipeline's text encoder."""
    ids = token_ids(pipe, prompts)
    with torch.no_grad():
        hidden = pipe.text_encoder(ids.to(pipe.text_encoder.device))[0]
    return ids, hidden.float()


def generate_jobs(
    pipe,
    jobs: list[tuple[str, int]],
    steps: int,
    guidance: float,
    negative_prompt: str = "",
    batch_size: int = 16,
    output_type: str = "pil",
    callback_on_step_end=None,
):
    """One image per (prompt, seed) job, in order; see ``generate``."""
    _check_generation_args([p for p, _ in jobs], [s for _, s in jobs], steps, guidance)
    height, width = image_size(pipe)
    step_callback = (
        {}
        if callback_on_step_end is None
        else {"callback_on_step_end": callback_on_step_end, "callback_on_step_end_tensor_inputs": ["latents"]}
    )
    images = []
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i : i + batch_size]
        try:
            out = pipe(
                prompt=[p for p, _ in chunk],
                negative_prompt=[negative_prompt] * len(chunk),
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=height,
                width=width,
                # CPU generators: the same seed gives the same initial noise on every device
                generator=[torch.Generator("cpu").manual_seed(s) for _, s in chunk],
                output_type=output_type,
                **step_callback,
            )
        except (RuntimeError, NotImplementedError) as e:
            explained = explain_dtype_failure(e, pipe.device, pipe.unet.dtype)
            if explained is None:
                raise
            raise explained from None
        images.extend(out.images)
    return images


def image_grid(images, rows: int, cols: int):
    """Paste equally sized PIL images into a rows x cols grid."""
    from PIL import Image

    if len(images) != rows * cols:
        raise SaeuronError(f"{len(images)} images do not fill a {rows}x{cols} grid")
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid


def save_image(image, path: str | Path) -> Path:
    """Save atomically; the format comes from the file extension."""
    from PIL import Image

    from .io import atomic_path

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise SaeuronError(f"cannot tell the image format of {path} (use .png, .jpg or .webp)")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt)
    return path


def decode_preview(pipe, latents: torch.Tensor):
    """uint8 [H, W, 3] of the first image in a batch of latents (a preview mid-generation)."""
    vae = pipe.vae
    pixels = vae.decode(latents[:1] / vae.config.scaling_factor, return_dict=False)[0][0]
    return ((pixels.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
