"""The Features panel and the feature card: ranking by importance score (METHOD section 3),
how many features a percentile selects, top-activating patches and per-feature plots' data,
and a UMAP map of decoder directions. The feature labels are computed in ``feature_labels``."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from saeuron_core.errors import SaeuronError
from saeuron_core.io import atomic_path
from saeuron_core.scoring import score, select
from saeuron_core.stats import FeatureStats

from .feature_labels import FeatureLabel, feature_labels
from .imaging import crop_around, overlay, upscale
from .limits import check_float, check_int
from .session import ExplorerSession


@dataclass(frozen=True)
class RankedFeature:
    feature: int
    score: float
    """Score for the chosen concept, or for the feature's top concept when none is chosen."""
    frequency: float
    """Fraction of tokens where the feature is active."""
    top_concept: str
    """The concept with the highest score for this feature (at the chosen step)."""
    label: str = ""
    """The feature's automatic label (``FeatureLabel.text``)."""


@dataclass(frozen=True)
class Patch:
    """One stored top example of a feature, as the card shows it."""

    raw: np.ndarray
    """uint8 [H, W, 3]: the whole image at its stored size, without overlay (grey when none is available)."""
    heatmap: np.ndarray
    """float32 [grid rows, grid cols]: the feature's activation map at ``step``, in activation units."""
    scale: float
    """Activation shown as the top of the colour map (the card's strongest example)."""
    value: float
    prompt: str
    seed: int
    step: int
    timestep: int
    row: int
    col: int
    placeholder: bool = False
    """True when no image is available (grey background)."""

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the peak token in the pixels of ``raw``."""
        rows, cols = self.heatmap.shape
        height, width = self.raw.shape[:2]
        return (
            round(self.col * width / cols),
            round(self.row * height / rows),
            round((self.col + 1) * width / cols),
            round((self.row + 1) * height / rows),
        )

    def overlaid(self, opacity: float = 0.6) -> np.ndarray:
        """uint8 [H, W, 3]: ``raw`` with the heatmap blended over it."""
        return overlay(self.raw, self.heatmap, self.scale, opacity)

    @property
    def image(self):
        """PIL: the overlay, enlarged (nearest neighbour) to at least 192 pixels."""
        return upscale(self.overlaid())

    @property
    def crop(self):
        """PIL: the tokens around the activation peak of the overlay, enlarged."""
        return upscale(crop_around(self.overlaid(), self.row, self.col, self.heatmap.shape), 96)


@dataclass(frozen=True)
class FeatureCard:
    point: str
    feature: int
    step: int | None
    patches: list[Patch]
    timesteps: list[int]
    activation_by_step: dict[str, list[float]]
    """Mean spatially averaged activation per step: "all concepts" and, if chosen, the concept."""
    histogram_edges: list[float]
    histogram_counts: list[int]
    concept_means: dict[str, float]
    """Mean activation per concept at the chosen step (all steps: averaged over steps)."""
    frequency: float
    top_concept: str
    label: str = ""


@dataclass(frozen=True)
class FeatureMap:
    point: str
    xy: np.ndarray
    """[n_latents, 2] UMAP coordinates of the decoder directions."""
    top_concept: list[str]
    top_score: np.ndarray


ALL_CONCEPTS = "all concepts"
NO_CONCEPT = "(no concepts in the statistics)"


class FeatureExplorer:
    """Ranking, selection counts, feature cards and feature maps for one session."""

    def __init__(self, session: ExplorerSession, map_cache_dir: str | Path | None = None):
        self.session = session
        self.map_cache_dir = Path(map_cache_dir) if map_cache_dir else Path.home() / ".cache" / "saeuron-explorer"
        self._scores: dict[str, tuple[tuple[str, ...], torch.Tensor]] = {}
        self._maps: dict[str, FeatureMap] = {}
        self._labels: dict[str, list[FeatureLabel]] = {}
        # Separate locks: a UMAP being computed (seconds) never holds up ranking or a card.
        self._scores_lock = threading.Lock()
        self._map_lock = threading.Lock()
        self._map_errors: dict[str, str] = {}
        self._structure: dict[str, object] = {}
        self._map_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ facts
    def stats(self, point: str) -> FeatureStats:
        return self.session.bundle.stats[self.session.check_point(point)]

    def concepts(self, point: str | None = None) -> list[str]:
        point = point or self.session.points[0]
        return list(self.concept_scores(point)[0])

    def timesteps(self, point: str) -> list[int]:
        return list(self.stats(point).timesteps)

    def check_step(self, point: str, step) -> int | None:
        if step is None:
            return None
        return check_int("step", step, 0, len(self.stats(point).timesteps) - 1)

    def check_feature(self, point: str, feature) -> int:
        return check_int("feature id", feature, 0, self.stats(point).n_latents - 1)

    def concept_scores(self, point: str) -> tuple[tuple[str, ...], torch.Tensor]:
        """Every concept of every kind and its score [n_concepts, T, n_latents] at ``point`` (cached)."""
        with self._scores_lock:
            if point not in self._scores:
                stats = self.stats(point)
                names, rows = [], []
                for kind in dict.fromkeys(stats.concept_kinds):
                    by_kind = stats.concept_stats(kind)
                    for concept in by_kind.concepts:
                        names.append(concept)
                        rows.append(score(by_kind, concept).float())
                # statistics of a plain prompt list have no concepts: an empty score table
                empty = torch.zeros(0, len(stats.timesteps), stats.n_latents)
                self._scores[point] = (tuple(names), torch.stack(rows) if rows else empty)
            return self._scores[point]

    def point_of(self, concept: str) -> str:
        """The hook point of ``concept``'s kind (``saeuron.json``'s hook points)."""
        bundle = self.session.bundle
        return bundle.point_of_kind[bundle.kind_of(concept)]

    def typical_top_activation(self, point: str, feature: int) -> float:
        """Median of the feature's stored top activations (0 when it never fired): the unit of
        steering strength, so that "1x" means "as strongly as where it fires most"."""
        return self.stats(point).typical_top_activation(self.check_feature(point, feature))

    def labels(self, point: str) -> list[FeatureLabel]:
        """Every feature's automatic label at ``point`` (cached): the concept with the largest ratio
        of its mean activation to the mean over the other concepts of the same kind."""
        with self._scores_lock:
            if point not in self._labels:
                self._labels[point] = feature_labels(self.stats(point))
            return self._labels[point]

    def search(self, point: str, query: str, limit: int = 50) -> list[RankedFeature]:
        """Features whose label mentions ``query`` (a concept or any part of a label), most specific
        first; a number finds that feature id."""
        text = (query or "").strip().lower() if isinstance(query, str) else ""
        if not text:
            raise SaeuronError("enter a concept or part of a label to search for (e.g. dots)")
        limit = check_int("number of rows", limit, 1, self.session.limits.max_ranked_rows)
        labels = self.labels(point)
        if text.isdigit():
            found = [self.check_feature(point, int(text))]
        else:
            found = sorted(
                (i for i, label in enumerate(labels) if text in label.text.lower()), key=lambda i: -labels[i].ratio
            )[:limit]
        names, scores = self._scores_at(point, None)
        best_score, best = scores.max(0)
        frequency = self.stats(point).frequency
        return [
            RankedFeature(i, float(best_score[i]), float(frequency[i]), names[int(best[i])], labels[i].text)
            for i in found
        ]

    def _scores_at(self, point: str, step: int | None) -> tuple[tuple[str, ...], torch.Tensor]:
        names, scores = self.concept_scores(point)
        return names, scores.mean(1) if step is None else scores[:, step]  # [n_concepts, n_latents]

    def _concept_index(self, point: str, concept: str) -> int:
        names = self.concept_scores(point)[0]
        if concept not in names:
            raise SaeuronError(f"unknown concept {concept!r}; the statistics at {point} know {', '.join(names)}")
        return names.index(concept)

    def top_concept(self, point: str, feature: int, step: int | None = None) -> str:
        names, scores = self._scores_at(point, self.check_step(point, step))
        feature = self.check_feature(point, feature)
        return names[int(scores[:, feature].argmax())] if names else NO_CONCEPT

    # ------------------------------------------------------------------ ranking
    def rank(
        self, point: str, concept: str | None = None, step: int | None = None, limit: int = 50
    ) -> list[RankedFeature]:
        """Features by descending score for ``concept`` at ``step`` (None: averaged over steps).

        Without a concept each feature is scored for its top concept, which ranks the most
        concept-specific features of any concept first. Statistics without concepts (a plain
        prompt list) rank by activation frequency; the score column is then that frequency.
        """
        step = self.check_step(point, step)
        limit = check_int("number of rows", limit, 1, self.session.limits.max_ranked_rows)
        return self._ranked(point, concept, step, None, limit)

    def _ranked(
        self,
        point: str,
        concept: str | None,
        step: int | None,
        among: torch.Tensor | None = None,
        limit: int | None = None,
    ) -> list[RankedFeature]:
        """``rank``'s order over the features ``among`` (None: all), ``limit`` rows at most."""
        names, scores = self._scores_at(point, step)
        frequency = self.stats(point).frequency
        ids = torch.arange(len(frequency)) if among is None else among.long()
        if not names:
            if concept is not None:
                self._concept_index(point, concept)  # raises: no concepts here
            order = ids[frequency[ids].argsort(descending=True, stable=True)][:limit].tolist()
            return [RankedFeature(i, float(frequency[i]), float(frequency[i]), NO_CONCEPT) for i in order]
        best_score, best = scores.max(0)
        chosen = best_score if concept is None else scores[self._concept_index(point, concept)]
        order = ids[chosen[ids].argsort(descending=True, stable=True)][:limit].tolist()
        labels = self.labels(point)
        return [
            RankedFeature(i, float(chosen[i]), float(frequency[i]), names[int(best[i])], labels[i].text) for i in order
        ]

    def in_region(
        self,
        point: str,
        x_range=(None, None),
        y_range=(None, None),
        concept: str | None = None,
        step: int | None = None,
        limit: int = 50,
    ) -> list[RankedFeature]:
        """Features whose UMAP position lies in the box ``x_range`` x ``y_range`` (a None bound
        is open), ranked as ``rank`` ranks them. Needs the computed map (``ready_map``)."""
        fmap = self.ready_map(point)
        if fmap is None:
            raise SaeuronError("the map is still being computed in the background; try again shortly")
        bounds = []
        for name, (low, high) in (("x", x_range), ("y", y_range)):
            low, high = (None if v is None else float(v) for v in (low, high))
            if low is not None and high is not None and low > high:
                raise SaeuronError(f"UMAP {name}: the lower bound {low:g} is above the upper bound {high:g}")
            bounds.append((low, high))
        inside = np.ones(len(fmap.xy), dtype=bool)
        for axis, (low, high) in enumerate(bounds):
            if low is not None:
                inside &= fmap.xy[:, axis] >= low
            if high is not None:
                inside &= fmap.xy[:, axis] <= high
        if not inside.any():
            raise SaeuronError("no feature in the selected region")
        limit = check_int("number of rows", limit, 1, self.session.limits.max_ranked_rows)
        keep = torch.from_numpy(np.flatnonzero(inside))
        return self._ranked(point, concept, self.check_step(point, step), keep)[:limit]

    def selection_counts(self, point: str, concept: str, percentile: float) -> list[int]:
        """How many features the ``percentile`` threshold selects for ``concept`` at each step."""
        return [len(ids) for ids in self.selection(point, concept, percentile)]

    def selection(self, point: str, concept: str, percentile: float) -> list[list[int]]:
        """The feature ids the ``percentile`` threshold selects for ``concept`` at each step."""
        percentile = check_float("percentile", percentile, 1e-9, 100 - 1e-9)
        return [
            ids.tolist()
            for ids in select(self.concept_scores(point)[1][self._concept_index(point, concept)], percentile)
        ]

    def concept_score_table(self, point: str, step: int | None, features: list[int]) -> torch.Tensor:
        """[len(features), n_concepts] scores of ``features`` for every concept at ``step``."""
        names, scores = self._scores_at(point, self.check_step(point, step))
        return scores[:, features].T

    # ------------------------------------------------------------------ feature card
    def card(
        self,
        point: str,
        feature: int,
        step: int | None = None,
        concept: str | None = None,
        generate_images: bool = True,
    ) -> FeatureCard:
        """Everything the feature card shows. Patches come from the statistics' stored examples
        and thumbnails; ``generate_images`` only matters for statistics stored without
        thumbnails (then False shows uncached images as heatmaps on grey, ``Patch.placeholder``)."""
        stats = self.stats(point)
        feature, step = self.check_feature(point, feature), self.check_step(point, step)
        all_means = stats.concept_sums[:, :, feature] / stats.concept_counts.clamp(min=1)[:, None]  # [C, T]
        # statistics over a plain prompt list have no concepts: no per-concept curves, no top concept
        by_step = {ALL_CONCEPTS: all_means.mean(0).tolist()} if stats.concepts else {}
        if concept is not None:
            self._concept_index(point, concept)
            by_step[concept] = all_means[stats.concepts.index(concept)].tolist()
        at_step = all_means.mean(1) if step is None else all_means[:, step]
        return FeatureCard(
            point=point,
            feature=feature,
            step=step,
            patches=self._patches(stats, feature, step, generate_images),
            timesteps=list(stats.timesteps),
            activation_by_step=by_step,
            histogram_edges=stats.bin_edges.tolist(),
            histogram_counts=stats.histogram[feature].tolist(),
            concept_means=dict(zip(stats.concepts, at_step.tolist())),
            frequency=float(stats.frequency[feature]),
            top_concept=self.top_concept(point, feature, step) if stats.concepts else "",
            label=self.labels(point)[feature].text,
        )

    def _patches(self, stats: FeatureStats, feature: int, step: int | None, generate_images: bool) -> list[Patch]:
        """The feature's stored top examples (diverse: one per image, each at its own step, the
        same whatever ``step``), drawn on their stored thumbnails: nothing is generated.

        Only statistics stored without thumbnails fall back to the session's image cache, and,
        with ``generate_images``, to generating the missing images."""
        examples = stats.examples(feature)
        if not examples:
            return []
        images = {ex.item: stats.thumbnail(ex.item) for ex in examples}
        missing = [ex for ex in examples if images[ex.item] is None]
        if missing:
            steps, guidance = len(stats.timesteps), stats.guidance
            jobs = [(ex.prompt, ex.seed) for ex in missing]
            found = (
                self.session.plain_images(jobs, steps, guidance)
                if generate_images
                else [self.session.images.get((p, s, steps, float(guidance))) for p, s in jobs]
            )
            images.update({ex.item: img for ex, img in zip(missing, found)})
        size = self.session.info.image_size
        peak = examples[0].value
        patches = []
        for ex in examples:
            image = images[ex.item]
            raw = (
                np.full((size, size, 3), 128, dtype=np.uint8)
                if image is None
                else np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
            )
            patches.append(
                Patch(
                    raw,
                    ex.activation_map,
                    peak,
                    ex.value,
                    ex.prompt,
                    ex.seed,
                    ex.step,
                    ex.timestep,
                    ex.row,
                    ex.col,
                    image is None,
                )
            )
        return patches

    # ------------------------------------------------------------------ UMAP
    def feature_map(self, point: str) -> FeatureMap:
        """UMAP of the SAE's decoder directions, computed once per SAE and cached on disk."""
        self.session.check_point(point)
        with self._map_lock:
            if point not in self._maps:
                self._maps[point] = self._compute_map(point)
            return self._maps[point]

    def ready_map(self, point: str) -> FeatureMap | None:
        """The map if it is computed already, else None (never waits for a computation). A map
        nobody started (an app built without warm-up) is started here, so "computing" always
        means that a computation is on its way."""
        self.session.check_point(point)
        if point in self._map_errors:
            raise SaeuronError(f"the UMAP of {point} failed: {self._map_errors[point]}")
        found = self._maps.get(point)
        if found is None:
            self.start_maps()
        return found

    def map_structure(self, point: str):
        """``feature_map.label_structure`` of the top concepts on the computed map (cached)."""
        from .feature_map import label_structure

        fmap = self.ready_map(point)
        if fmap is None:
            raise SaeuronError("the map is still being computed in the background; try again shortly")
        with self._map_lock:
            if point not in self._structure:
                self._structure[point] = label_structure(fmap.xy, fmap.top_concept)
            return self._structure[point]

    def start_maps(self) -> threading.Thread:
        """Compute every hook point's map in a background thread (cached on disk for later starts).

        It takes no U-Net lock; views ask ``ready_map`` and show "computing" until it is done."""

        def work():
            for point in self.session.points:
                try:
                    self.feature_map(point)
                except Exception as e:  # reported by ready_map, never fatal to the app
                    self._map_errors[point] = f"{type(e).__name__}: {e}"

        if self._map_thread is None:
            self._map_thread = threading.Thread(target=work, name="umap", daemon=True)
            self._map_thread.start()
        return self._map_thread

    def _compute_map(self, point: str) -> FeatureMap:
        w_dec = self.session.bundle.saes[point].W_dec.detach().float().cpu().numpy()
        key = hashlib.sha256(np.ascontiguousarray(w_dec).tobytes()).hexdigest()[:16]
        cache = self.map_cache_dir / f"umap-{key}.npy"
        if cache.is_file():
            xy = np.load(cache)
        else:
            import umap

            unit = w_dec / np.linalg.norm(w_dec, axis=1, keepdims=True).clip(1e-12)
            try:
                xy = (
                    umap.UMAP(n_neighbors=min(15, len(unit) - 1), metric="cosine", random_state=0, n_jobs=1)
                    .fit_transform(unit)
                    .astype(np.float32)
                )
            finally:
                torch.set_num_threads(self.session.threads)  # numba changes it
            with atomic_path(cache) as tmp, open(tmp, "wb") as f:
                np.save(f, xy)
        names, scores = self._scores_at(point, None)
        if not names:
            return FeatureMap(point, xy, [NO_CONCEPT] * len(xy), self.stats(point).frequency.numpy())
        best_score, best = scores.max(0)
        return FeatureMap(point, xy, [names[i] for i in best.tolist()], best_score.numpy())
