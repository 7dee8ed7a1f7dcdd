"""The latents a concept intervention selects, and where a ``Reroute`` detects its concept: what
the row effects and the judge-free Unlearn grid measure, computed as the library computes them
(``scoring.select`` per statistics row; the flag rule of ``saeuron_core.reroute``). A
``PromptAdd`` edits no latent: its row reports its concepts' selected latents, as the paper's
removal selects them (``measured_as``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saeuron_core.interventions import PromptAdd, Reroute, Unlearn
from saeuron_core.reroute import ConceptFlags
from saeuron_core.sae import TopKSae
from saeuron_core.scoring import ConceptStats, select_union
from saeuron_core.unlearning import SaeBundle


def selected_per_row(iv, stats: ConceptStats) -> list[Tensor]:
    """Per statistics row, the latents ``iv`` selects (``Unlearn``, ``AddConcept``, ``Replace``:
    the ones it edits; ``Reroute``: the flag latents that detect its concepts): the union over
    its concepts of the latents scoring above their tau percentile, ascending ids."""
    return select_union(stats, [(concept, tau) for concept, tau, *_ in iv.per_concept()], iv.score)


def measured_as(bundle: SaeBundle, iv: PromptAdd) -> Unlearn:
    """The intervention whose selected latents a ``PromptAdd``'s row reports: its concepts'
    selection at its point as ``bundle.unlearn(concepts, paper=True)`` makes it (the table's tau,
    the paper's scaling), in the add's step window. A ``SaeuronError`` when the table has no tau
    for a concept."""
    (removal,) = [u for u in bundle.unlearn(list(iv.concepts), paper=True) if u.point == iv.point]
    return Unlearn(removal.concepts, removal.tau, removal.gamma, iv.steps, point=iv.point, score=removal.score)


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
    point (one generation's conditional half, before any edit of that block) at ``timesteps``, by
    the library's flag rule (``ConceptFlags``); the share of flagged tokens is averaged over the
    steps so far (inside ``iv.steps``)."""
    flags = ConceptFlags(iv, sae, stats)
    concepts = [c for c, _, _ in iv.per_concept()]
    shares: list[Tensor] = []
    first: list[int | None] = [None] * len(concepts)
    peak = [0.0] * len(concepts)
    for step, timestep in enumerate(timesteps):
        if iv.steps is not None and not iv.steps.contains(step):
            continue
        tokens = flags.tokens(maps[step : step + 1].to(sae.device, torch.float32), float(timestep))
        shares.append(tokens.float().mean((1, 2, 3)))  # [n_concepts]
        running = torch.stack(shares).mean(0)
        for c, value in enumerate(running.tolist()):
            peak[c] = max(peak[c], value)
            if first[c] is None and value >= iv.detect:
                first[c] = step
    return [Detection(c, first[i], peak[i]) for i, c in enumerate(concepts)]
