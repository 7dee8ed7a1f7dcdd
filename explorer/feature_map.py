"""The map of decoder directions made legible: distinguishable colours, hover labels, and one
measured sentence on whether the map has concept structure at all (no Gradio here).

Structure is measured, not eyeballed: for every feature, the share of its ``k`` nearest
neighbours in the 2-D map whose top concept is its own (neighbour agreement), against the same
share with the top concepts shuffled over the points (chance for these label frequencies). A map
whose agreement is near chance is a blob as far as concepts go, whatever its shape looks like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from saeuron_core.errors import SaeuronError

from .formatting import percent, sig3

PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#9a6324",
    "#808000",
    "#000075",
    "#ffe119",
    "#469990",
    "#800000",
    "#dcbeff",
    "#aaffc3",
    "#a9a9a9",
)
"""Sasha Trubetskoy's 16 distinct colours (in order of distinctness): enough for every concept of
the bundled model (14), each told apart from the others at a glance."""
KIND_COLOURS = {"style": "#e6194b", "object": "#4363d8"}
COLOUR_BY = ("top concept", "kind", "score")
"""What the map can be coloured by: the feature's top concept, that concept's kind, its score
(quintiles)."""


def colour_map(categories) -> dict[str, str]:
    """A distinct colour per category, in first-seen order (past 16 the palette repeats)."""
    names = list(dict.fromkeys(categories))
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def map_frame(fmap, colour_by: str, labels: list[str], kind_of: dict[str, str]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The scatter's rows (x, y, feature, point, top concept, kind, score, label, colour) and
    its colour map. ``labels``: each feature's automatic label; ``kind_of``: concept -> kind."""
    if colour_by not in COLOUR_BY:
        raise SaeuronError(f"colour the map by one of {', '.join(COLOUR_BY)}; got {colour_by!r}")
    kinds = [kind_of.get(c, "") for c in fmap.top_concept]
    frame = pd.DataFrame(
        {
            "x": fmap.xy[:, 0],
            "y": fmap.xy[:, 1],
            "feature": np.arange(len(fmap.top_concept)),
            "point": fmap.point,
            "top concept": fmap.top_concept,
            "kind": kinds,
            "score": [sig3(v) for v in fmap.top_score],
            "label": labels,
        }
    )
    if colour_by == "top concept":
        order = sorted(set(fmap.top_concept), key=lambda c: (kind_of.get(c, ""), c))
        frame["colour"] = frame["top concept"]
        return frame, colour_map(order)
    if colour_by == "kind":
        frame["colour"] = frame["kind"]
        present = sorted(set(kinds))
        return frame, {k: KIND_COLOURS.get(k, PALETTE[(i + 4) % len(PALETTE)]) for i, k in enumerate(present)}
    bins = pd.qcut(np.asarray(fmap.top_score, dtype=float), 5, duplicates="drop")
    frame["colour"] = bins.astype(str)
    ramp = ["#fde725", "#5ec962", "#21918c", "#3b528b", "#440154"]  # viridis, low to high
    return frame, {str(c): ramp[i % len(ramp)] for i, c in enumerate(bins.categories)}


@dataclass(frozen=True)
class LabelStructure:
    """Neighbour agreement of labels in the map against shuffled labels."""

    agreement: float
    """Mean share of each point's k nearest map neighbours that carry its label."""
    chance: float
    """The same with the labels shuffled over the points (mean over shuffles)."""
    chance_sd: float
    """Spread of the shuffled agreement (standard deviation over shuffles)."""
    k: int
    points: int
    labels: int

    @property
    def lift(self) -> float:
        """agreement / chance (1: no structure)."""
        return self.agreement / self.chance if self.chance > 0 else float("nan")

    @property
    def z(self) -> float:
        """Distance of the agreement from chance in shuffle standard deviations."""
        if self.chance_sd > 0:
            return (self.agreement - self.chance) / self.chance_sd
        return float("inf") if self.agreement > self.chance else 0.0


def _neighbours(xy: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    found = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy, return_distance=False)
    return found[:, 1:]  # each point's own index comes first (distance 0)


def label_structure(xy: np.ndarray, labels, k: int = 10, shuffles: int = 50, seed: int = 0) -> LabelStructure:
    """How much more often map neighbours share a label than chance (see the module docstring)."""
    xy = np.asarray(xy, dtype=np.float64)
    names, codes = np.unique(np.asarray(labels), return_inverse=True)
    if xy.ndim != 2 or len(xy) != len(codes):
        raise SaeuronError(f"need one label per map point; got {len(codes)} labels for {len(xy)} points")
    if len(xy) < k + 2:
        raise SaeuronError(f"the map has {len(xy)} points; measuring neighbour agreement needs more than {k + 1}")
    near = _neighbours(xy, k)
    agreement = float((codes[near] == codes[:, None]).mean())
    rng = np.random.default_rng(seed)
    shuffled = []
    for _ in range(shuffles):
        perm = rng.permutation(codes)
        shuffled.append(float((perm[near] == perm[:, None]).mean()))
    return LabelStructure(agreement, float(np.mean(shuffled)), float(np.std(shuffled)), k, len(xy), len(names))


def structure_sentence(s: LabelStructure, what: str = "top concept") -> str:
    """One plain sentence: is there label structure in the map, and how much."""
    measured = (
        f"{percent(round(s.agreement, 3))} of each feature's {s.k} nearest neighbours on the map share its {what}, "
        f"against {percent(round(s.chance, 3))} ± {percent(round(s.chance_sd, 3))} with the {what}s shuffled "
        f"({s.labels} {what}s, {s.points} features)"
    )
    if s.labels < 2:
        return f"Every feature has the same {what}: the colours cannot show structure."
    if s.z < 3 or s.lift < 1.1:
        return f"No {what} structure beyond chance: {measured}. As far as {what}s go, the map is a blob."
    if s.lift < 1.5:
        return f"Weak {what} structure: {measured}; features of one {what} lean together but mostly mix."
    return f"Clear {what} structure: {measured}; features of one {what} cluster."
