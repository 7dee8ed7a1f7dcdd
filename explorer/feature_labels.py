"""Automatic feature labels: what each feature is most specific to, from the concept statistics
(the Features panel's label column, its search and the card's headline)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saeuron_core.stats import FeatureStats


@dataclass(frozen=True)
class FeatureLabel:
    """What a feature is most specific to, from the concept statistics (all steps)."""

    concept: str
    """The concept whose mean activation is the largest multiple of the other concepts' of its kind."""
    kind: str
    ratio: float
    """Mean activation on ``concept`` / mean over the other concepts of its kind (inf when they are 0;
    0 when the feature never fires)."""

    @property
    def text(self) -> str:
        if self.ratio == 0:
            return "never active on the concepts"
        if self.ratio == float("inf"):
            return f"{self.concept} only (0 on other {self.kind}s)"
        return (
            f"{self.concept} x{self.ratio:.1f} vs other {self.kind}s"
            if self.ratio < 10
            else f"{self.concept} x{self.ratio:.0f} vs other {self.kind}s"
        )


def feature_labels(stats: FeatureStats) -> list[FeatureLabel]:
    """Every feature's label: the concept with the largest ratio of its mean activation (over
    steps) to the mean over the other concepts of the same kind; kinds with one concept are skipped."""
    if not stats.concepts:
        return [FeatureLabel("", "", 0.0)] * stats.n_latents
    means = (stats.concept_sums.float() / stats.concept_counts.clamp(min=1).float()[:, None, None]).mean(1)  # [C, F]
    best_ratio = torch.zeros(stats.n_latents)
    best_concept = torch.full((stats.n_latents,), -1, dtype=torch.long)
    for kind in dict.fromkeys(stats.concept_kinds):
        index = [i for i, k in enumerate(stats.concept_kinds) if k == kind]
        if len(index) < 2:
            continue
        own = means[index]
        others = (own.sum(0, keepdim=True) - own) / (len(index) - 1)
        ratio = torch.where(others > 0, own / others.clamp(min=1e-30), torch.where(own > 0, torch.inf, 0.0))
        value, where = ratio.max(0)
        better = value > best_ratio
        best_ratio = torch.where(better, value, best_ratio)
        best_concept = torch.where(better, torch.tensor(index)[where], best_concept)
    return [
        FeatureLabel(stats.concepts[c], stats.concept_kinds[c], float(r)) if c >= 0 else FeatureLabel("", "", 0.0)
        for c, r in zip(best_concept.tolist(), best_ratio.tolist())
    ]
