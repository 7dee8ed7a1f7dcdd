"""The Unlearn view without a judge: for a model opened with its own concepts (``saeuron prepare``),
where no classifier can say what an image shows, the grid measures change instead.

Rows are prompts from the statistics' items (the removed concepts' own prompts, then others);
columns are before and each method. Under every image two measured numbers, not judgements:

- image-level change: the mean absolute pixel difference from the before image (0-255 scale);
- feature-level change: the summed activation of the removed concepts' selected features (the
  latents SAeUron's selection picks at each step, METHOD section 4) at their hook points, averaged
  over steps and patches, from the block output re-encoded by the SAE; its drop from before.

Default tau / gamma: the run's table (``saeuron tune``) where it has the concept, else the paper's
settings (METHOD section 8): Table 4 where the name matches, else the paper's style setting
(99.999 / -1), and the view says which."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from saeuron_core.errors import SaeuronError
from saeuron_core.hooks import to_tokens
from saeuron_core.interventions import Reroute, Unlearn
from saeuron_core.unlearning import PAPER_TABLE4, PRESETS

from .formatting import percent
from .selection import selected_per_row

PAPER_STYLE = (float(PRESETS["paper"]["kinds"]["style"]["tau"]), float(PRESETS["paper"]["kinds"]["style"]["gamma"]))


def paper_params(concept: str) -> tuple[tuple[float, float], str]:
    """The paper's (tau, gamma) for a concept and what they are: its Table 4 row when the name
    matches (case-insensitive), else its setting for styles."""
    rows = {name.lower(): (float(t), float(g)) for name, (t, g) in PAPER_TABLE4.items()}
    if concept.lower() in rows:
        return rows[concept.lower()], "paper preset (Table 4 row of the same name)"
    return PAPER_STYLE, "paper preset (its style setting, 99.999 / -1: no table for this concept)"


ALL_BLOCKS = "all cross-attention blocks outside the mid block"


def removal_settings(interventions, sources: dict[str, str] | None = None) -> dict[str, dict]:
    """Per removed concept, what removes it and with which settings, read off the interventions
    themselves: "scaling" (``Unlearn``: tau, gamma) or "rerouting" (``Reroute``: the tau of its
    flag latents, anchor, detection share, blocks); ``sources``: concept -> where they came from."""
    out: dict[str, dict] = {}
    for iv in interventions:
        for concept, tau, third in iv.per_concept():
            if isinstance(iv, Reroute):
                entry = {"removal": "rerouting", "tau": tau, "anchor": third, "detect": iv.detect}
                entry["blocks"] = list(iv.blocks) or ALL_BLOCKS
            elif isinstance(iv, Unlearn):
                entry = {"removal": "scaling", "tau": tau, "gamma": third}
            else:
                entry = {"removal": type(iv).__name__, "tau": tau}
            out.setdefault(concept, {**entry, **({"source": sources[concept]} if sources else {})})
    return out


def settings_text(entry: dict) -> str:
    """One removal of ``removal_settings`` in words."""
    if entry["removal"] == "rerouting":
        anchor = "the nearest concept" if entry["anchor"] == "nearest" else entry["anchor"]
        blocks = entry["blocks"] if isinstance(entry["blocks"], str) else "the blocks " + ", ".join(entry["blocks"])
        return (
            f"rerouted to {anchor}: once its selected features (tau {entry['tau']:.6g}) flag "
            f"{percent(entry['detect'])} of the tokens or more (running mean), {blocks} see its word moved onto "
            f"{anchor}'s "
            "(counterfactual rerouting)"
        )
    if entry["removal"] == "scaling":
        return f"tau {entry['tau']:.6g}, gamma {entry['gamma']:.3g} (SAeUron's scaling)"
    return f"{entry['removal']}, tau {entry['tau']:.6g}"


@dataclass(frozen=True)
class ChangeCell:
    prompt: str
    role: str
    """"target" (a prompt labelled with a removed concept) or "retained"."""
    before: np.ndarray
    feature_before: float
    """Summed activation of the selected features, averaged over steps and patches, before."""
    after: dict = field(default_factory=dict)
    """Method -> image."""
    feature_after: dict = field(default_factory=dict)
    """Method -> the same feature activation with the removal active."""

    def pixel_change(self, method: str) -> float:
        """Mean absolute pixel difference from the before image (0-255)."""
        return float(np.abs(self.after[method].astype(np.float32) - self.before.astype(np.float32)).mean())

    def feature_drop(self, method: str) -> float | None:
        """Relative drop of the feature activation (0.4: 40% lower); None when nothing fired before."""
        if self.feature_before <= 0:
            return None
        return 1.0 - self.feature_after[method] / self.feature_before


@dataclass(frozen=True)
class ChangeGrid:
    concepts: tuple[str, ...]
    methods: tuple[str, ...]
    seed: int
    cells: list[ChangeCell]
    params: dict
    """Concept -> its SAeUron removal and settings, with where they came from (``removal_settings``)."""
    points: tuple[str, ...]
    """Hook points the feature activation is measured at."""
    selected: dict
    """Hook point -> mean number of selected features per step."""
    setup_seconds: dict = field(default_factory=dict)
    """Method -> wall time its removal took to set up (0 when cached)."""
    interventions: tuple = ()
    """SAeUron's interventions."""


def concept_prompts(bundle, concepts: list[str], budget: int) -> list[tuple[str, str]]:
    """(prompt, role) rows: prompts labelled with a removed concept (taken in turn over the
    concepts), then prompts labelled with none of them, ``budget`` at most, distinct."""
    removed = set(concepts)
    by_concept: dict[str, list[str]] = {c: [] for c in concepts}
    others: list[str] = []
    seen = set()
    for kind, point in bundle.point_of_kind.items():
        for item in bundle.stats[point].items:
            prompt, labels = item["prompt"], set(item.get("labels", {}).values())
            if (prompt, kind) in seen:
                continue
            seen.add((prompt, kind))
            hits = labels & removed
            for c in hits:
                if prompt not in by_concept[c]:
                    by_concept[c].append(prompt)
            if not hits and prompt not in others:
                others.append(prompt)
    target: list[str] = []
    for i in range(max(budget // 2, 1)):
        queue = by_concept[concepts[i % len(concepts)]]
        fresh = [p for p in queue if p not in target]
        if fresh:
            target.append(fresh[0])
    if not target:
        raise SaeuronError(f"the statistics have no prompt labelled {', '.join(concepts)}")
    retained = [p for p in others if p not in target][: max(budget - len(target), 0)]
    return [(p, "target") for p in target] + [(p, "retained") for p in retained]


class FeatureMeter:
    """The summed activation of the latents SAeUron's removal selects, per hook point: the ones an
    ``Unlearn`` scales, the flag latents a ``Reroute`` detects its concept with (the union of
    every removal at a point)."""

    def __init__(self, bundle, interventions: list):
        self.bundle = bundle
        self.stats: dict[str, object] = {}
        self.latents_per_row: dict[str, list[torch.Tensor]] = {}
        for iv in interventions:
            stats = bundle.stats[iv.point].concept_stats(bundle.kind_of(iv.concepts[0]))
            rows = selected_per_row(iv, stats)
            if iv.point in self.latents_per_row:
                rows = [torch.cat([a, b]).unique() for a, b in zip(self.latents_per_row[iv.point], rows)]
            self.stats[iv.point], self.latents_per_row[iv.point] = stats, rows

    @property
    def points(self) -> list[str]:
        return list(self.latents_per_row)

    def selected_per_step(self) -> dict[str, float]:
        return {p: float(np.mean([len(ids) for ids in rows])) for p, rows in self.latents_per_row.items()}

    @torch.inference_mode()
    def measure(self, maps: dict[str, torch.Tensor], timesteps: list) -> float:
        """Sum over hook points of the selected features' summed activation, averaged over steps
        and patches (``maps``: [T, C, H, W] block outputs per point)."""
        total = 0.0
        for point, rows in self.latents_per_row.items():
            sae = self.bundle.saes[point]
            per_step = []
            for step, block in enumerate(maps[point]):
                acts, ids = sae.encode(to_tokens(block[None].to(sae.device, torch.float32))[0])  # [HW, k]
                chosen = rows[self.stats[point].row_for_timestep(float(timesteps[step]))].to(ids.device)
                hit = torch.isin(ids, chosen)
                per_step.append(float((acts.float() * hit).sum(-1).mean()))
            total += float(np.mean(per_step)) if per_step else 0.0
        return total
