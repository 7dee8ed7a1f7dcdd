"""Concept scores of SAE features (METHOD section 3): pure functions over tensors.

Inputs are per-concept, per-step means of spatially averaged SAE codes. For concept c at step t,
with m_c[t] the mean over c's images and m_o[t] the mean over all other concepts' images::

    score_c[t] = m_c[t] / (sum(m_c[t]) + 1e-8)  -  m_o[t] / (sum(m_o[t]) + 1e-8)

and the features selected at t are those whose score is strictly above the tau-th percentile of
that step's scores.

The paper's score favours latents that carry much of the concept's activation mass even when the
other concepts fire them almost as much (measured on the bundled style SAE: selected latents fire
1.2-2x more on the concept than on the others). ``specific_score`` weighs it by the contrast::

    specific_c[t] = score_c[t] * max(0, (m_c[t] - m_o[t]) / (m_c[t] + m_o[t] + 1e-8))

which is the paper's score for a latent only the concept fires (contrast 1), and 0 for one that
fires as much elsewhere. ``SCORES`` names both; "paper" is the default everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Sequence

import torch
from torch import Tensor

from .errors import SaeuronError

EPS = 1e-8

# torch.quantile refuses more than 2**24 values along the reduced dimension.
_QUANTILE_MAX = 2**24


@dataclass(frozen=True)
class ConceptStats:
    """Per-concept, per-step mean spatially averaged codes of one SAE.

    Concepts of one kind (all styles, or all objects) partition the images, so the count-weighted
    mean over the other concepts is the mean over every image not of the concept.
    """

    means: Tensor
    """[n_concepts, T, n_latents] mean over each concept's images of the code averaged over tokens."""
    counts: Tensor
    """[n_concepts] images behind each mean."""
    concepts: tuple[str, ...]
    timesteps: tuple[int, ...]
    """Scheduler timestep of each of the T steps, in denoising order."""
    typical_top: Tensor | None = None
    """[n_latents] median of each latent's stored top activations (0 where it never fired): the
    steering unit of ``AddConcept``; None when the statistics hold no examples."""

    def __post_init__(self):
        if self.means.ndim != 3:
            raise SaeuronError(f"means must be [n_concepts, T, n_latents], got shape {tuple(self.means.shape)}")
        n_concepts, n_steps, _ = self.means.shape
        if tuple(self.counts.shape) != (n_concepts,) or len(self.concepts) != n_concepts:
            raise SaeuronError(
                f"{n_concepts} concept means need as many counts and names; got {tuple(self.counts.shape)} and "
                f"{len(self.concepts)}"
            )
        if len(set(self.concepts)) != n_concepts:
            raise SaeuronError(f"concept names repeat: {self.concepts}")
        if len(self.timesteps) != n_steps:
            raise SaeuronError(f"means cover {n_steps} steps but {len(self.timesteps)} timesteps are given")

    @property
    def n_latents(self) -> int:
        return self.means.shape[2]

    def index(self, concept: str) -> int:
        if concept not in self.concepts:
            raise SaeuronError(f"unknown concept {concept!r}; known: {', '.join(self.concepts)}")
        return self.concepts.index(concept)

    def row_for_timestep(self, timestep: float) -> int:
        """The step whose timestep is nearest to ``timestep`` (generation may use other step counts)."""
        distances = [abs(t - timestep) for t in self.timesteps]
        return distances.index(min(distances))


def concept_means(codes: Tensor, labels: Sequence[str | Collection[str]], concept: str) -> Tensor:
    """m_c: the mean over ``concept``'s images of per-image codes [N, T, n_latents] -> [T, n_latents].

    ``codes`` may be dense or a sparse COO tensor; ``labels[i]`` is image i's concept or set of
    concepts (an image may carry an object and a style).
    """
    if codes.ndim != 3 or codes.shape[0] != len(labels):
        raise SaeuronError(f"codes must be [N={len(labels)}, T, n_latents], got shape {tuple(codes.shape)}")
    members = [
        i for i, label in enumerate(labels) if (label == concept if isinstance(label, str) else concept in label)
    ]
    if not members:
        raise SaeuronError(f"unknown concept {concept!r}: no image carries it")
    chosen = codes.index_select(0, torch.tensor(members, device=codes.device))
    total = torch.sparse.sum(chosen, dim=0).to_dense() if chosen.is_sparse else chosen.sum(0)
    return total / len(members)


def other_means(stats: ConceptStats, concept: str) -> Tensor:
    """m_o [T, n_latents]: the count-weighted mean over all concepts except ``concept``."""
    c = stats.index(concept)
    weights = stats.counts.to(stats.means.dtype).clone()
    weights[c] = 0
    if weights.sum() <= 0:
        raise SaeuronError(f"scoring {concept!r} needs images of at least one other concept")
    return torch.einsum("c,ctn->tn", weights, stats.means) / weights.sum()


def score(stats: ConceptStats, concept: str) -> Tensor:
    """score_c [T, n_latents] (see the module docstring)."""
    m_c = stats.means[stats.index(concept)]
    m_o = other_means(stats, concept)
    return m_c / (m_c.sum(-1, keepdim=True) + EPS) - m_o / (m_o.sum(-1, keepdim=True) + EPS)


def specific_score(stats: ConceptStats, concept: str) -> Tensor:
    """specific_c [T, n_latents]: the paper's score times the clamped contrast (module docstring)."""
    m_c = stats.means[stats.index(concept)]
    m_o = other_means(stats, concept)
    contrast = ((m_c - m_o) / (m_c + m_o + EPS)).clamp(min=0)
    return score(stats, concept) * contrast


SCORES = {"paper": score, "specific": specific_score}
"""Concept scores by name: the paper's, and the specificity-weighted variant."""


def check_score(name: str) -> str:
    if name not in SCORES:
        raise SaeuronError(f"unknown score {name!r}; scores: {', '.join(SCORES)}")
    return name


def select(scores: Tensor, percentile: float) -> list[Tensor]:
    """Per step, the ids of latents scoring strictly above that step's ``percentile`` quantile."""
    if not 0 < percentile < 100:
        raise SaeuronError(f"percentile must be in (0, 100), got {percentile}")
    if scores.ndim != 2:
        raise SaeuronError(f"scores must be [T, n_latents], got shape {tuple(scores.shape)}")
    if scores.shape[1] > _QUANTILE_MAX:
        raise SaeuronError(f"{scores.shape[1]} latents exceed torch.quantile's limit of {_QUANTILE_MAX}")
    thresholds = torch.quantile(scores.float(), percentile / 100, dim=1, keepdim=True)
    above = scores.float() > thresholds
    return [row.nonzero().squeeze(1) for row in above]


def select_union(stats: ConceptStats, concept_taus, score_name: str = "paper") -> list[Tensor]:
    """Per statistics step, the ascending ids of the latents selected for any of
    ``concept_taus`` ((concept, tau percentile) pairs) under the score ``score_name``."""
    chosen = torch.zeros(stats.means.shape[1:], dtype=torch.bool)
    for concept, tau in concept_taus:
        for row, ids in enumerate(select(SCORES[score_name](stats, concept), tau)):
            chosen[row, ids] = True
    return [row.nonzero().squeeze(1) for row in chosen]


def mean_activation_all(stats: ConceptStats) -> Tensor:
    """[T, n_latents] mean of each latent over all concepts, each concept weighted equally.

    The unlearning threshold: a selected latent is edited only where it exceeds this value.
    Equal weights follow the reference code (the mean of the per-concept means).
    """
    return stats.means.mean(0)


def tau_for_count(count: int, num_latents: int) -> float:
    """The percentile whose strict-greater selection keeps ``count`` latents (ties aside)."""
    if not 1 <= count < num_latents:
        raise SaeuronError(f"cannot select {count} of {num_latents} latents")
    # torch.quantile interpolates at position q * (n - 1) of the sorted scores; put it halfway
    # between the (count+1)-th and the count-th largest so exactly ``count`` lie strictly above.
    return 100.0 * (num_latents - count - 0.5) / (num_latents - 1)


def specificity(stats: ConceptStats, concept: str, percentile: float, score_name: str = "paper") -> dict:
    """How specific the latents selected for ``concept`` at ``percentile`` are.

    Per step and selected latent, the ratio m_c[t][i] / m_o[t][i] (mean code on the concept's
    images over that on every other concept's images; inf where the others never fire it).
    Returns the median / min / max ratio over (step, latent), the distinct latents, and the
    share of the concept's total code mass the selection carries (mean over steps)."""
    m_c = stats.means[stats.index(concept)].float()
    m_o = other_means(stats, concept).float()
    ratios, latents, mass = [], set(), []
    for t, ids in enumerate(select(SCORES[check_score(score_name)](stats, concept), percentile)):
        for i in ids.tolist():
            ratios.append(float(m_c[t, i] / m_o[t, i]) if m_o[t, i] > 0 else float("inf"))
            latents.add(i)
        total = float(m_c[t].sum())
        mass.append(float(m_c[t, ids].sum()) / total if total > 0 else 0.0)
    finite = sorted(ratios)
    return {
        "median_ratio": finite[len(finite) // 2] if finite else float("nan"),
        "min_ratio": finite[0] if finite else float("nan"),
        "max_ratio": finite[-1] if finite else float("nan"),
        "distinct_latents": len(latents),
        "mass_share": sum(mass) / len(mass) if mass else 0.0,
    }
