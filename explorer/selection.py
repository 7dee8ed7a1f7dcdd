"""The latents a concept intervention selects, and where a ``Reroute`` detects its concept: what
the row effects and the judge-free Unlearn grid measure, computed as the library computes them
(``scoring.select`` per statistics row; the flag rule of ``saeuron_core.reroute``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saeuron_core.hooks import to_tokens
from saeuron_core.interventions import Reroute
from saeuron_core.sae import TopKSae
from saeuron_core.scoring import SCORES, ConceptStats, mean_activation_all, select


def selected_per_row(iv, stats: ConceptStats) -> list[Tensor]:
    """Per statistics row, the latents ``iv`` selects (``Unlearn``, ``AddConcept``, ``Replace``:
    the ones it edits; ``Reroute``: the flag latents that detect its concepts): the union over
    its concepts of the latents scoring above their tau percentile, ascending ids."""
    chosen = torch.zeros(stats.means.shape[1:], dtype=torch.bool)
    for concept, tau, *_ in iv.per_concept():
        for row, ids in enumerate(select(SCORES[iv.score](stats, concept), tau)):
            chosen[row, ids] = True
    return [row.nonzero().squeeze(1) for row in chosen]


@dataclass(frozen=True)
class Detection:
    """Whether and from which step a ``Reroute`` detects one of its concepts in a generation."""

    concept: str
    step: int | None
    """The first step whose running mean share reaches ``detect`` (None: never)."""
    peak: float
    """The largest running mean share of flagged tokens over the steps."""


@torch.inference_mode()
def detections(iv: Reroute, sae: TopKSae, stats: ConceptStats, maps: Tensor, timesteps) -> list[Detection]:
    """Per concept of ``iv``, its detection on the block outputs ``maps`` [T, C, H, W] of the flag
    point (one generation's conditional half, before any edit of that block) at ``timesteps``: a
    token is flagged where any of the concept's selected latents exceeds its mean over all
    concepts; the share of flagged tokens is averaged over the steps so far (inside ``iv.steps``)."""
    thresholds = mean_activation_all(stats).float()
    flags = []
    for concept, tau, _anchor in iv.per_concept():
        ids = select(SCORES[iv.score](stats, concept), tau)
        flags.append((concept, ids, [thresholds[r, i] for r, i in enumerate(ids)]))
    shares: dict[str, list[float]] = {c: [] for c, _, _ in flags}
    first: dict[str, int | None] = {c: None for c, _, _ in flags}
    peak = {c: 0.0 for c, _, _ in flags}
    for step, timestep in enumerate(timesteps):
        if iv.steps is not None and not iv.steps.contains(step):
            continue
        row = stats.row_for_timestep(float(timestep))
        tokens = to_tokens(maps[step : step + 1].to(sae.device, torch.float32)).reshape(-1, sae.d_in)
        top_acts, top_indices = sae.encode(tokens)
        for concept, ids, limits in flags:
            hits = top_indices[:, :, None] == ids[row].to(top_indices.device)[None, None, :]
            z = (hits * top_acts[:, :, None]).sum(1)
            shares[concept].append(float((z > limits[row].to(z.device)).any(1).float().mean()))
            running = sum(shares[concept]) / len(shares[concept])
            peak[concept] = max(peak[concept], running)
            if first[concept] is None and running >= iv.detect:
                first[concept] = step
    return [Detection(c, first[c], peak[c]) for c, _, _ in flags]
