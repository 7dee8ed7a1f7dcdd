"""Putting the pieces together for a model: its SAEs, their statistics, and unlearning defaults.

``SaeBundle.load(info)`` opens the SAE and the feature statistics of every default hook point of
a model (the bundled ones for "minicanvas"); ``bundle.unlearn(concepts)`` builds the ``Unlearn``
interventions, one per hook point, routing each concept to the point of its kind (objects to
the object block, styles to the style block) with the per-concept default tau / gamma.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .errors import SaeuronError
from .interventions import Unlearn, apply_interventions
from .paths import ASSETS
from .pipeline import ModelInfo, generate
from .sae import TopKSae
from .stats import FeatureStats

DEFAULTS_FILE = "unlearn_defaults.json"

#: The paper's settings (METHOD section 8): every style tau 99.999 / gamma -1; objects from its
#: Table 4 (SD v1.5 on UnlearnCanvas, 20480 latents), applied where a concept's name matches.
PAPER_TABLE4 = {
    "Architectures": (99.999, -30), "Bears": (99.999, -5), "Birds": (99.999, -5), "Butterfly": (99.99, -5),
    "Cats": (99.999, -30), "Dogs": (99.999, -15), "Fishes": (99.995, -30), "Flame": (99.995, -1),
    "Flowers": (99.99, -20), "Frogs": (99.999, -30), "Horses": (99.99, -20), "Human": (99.995, -5),
    "Jellyfish": (99.999, -1), "Rabbits": (99.99, -10), "Sandwiches": (99.999, -10), "Sea": (99.995, -5),
    "Statues": (99.995, -5), "Towers": (99.995, -1), "Trees": (99.99, -20), "Waterfalls": (99.99, -1),
}
PRESETS = {
    "paper": {
        "kinds": {"style": {"tau": 99.999, "gamma": -1.0}},
        "concepts": {name: {"tau": tau, "gamma": float(gamma), "kind": "object"} for name, (tau, gamma) in PAPER_TABLE4.items()},
        "match": "case-insensitive",
    }
}


def load_defaults(info: ModelInfo, defaults: str | Path | None = None, preset: str | None = None) -> tuple[dict, str]:
    """(tau / gamma table, where it came from). The bundled MiniCanvas table applies to the
    bundled model only; other models get ``defaults`` (a table written by ``saeuron tune``),
    a named ``preset`` or no table (then --tau / --gamma must be given)."""
    from .pipeline import BUNDLED

    if defaults is not None and preset is not None:
        raise SaeuronError("give a defaults table or a preset, not both")
    if preset is not None:
        if preset not in PRESETS:
            raise SaeuronError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        return PRESETS[preset], f"preset {preset} (METHOD section 8: styles 99.999 / -1, objects from Table 4 where names match)"
    if defaults is not None:
        path = Path(defaults)
        if not path.is_file():
            raise SaeuronError(f"no such tau/gamma table: {path}")
        try:
            table = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SaeuronError(f"{path} is not a tau/gamma table ({e})") from None
        if not isinstance(table, dict):
            raise SaeuronError(f"{path} is not a tau/gamma table (not a JSON object)")
        return table, f"table {path}"
    bundled = ASSETS / DEFAULTS_FILE
    if info.name in BUNDLED and bundled.is_file():
        return json.loads(bundled.read_text()), f"bundled MiniCanvas table {bundled}"
    return {}, "none (pass --tau and --gamma, --defaults TABLE or --preset paper)"


@dataclass
class SaeBundle:
    """SAEs and feature statistics by hook point, plus concept -> hook point routing."""

    saes: dict[str, TopKSae]
    stats: dict[str, FeatureStats]
    point_of_kind: dict[str, str]
    defaults: dict
    folders: tuple[Path, ...] = ()
    """SAE and statistics folders this bundle was read from."""
    defaults_source: str = "none"
    """Where ``defaults`` came from (a table file, the bundled MiniCanvas table, a preset)."""

    @classmethod
    def load(cls, info: ModelInfo, sae_dir: str | Path | None = None, stats_dir: str | Path | None = None, defaults: str | Path | None = None, device: str | torch.device = "cpu", preset: str | None = None) -> "SaeBundle":
        """SAEs (``sae_dir``: a folder or a hub id, default the bundled ones) and statistics of
        every hook point of ``info``; SAEs on ``device`` in float32 whatever the model's dtype."""
        from .hooks import normalize_point
        from .hub import point_folder, resolve_sae_dir

        # the paper's "unet." spelling and ours name the same block: one key per block
        info = replace(info, hook_points={kind: normalize_point(p) for kind, p in info.hook_points.items()})
        points = list(dict.fromkeys(info.hook_points.values()))
        sae_root = resolve_sae_dir(sae_dir, points) if sae_dir else ASSETS / "sae"
        stats_dir = Path(stats_dir) if stats_dir else ASSETS / "stats"
        saes, stats, folders = {}, {}, []
        for kind, point in info.hook_points.items():
            if point in saes:
                continue
            sae_folder = point_folder(sae_root, point)
            if sae_folder is None:
                raise SaeuronError(f"no SAE for hook point {point} ({kind}) in {sae_root} (looked for {point}/ and unet.{point}/); train one with `saeuron train-sae` or `saeuron prepare`")
            stats_folder = point_folder(stats_dir, point)
            if stats_folder is None:
                raise SaeuronError(f"no statistics for hook point {point} ({kind}) in {stats_dir}; compute them with `saeuron stats` or `saeuron prepare`")
            saes[point] = TopKSae.load(sae_folder, device=device, dtype=torch.float32)
            stats[point] = FeatureStats.load(stats_folder)
            if stats[point].n_latents != saes[point].num_latents:
                raise SaeuronError(f"statistics in {stats_folder} cover {stats[point].n_latents} latents, the SAE has {saes[point].num_latents}")
            folders += [sae_folder, stats_folder]
        table, source = load_defaults(info, defaults, preset)
        return cls(saes, stats, dict(info.hook_points), table, tuple(folders), source)

    def check_fits(self, unet) -> None:
        """Each SAE's d_in against its block's channels from the U-Net's config: one clear error
        before anything is generated."""
        from .hooks import block_channels

        for point, sae in self.saes.items():
            channels = block_channels(unet, point)
            if channels is not None and channels != sae.d_in:
                raise SaeuronError(f"the SAE for {point} has d_in={sae.d_in}, but that block of this U-Net outputs {channels} channels: SAEs and model do not match")

    def storage_bytes(self) -> int:
        """Bytes on disk of the SAE and statistics files (training state excluded)."""
        return sum(f.stat().st_size for d in self.folders for f in d.iterdir() if f.is_file() and f.name != "train_state.pt")

    def kind_of(self, concept: str) -> str:
        for kind, point in self.point_of_kind.items():
            if concept in self.stats[point].concepts_of_kind(kind):
                return kind
        known = sorted({c for k, p in self.point_of_kind.items() for c in self.stats[p].concepts_of_kind(k)})
        raise SaeuronError(f"unknown concept {concept!r}; the statistics know {', '.join(known)}")

    def default_params(self, concept: str) -> tuple[float, float]:
        """(tau, gamma) for a concept from the defaults table (per concept, else per kind)."""
        entry = self._default_entry(concept)
        if entry is None:
            raise SaeuronError(f"no default tau/gamma for {concept!r} in {self.defaults_source}; pass --tau and --gamma")
        return float(entry["tau"]), float(entry["gamma"])

    def _default_entry(self, concept: str) -> dict | None:
        kind = self.kind_of(concept)
        concepts = self.defaults.get("concepts", {})
        entry = concepts.get(concept)
        if entry is None and self.defaults.get("match") == "case-insensitive":
            entry = {name.lower(): e for name, e in concepts.items()}.get(concept.lower())
        if entry is not None and entry.get("kind", kind) != kind:
            entry = None  # a preset's object setting does not apply to a style of the same name
        return entry or self.defaults.get("kinds", {}).get(kind)

    def params_source(self, concept: str) -> str:
        """Where ``concept``'s default tau / gamma come from, for the output."""
        if self._default_entry(concept) is None:
            return "no default"
        return self.defaults_source

    def unlearn(self, concepts: list[str], tau: float | None = None, gamma: float | None = None, reference_error_term: bool = False) -> list[Unlearn]:
        """One ``Unlearn`` per hook point for ``concepts`` (defaults unless tau / gamma given)."""
        if not concepts:
            raise SaeuronError("no concept to unlearn")
        by_point: dict[str, list[tuple[str, float, float]]] = {}
        for concept in dict.fromkeys(concepts):
            kind = self.kind_of(concept)
            d_tau, d_gamma = (None, None) if tau is not None and gamma is not None else self.default_params(concept)
            by_point.setdefault(self.point_of_kind[kind], []).append((concept, tau if tau is not None else d_tau, gamma if gamma is not None else d_gamma))
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
