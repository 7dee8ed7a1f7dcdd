"""The Generate panel: an image with interventions next to the unedited image of the same seed,
their difference, and the SAE features active at a chosen patch of the edited image."""

from __future__ import annotations

import json
import queue
import re
import threading
from dataclasses import dataclass, replace
from typing import Iterator

import numpy as np
import torch

from saeuron_core.errors import SaeuronError
from saeuron_core.hooks import to_tokens
from saeuron_core.unlearning import HookedRun

from .cache import LruCache
from .features import FeatureExplorer
from .imaging import difference_heatmap, token_at
from .limits import check_int
from .recipes import Recipe, recipe_to_dict
from .session import ExplorerSession


@dataclass(frozen=True)
class EditResult:
    recipe: Recipe
    """The validated recipe that produced ``after``."""
    before: np.ndarray
    """uint8 [H, W, 3]: the same prompt and seed without interventions."""
    after: np.ndarray
    difference: np.ndarray
    """uint8 heat colours of |after - before|, scaled to its maximum."""
    max_difference: float
    """Largest per-pixel mean absolute difference, in [0, 1]."""


@dataclass(frozen=True)
class Preview:
    step: int
    image: np.ndarray
    """uint8 [H, W, 3]: the decoded latents after denoising step ``step``."""


@dataclass(frozen=True)
class FeatureInImage:
    """Where one feature fires in a generated image, step by step."""

    point: str
    feature: int
    image: np.ndarray
    """uint8 [H, W, 3]: the (edited) image the maps are laid over."""
    maps: np.ndarray
    """float32 [steps, grid rows, grid cols]: the feature's activation at each denoising step
    (conditional CFG half, after the recipe's interventions)."""
    timesteps: list[int]
    chosen: bool
    """False when no feature was asked for and the image's most active one was taken."""


@dataclass(frozen=True)
class ActiveFeature:
    feature: int
    activation: float
    top_concept: str


CLOSED_VOCABULARY = 5000
"""Tokenizers with fewer tokens than this have a closed vocabulary (the bundled model's knows only
its prompt words), where a word that splits into pieces is one the model never saw."""


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """Words of ``prompt`` that are not whole tokens of a closed-vocabulary tokenizer ([] for an
    open vocabulary such as CLIP's, where rare words legitimately split into pieces)."""
    if tokenizer is None or len(tokenizer) >= CLOSED_VOCABULARY:
        return []
    words = re.findall(r"[\w']+", prompt.lower())
    return list(dict.fromkeys(w for w in words if len(tokenizer.tokenize(w)) != 1))


class Editor:
    def __init__(self, session: ExplorerSession, features: FeatureExplorer, capture_cache_size: int = 8):
        self.session = session
        self.features = features
        self._captures = LruCache(capture_cache_size)

    def generate(self, recipe: Recipe) -> EditResult:
        recipe, before, after = self.session.before_after(recipe)
        difference, peak = difference_heatmap(before, after)
        return EditResult(recipe, before, after, difference, peak)

    def stream(self, recipe: Recipe, previews: int = 4) -> Iterator[Preview | EditResult]:
        """``Preview``s of the edited image while it is generated, then the ``EditResult``.

        The request goes down once (``session.before_after`` in its own thread, which finishes and
        releases the U-Net even when the consumer stops iterating); previews and the result come
        back through one queue.
        """
        updates: queue.Queue = queue.Queue()

        def work():
            try:
                updates.put(
                    self.session.before_after(recipe, lambda step, image: updates.put(Preview(step, image)), previews)
                )
            except BaseException as e:  # handed to the consumer, raised there
                updates.put(e)

        threading.Thread(target=work, daemon=True).start()
        while isinstance(item := updates.get(), Preview):
            yield item
        if isinstance(item, BaseException):
            raise item
        recipe, before, after = item
        difference, peak = difference_heatmap(before, after)
        yield EditResult(recipe, before, after, difference, peak)

    def features_at(
        self, recipe: Recipe, point: str, step: int, x: float, y: float, image_size: tuple[int, int], limit: int = 12
    ) -> list[ActiveFeature]:
        """SAE features active at the token under pixel (x, y) of the recipe's (edited) image
        shown at ``image_size`` (width, height), at denoising ``step``, conditional CFG half,
        strongest first."""
        recipe = self.session.complete(recipe)
        point = self.session.check_point(point)
        step = check_int("step", step, 0, recipe.steps - 1)
        maps = self._captured(recipe, point).maps[point]  # [T, C, H, W]
        row, col = token_at(x, y, image_size, tuple(maps.shape[-2:]))
        token = to_tokens(maps[step : step + 1])[0, row * maps.shape[-1] + col]
        sae = self.session.bundle.saes[point]
        with torch.inference_mode():
            acts, ids = sae.encode(token)
        order = acts.argsort(descending=True)
        return [
            ActiveFeature(int(ids[i]), float(acts[i]), self.features.top_concept(point, int(ids[i])))
            for i in order[:limit].tolist()
            if acts[i] > 0
        ]

    def feature_in_image(self, recipe: Recipe, point: str, feature: int | None = None) -> FeatureInImage:
        """The activation map of ``feature`` at ``point`` over the recipe's (edited) image at every
        step; ``None``: the feature with the largest activation anywhere in the image, any step."""
        recipe = self.session.complete(recipe)
        point = self.session.check_point(point)
        if feature is not None:
            feature = self.features.check_feature(point, feature)
        captured = self._captured(recipe, point)  # image, maps and timesteps of one pass
        maps = captured.maps[point]  # [T, C, H, W]
        steps, _, rows, cols = maps.shape
        with torch.inference_mode():
            acts, ids = self.session.bundle.saes[point].encode(to_tokens(maps))  # [T, H*W, k]
        chosen = feature is not None
        if not chosen:
            feature = int(ids.flatten()[acts.flatten().argmax()])
        dense = (acts * (ids == feature)).sum(-1).reshape(steps, rows, cols).float().numpy()
        return FeatureInImage(point, feature, captured.image, dense, [int(t) for t in captured.timesteps], chosen)

    def seeds(self, recipe: Recipe, seeds: list[int]) -> list[EditResult]:
        """Before / after pairs of the recipe at each of ``seeds`` (at most ``Limits.max_seeds``)."""
        seeds = [check_int("seed", s, 0, self.session.limits.max_seed) for s in dict.fromkeys(seeds)]
        if not seeds:
            raise SaeuronError("give at least one seed")
        if len(seeds) > self.session.limits.max_seeds:
            raise SaeuronError(f"{len(seeds)} seeds; the limit is {self.session.limits.max_seeds}")
        base = self.session.complete(recipe).unchecked()
        return [self.generate(self.session.complete(replace(base, seed=seed))) for seed in seeds]

    def _captured(self, recipe: Recipe, point: str) -> HookedRun:
        """The recipe's image with the maps of ``point`` and the timesteps, from one cached pass
        (one point per pass: an SD1.5 block over 50 steps is 64 MB)."""
        key = (json.dumps(recipe_to_dict(recipe), sort_keys=True), point)
        found = self._captures.get(key)
        if found is None:
            found = self.session.run(recipe, capture=[point])
            self._captures.put(key, found)
        return found
