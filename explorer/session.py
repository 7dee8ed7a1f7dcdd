"""The loaded model, SAEs, statistics and judge of one explorer process, and the one lock that
serialises every use of the U-Net.

U-Net hooks are global state on a shared module, so every hooked (or plain) generation runs inside
``session.unet()``: two requests with different interventions each get exactly their own
result. Generated images are kept in a bounded LRU cache keyed by what decides them.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saeuron_core.baselines.methods import Removal, prepare_removal
from saeuron_core.errors import SaeuronError
from saeuron_core.hooks import resolve_point
from saeuron_core.minicanvas.judge import Judge
from saeuron_core.paths import ASSETS
from saeuron_core.pipeline import (
    ModelInfo,
    generate,
    image_size,
    load_pipeline,
    model_info,
    model_info_of_folder,
    resolve_spec,
)
from saeuron_core.unlearning import HookedRun, SaeBundle

from .cache import LruCache
from .concept_map import ConceptMap, find_concept_map
from .limits import Limits
from .recipe_checks import check_recipe
from .recipes import CheckedRecipe, Recipe


@dataclass(frozen=True)
class Sources:
    """Where the session's parts came from, as recipes name them (None: bundled)."""

    model: str
    sae: str | None
    stats: str | None
    defaults: str | None


class ExplorerSession:
    """Pipeline + SaeBundle + judge, the U-Net lock and the image cache."""

    def __init__(
        self,
        pipe,
        info: ModelInfo,
        bundle: SaeBundle,
        judge: Judge | None,
        sources: Sources,
        limits: Limits = Limits(),
        image_cache_size: int = 256,
        threads: int | None = None,
        erasure_cache: str | Path | None = None,
        concept_map: ConceptMap | None = None,
        size: tuple[int, int] | None = None,
    ):
        """``pipe``: the loaded pipeline, or a function that loads it (called on first use or by
        ``load_pipeline``, so the app can serve its first page before diffusers is even imported).
        ``size``: (height, width) of the generated images (default: square, ``info.image_size``).
        ``threads``: torch CPU threads for every generation (default: the current setting).
        ``erasure_cache``: folder for ESD / UCE weight edits (None: kept in memory only).
        ``concept_map``: the block x concept kind table to show (None: no concept map tab)."""
        self.info, self.bundle, self.judge = info, bundle, judge
        self.size = tuple(size) if size is not None else (info.image_size, info.image_size)
        """(height, width) in pixels of every image this session generates."""
        self.concept_map = concept_map
        self.sources, self.limits = sources, limits
        self.threads = threads or torch.get_num_threads()
        self.images = LruCache(image_cache_size)
        self.erasure_cache = Path(erasure_cache) if erasure_cache is not None else None
        self.removals = LruCache(16)
        self._unet_lock = threading.Lock()
        self._cross_attention: tuple[str, ...] | None = None
        self._pipe_lock = threading.Lock()
        self._pipe, self._load = (
            (None, pipe) if callable(pipe) and not hasattr(pipe, "unet") else (self._checked(pipe), None)
        )

    def _checked(self, pipe):
        for point in self.bundle.saes:
            resolve_point(pipe.unet, point)  # a model without the SAEs' hook points fails here
        self.bundle.check_fits(pipe.unet)  # and SAEs of the wrong width, before anything is generated
        return pipe

    @property
    def pipe(self):
        """The pipeline, loaded on first use when the session was opened with ``defer_pipeline``."""
        if self._pipe is None:
            self.load_pipeline()
        return self._pipe

    @property
    def pipeline_loaded(self) -> bool:
        return self._pipe is not None

    def load_pipeline(self) -> None:
        """Load a deferred pipeline now (once; concurrent callers wait for the same load)."""
        with self._pipe_lock:
            if self._pipe is None:
                self._pipe = self._checked(self._load())

    @contextlib.contextmanager
    def unet(self):
        """Exclusive use of the U-Net (and its hooks) by the calling thread.

        The thread count is set again on every use: it is per thread for new request threads, and
        other libraries (numba, via UMAP) change it; a different count changes the bits of a result.
        """
        with self._unet_lock:
            torch.set_num_threads(self.threads)
            yield self.pipe

    @classmethod
    def open(
        cls,
        model: str = "minicanvas",
        sae: str | None = None,
        stats: str | None = None,
        defaults: str | None = None,
        judge: str | None = None,
        device: str = "cpu",
        limits: Limits = Limits(),
        threads: int | None = None,
        erasure_cache: str | Path | None = None,
        dtype: str | None = "float32",
        height: int | None = None,
        width: int | None = None,
        run: str | Path | None = None,
        preset: str | None = None,
        defer_pipeline: bool = False,
        concept_map: str | Path | None = None,
    ) -> "ExplorerSession":
        """Load a model and its SAEs, statistics and (when available) judge.

        Without ``judge`` the bundled judge is used for the bundled model; other models have none
        unless given (the unlearn grid then asks for one). ``run``: a folder written by
        ``saeuron prepare``, which gives the model, size, steps, guidance, hook points, SAEs,
        statistics and tau / gamma table (``sae`` / ``stats`` / ``defaults`` / size override it).
        ``defer_pipeline``: when the model's folder describes it (``saeuron.json``), read that and
        load the pipeline itself later (``load_pipeline``, or on first use); a model without it is
        loaded now. ``concept_map``: a concept map file (default: the one the model folder names
        or holds, see ``concept_map``).
        """
        from dataclasses import replace

        from saeuron_core.device import resolve_device

        spec = None
        if run is not None:
            from saeuron_core.prepare import load_run

            spec = load_run(run)
            model, sae, stats = spec.model, sae or spec.sae, stats or spec.stats
            defaults = defaults or spec.defaults
            height, width = height or spec.height, width or spec.width
        folder = resolve_spec(model)
        cmap = find_concept_map(folder, concept_map)  # a bad file fails here, before the model loads
        info = model_info_of_folder(folder, model) if defer_pipeline else None
        if info is None:
            pipe = load_pipeline(model, device, dtype, height, width)
            size = image_size(pipe)  # the size this session generates at
            info = replace(model_info(pipe, model), image_size=size[0])
            sae_device = pipe.device
        else:
            pipe = functools.partial(load_pipeline, model, device, dtype, height, width)
            size = (height or info.image_size, width or info.image_size)
            info = replace(info, image_size=size[0])
            sae_device = resolve_device(device)
        if spec is not None:
            # the run's routing replaces the model's: one point per kind, as prepare wrote it
            info = replace(
                info,
                hook_points=dict(spec.hook_points),
                points_of_kind={},
                default_steps=spec.steps,
                default_guidance=spec.guidance,
            )
        bundle = SaeBundle.load(info, sae, stats, defaults, device=sae_device, preset=preset)
        judge_dir = Path(judge) if judge else (ASSETS / "judge" if model == "minicanvas" else None)
        loaded_judge = (
            Judge.load(judge_dir)
            if judge_dir is not None and (judge or (judge_dir / "config.json").is_file())
            else None
        )

        def as_text(path):
            return None if path is None else str(path)

        return cls(
            pipe,
            info,
            bundle,
            loaded_judge,
            Sources(model, as_text(sae), as_text(stats), as_text(defaults)),
            limits,
            threads=threads,
            erasure_cache=erasure_cache,
            concept_map=cmap,
            size=size,
        )

    # ------------------------------------------------------------------ facts
    @property
    def points(self) -> list[str]:
        return list(self.bundle.saes)

    def check_point(self, point: str) -> str:
        if point not in self.bundle.saes:
            raise SaeuronError(f"no SAE for hook point {point!r}; choose one of {', '.join(self.bundle.saes)}")
        return point

    def default_recipe(self, prompt: str) -> Recipe:
        return Recipe(
            prompt,
            0,
            self.info.default_steps,
            self.info.default_guidance,
            (),
            self.sources.model,
            self.sources.sae,
            self.sources.stats,
        )

    def recipe(self, prompt, seed, steps, guidance, interventions=()) -> CheckedRecipe:
        """The one constructor of a generation request from its fields (as typed: 2.5 steps is
        refused, not rounded), checked once here; what it returns flows down unchecked.
        ``interventions``: objects, or the JSON list of the Generate panel's field (parsed in the
        same check)."""
        src = self.sources
        interventions = interventions if isinstance(interventions, str) else tuple(interventions or ())
        return self.complete(Recipe(prompt, seed, steps, guidance, interventions, src.model, src.sae, src.stats))

    def complete(self, recipe: Recipe) -> CheckedRecipe:
        """``recipe`` validated against this session's caps and SAEs, naming this session's
        sources (a ``CheckedRecipe`` is passed through: it was checked where it entered)."""
        if isinstance(recipe, CheckedRecipe):
            return recipe
        for name in ("model", "sae", "stats"):
            theirs, ours = getattr(recipe, name), getattr(self.sources, name)
            if theirs != ours:
                raise SaeuronError(f"the recipe is for {name} {theirs!r} but this app runs {ours!r}")
        return check_recipe(recipe, self.bundle, self.limits, self.cross_attention_blocks)

    def cross_attention_blocks(self) -> tuple[str, ...]:
        """Every cross-attention (``Transformer2DModel``) block of the U-Net, the mid block's
        included: the blocks a ``Reroute`` may name (asking loads a deferred pipeline)."""
        if self._cross_attention is None:
            self._cross_attention = tuple(
                name for name, module in self.pipe.unet.named_modules() if type(module).__name__ == "Transformer2DModel"
            )
        return self._cross_attention

    # ------------------------------------------------------------------ generation
    def render(self, recipe: Recipe, on_preview=None, previews: int = 4) -> np.ndarray:
        """The recipe's image as uint8 [H, W, 3] (cached when it has no interventions).

        ``on_preview(step, image)``, if given, receives the decoded latents at about ``previews``
        evenly spaced steps while the image is generated.
        """
        recipe = self.complete(recipe)
        if on_preview is None and not recipe.interventions:
            return self.plain_images([(recipe.prompt, recipe.seed)], recipe.steps, recipe.guidance)[0]
        return self.run(recipe, on_preview=on_preview, previews=previews).image

    def before_after(
        self, recipe: Recipe, on_preview=None, previews: int = 4
    ) -> tuple[CheckedRecipe, np.ndarray, np.ndarray]:
        """(the checked recipe, its image without interventions, its image) in one call: the
        unedited image from the cache (or generated), the edited one through ``run`` with previews
        (without interventions the two are one image, generated once)."""
        recipe = self.complete(recipe)
        before = self.plain_images([(recipe.prompt, recipe.seed)], recipe.steps, recipe.guidance)[0]
        if not recipe.interventions:
            return recipe, before, before
        return recipe, before, self.run(recipe, on_preview=on_preview, previews=previews).image

    def run(
        self, recipe: CheckedRecipe, capture=(), on_preview=None, previews: int = 4, removal: Removal | None = None
    ) -> HookedRun:
        """One pass of the (checked) recipe through ``SaeBundle.run`` under the U-Net lock: image,
        the maps of the ``capture`` points and the timesteps; ``removal``: a weight edit active
        meanwhile (ESD / UCE)."""
        with self.unet() as pipe, removal.active(pipe) if removal is not None else contextlib.nullcontext():
            return self.bundle.run(
                pipe,
                recipe.prompt,
                recipe.seed,
                recipe.steps,
                recipe.guidance,
                recipe.interventions,
                capture,
                on_preview,
                previews,
            )

    def to_device(self, device) -> None:
        """Move the pipeline and the SAEs to ``device`` (ZeroGPU: inside the GPU-decorated call)."""
        with self._unet_lock:
            if self.pipe.device != torch.device(device):
                self.pipe.to(device)
                for sae in self.bundle.saes.values():
                    sae.to(device)

    # ------------------------------------------------------------------ baselines
    def removal(self, method: str, concepts: list[str], progress=None) -> Removal:
        """A prepared ESD / UCE removal (memory cache, then the erasure cache, then computed).

        Computing happens under the U-Net lock: ESD trains the shared U-Net's weights in place
        (and restores them), so no other request may generate meanwhile."""
        key = (method, tuple(concepts))
        found = self.removals.get(key)
        if found is not None:
            return found
        if method == "esd" and not self.limits.train_esd and not self._esd_cached(concepts):
            raise SaeuronError(
                f"ESD for {'+'.join(concepts)} is not precomputed on this server, "
                "and training it here is off (Limits.train_esd)"
            )

        def report(i, n, loss):
            if progress is not None:
                progress(i / n, f"ESD fine-tuning {i}/{n} (loss {loss:.4f})")

        with self.unet():
            removal = prepare_removal(self.pipe, self.info, method, concepts, cache=self.erasure_cache, progress=report)
        self.removals.put(key, removal)
        return removal

    def _esd_cached(self, concepts) -> bool:
        from saeuron_core.baselines.erasure import EsdConfig
        from saeuron_core.baselines.methods import edit_folder
        from saeuron_core.edits import META_FILE

        return (
            self.erasure_cache is not None
            and (edit_folder(self.pipe, "esd", concepts, EsdConfig(), self.erasure_cache) / META_FILE).is_file()
        )

    @torch.inference_mode()
    def images_with_removal(
        self, removal: Removal, jobs: list[tuple[str, int]], steps: int, guidance: float
    ) -> list[np.ndarray]:
        """uint8 images of (prompt, seed) jobs generated with ``removal`` active, one at a time
        (bit-identical to a lone ``generate`` call, like ``plain_images``)."""
        images = []
        with self.unet(), removal.active(self.pipe):
            for prompt, seed in jobs:
                images.append(np.asarray(generate(self.pipe, prompt, [seed], steps, guidance)[0].convert("RGB")))
        return images

    def captured_image(
        self,
        prompt: str,
        seed: int,
        steps: int,
        guidance: float,
        points: list[str],
        interventions=(),
        removal: Removal | None = None,
    ) -> tuple[np.ndarray, dict[str, torch.Tensor], list]:
        """One image generated with ``interventions`` (or a weight-editing ``removal``) active, the
        block output at each of ``points`` per step ([T, C, H, W], the conditional half, recorded
        after any edit of that block) and the timesteps of those steps."""
        recipe = Recipe(prompt, seed, steps, guidance, tuple(interventions))  # the caller checked its fields
        found = self.run(recipe, capture=points, removal=removal)
        return found.image, dict(found.maps), list(found.timesteps)

    @torch.inference_mode()
    def plain_images(self, jobs: list[tuple[str, int]], steps: int, guidance: float) -> list[np.ndarray]:
        """Unedited uint8 images of (prompt, seed) jobs, from the cache or generated.

        Each image is generated alone (batch of one), so a cached image is bit-identical to what
        ``saeuron_core.pipeline.generate`` gives for that prompt and seed.
        """
        found = {}
        for prompt, seed in dict.fromkeys(jobs):
            key = (prompt, seed, steps, float(guidance))
            image = self.images.get(key)
            if image is None:
                with self.unet():
                    image = np.asarray(generate(self.pipe, prompt, [seed], steps, guidance)[0].convert("RGB"))
                self.images.put(key, image)
            found[(prompt, seed)] = image
        return [found[job] for job in jobs]
