"""Putting the pieces together for a model: its SAEs, their statistics, and unlearning defaults.

``SaeBundle.load(info)`` opens the SAE and the feature statistics of every default hook point of
a model (the bundled ones for "minicanvas"); ``bundle.unlearn(concepts)`` builds the ``Unlearn``
interventions, one per hook point, routing each concept to the point of its kind (objects to
the object block, styles to the style block) with the per-concept default tau / gamma.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import SaeuronError
from .interventions import Unlearn, apply_interventions
from .paths import ASSETS
from .pipeline import ModelInfo, generate
from .sae import TopKSae
from .scoring import tau_for_count
from .stats import FeatureStats

DEFAULTS_FILE = "unlearn_defaults.json"


@dataclass
class SaeBundle:
    """SAEs and feature statistics by hook point, plus concept -> hook point routing."""

    saes: dict[str, TopKSae]
    stats: dict[str, FeatureStats]
    point_of_kind: dict[str, str]
    """The primary hook point of each kind (the one the explorer shows)."""
    defaults: dict
    folders: tuple[Path, ...] = ()
    """SAE and statistics folders this bundle was read from."""
    points_of_kind: dict[str, tuple[str, ...]] | None = None
    """Every hook point a kind is removed at (default: the primary one)."""

    def __post_init__(self):
        if self.points_of_kind is None:
            self.points_of_kind = {k: (p,) for k, p in self.point_of_kind.items()}

    @classmethod
    def load(cls, info: ModelInfo, sae_dir: str | Path | None = None, stats_dir: str | Path | None = None, defaults: str | Path | None = None) -> "SaeBundle":
        sae_dir = Path(sae_dir) if sae_dir else ASSETS / "sae"
        stats_dir = Path(stats_dir) if stats_dir else ASSETS / "stats"
        saes, stats = {}, {}
        every = {k: tuple(v) for k, v in (info.points_of_kind or {k: (p,) for k, p in info.hook_points.items()}).items()}
        for kind, point in ((k, p) for k, points in every.items() for p in points):
            if point in saes:
                continue
            if not (sae_dir / point).is_dir():
                raise SaeuronError(f"no SAE for hook point {point} ({kind}) in {sae_dir}; train one with `saeuron train-sae`")
            saes[point] = TopKSae.load(sae_dir / point)
            stats[point] = FeatureStats.load(stats_dir / point)
            if stats[point].n_latents != saes[point].num_latents:
                raise SaeuronError(f"statistics in {stats_dir / point} cover {stats[point].n_latents} latents, the SAE has {saes[point].num_latents}")
        defaults_path = Path(defaults) if defaults else ASSETS / DEFAULTS_FILE
        table = json.loads(defaults_path.read_text()) if defaults_path.is_file() else {}
        folders = tuple(d / p for p in saes for d in (sae_dir, stats_dir))
        return cls(saes, stats, dict(info.hook_points), table, folders, every)

    def storage_bytes(self) -> int:
        """Bytes on disk of the SAE and statistics files (training state excluded)."""
        return sum(f.stat().st_size for d in self.folders for f in d.iterdir() if f.is_file() and f.name != "train_state.pt")

    def kind_of(self, concept: str) -> str:
        for kind, point in self.point_of_kind.items():
            if concept in self.stats[point].concepts_of_kind(kind):
                return kind
        known = sorted({c for k, p in self.point_of_kind.items() for c in self.stats[p].concepts_of_kind(k)})
        raise SaeuronError(f"unknown concept {concept!r}; the statistics know {', '.join(known)}")

    def default_entry(self, concept: str) -> dict:
        """A concept's row of the defaults table (per concept, else per kind)."""
        kind = self.kind_of(concept)
        entry = self.defaults.get("concepts", {}).get(concept) or self.defaults.get("kinds", {}).get(kind)
        if entry is None:
            raise SaeuronError(f"no default tau/gamma for {concept!r}; pass --tau and --gamma")
        return entry

    def default_params(self, concept: str) -> tuple[float, float]:
        """(tau, gamma) for a concept from the defaults table (per concept, else per kind)."""
        entry = self.default_entry(concept)
        return float(entry["tau"]), float(entry["gamma"])

    def unlearn(self, concepts: list[str], tau: float | None = None, gamma: float | None = None, reference_error_term: bool = False, count: int | None = None) -> list[Unlearn]:
        """One ``Unlearn`` per hook point for ``concepts``: each concept at every hook point of its
        kind (``points_of_kind``). ``tau`` (a percentile) or ``count`` (latents per step, turned
        into each point's percentile for that SAE's width) and ``gamma`` override the defaults;
        a default entry with ``latents_per_step`` is applied as a count at every point."""
        if not concepts:
            raise SaeuronError("no concept to unlearn")
        if tau is not None and count is not None:
            raise SaeuronError("give tau or count (latents per step), not both")
        by_point: dict[str, list[tuple[str, float, float]]] = {}
        kind_at: dict[str, str] = {}
        for concept in dict.fromkeys(concepts):
            kind = self.kind_of(concept)
            entry = None if (tau is not None or count is not None) and gamma is not None else self.default_entry(concept)
            c_gamma = gamma if gamma is not None else float(entry["gamma"])
            c_count = count if count is not None else (None if tau is not None or "latents_per_step" not in entry else int(entry["latents_per_step"]))
            for point in self.points_of_kind[kind]:
                if kind_at.setdefault(point, kind) != kind:
                    raise SaeuronError(f"{point} would remove concepts of two kinds ({kind_at[point]} and {kind}) at once; its statistics serve one kind per removal")
                c_tau = tau if tau is not None else tau_for_count(c_count, self.saes[point].num_latents) if c_count is not None else float(entry["tau"])
                by_point.setdefault(point, []).append((concept, c_tau, c_gamma))
        return [
            Unlearn(tuple(c for c, _, _ in rows), tuple(t for _, t, _ in rows), tuple(g for _, _, g in rows), point=point, reference_error_term=reference_error_term)
            for point, rows in by_point.items()
        ]

    def concept_stats(self, interventions: list) -> dict:
        """Per hook point, the ConceptStats of the kind each intervention's concepts belong to."""
        out = {}
        for iv in interventions:
            if isinstance(iv, Unlearn):
                kind = self.kind_of(iv.concepts[0])
                out[iv.point] = self.stats[iv.point].concept_stats(kind)
        return out


def generate_with(pipe, bundle: SaeBundle, interventions: list, prompts, seeds, steps: int, guidance: float, **kw):
    """``generate`` with interventions active (hooks removed afterwards, also on errors)."""
    if not interventions:
        return generate(pipe, prompts, seeds, steps, guidance, **kw)
    with apply_interventions(pipe.unet, bundle.saes, interventions, stats=bundle.concept_stats(interventions)):
        return generate(pipe, prompts, seeds, steps, guidance, **kw)
