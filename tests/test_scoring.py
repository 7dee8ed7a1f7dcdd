"""Concept scores and feature selection against slow, literal implementations of METHOD section 3."""

from __future__ import annotations

import pytest
import torch

from saeuron_core.errors import SaeuronError  # noqa: E402
from saeuron_core.scoring import ConceptStats, concept_means, mean_activation_all, score, select  # noqa: E402

CONCEPTS = ("Cartoon", "Sketch", "Watercolor")


def random_codes(seed: int = 0, per_concept=(3, 5, 2), steps: int = 4, n_latents: int = 12):
    """Per-image spatially averaged codes [N, T, n] (sparse, non-negative) and each image's concept."""
    gen = torch.Generator().manual_seed(seed)
    labels = [c for c, n in zip(CONCEPTS, per_concept) for _ in range(n)]
    codes = torch.rand(len(labels), steps, n_latents, generator=gen)
    codes[torch.rand(codes.shape, generator=gen) < 0.5] = 0
    return codes, labels


def stats_from(codes, labels) -> ConceptStats:
    means = torch.stack([concept_means(codes, labels, c) for c in CONCEPTS])
    counts = torch.tensor([labels.count(c) for c in CONCEPTS], dtype=torch.float32)
    return ConceptStats(
        means=means, counts=counts, concepts=CONCEPTS, timesteps=tuple(900 - 200 * t for t in range(codes.shape[1]))
    )


def slow_score(codes, labels, concept):
    """METHOD's formula, one step and one latent at a time."""
    n_images, steps, n_latents = codes.shape
    result = torch.zeros(steps, n_latents)
    for t in range(steps):
        mine = [i for i in range(n_images) if labels[i] == concept]
        others = [i for i in range(n_images) if labels[i] != concept]
        m_c = [sum(codes[i, t, j].item() for i in mine) / len(mine) for j in range(n_latents)]
        m_o = [sum(codes[i, t, j].item() for i in others) / len(others) for j in range(n_latents)]
        for j in range(n_latents):
            result[t, j] = m_c[j] / (sum(m_c) + 1e-8) - m_o[j] / (sum(m_o) + 1e-8)
    return result


def test_scores_match_the_formula():
    codes, labels = random_codes()
    stats = stats_from(codes, labels)
    for concept in CONCEPTS:
        assert torch.allclose(score(stats, concept), slow_score(codes, labels, concept), atol=1e-6), concept


def test_sparse_and_multi_label_codes():
    codes, labels = random_codes(seed=1)
    for concept in CONCEPTS:
        assert torch.allclose(
            concept_means(codes.to_sparse(), labels, concept), concept_means(codes, labels, concept), atol=1e-6
        )
    # an image may carry several concepts (an object and a style)
    multi = [{label, "Dogs" if i % 2 else "Cats"} for i, label in enumerate(labels)]
    assert torch.allclose(concept_means(codes, multi, "Sketch"), concept_means(codes, labels, "Sketch"))
    assert torch.allclose(concept_means(codes, multi, "Dogs"), codes[1::2].mean(0))


def test_selection_is_strictly_above_the_percentile():
    codes, labels = random_codes(seed=2, n_latents=40)
    scores = score(stats_from(codes, labels), "Sketch")
    for tau in (50.0, 90.0, 97.5):
        picked = select(scores, tau)
        assert len(picked) == scores.shape[0]
        for row, ids in zip(scores, picked):
            threshold = torch.quantile(row, tau / 100)
            assert ids.tolist() == [j for j in range(len(row)) if row[j] > threshold]
    ties = torch.tensor([[1.0, 1, 1, 1], [0, 1, 2, 3]])
    assert [ids.tolist() for ids in select(ties, 50)] == [[], [2, 3]]


def test_paper_percentiles_pick_one_two_three_features():
    scores = torch.rand(3, 20480, generator=torch.Generator().manual_seed(0))
    for tau, n in ((99.999, 1), (99.995, 2), (99.99, 3)):
        assert [len(ids) for ids in select(scores, tau)] == [n] * 3


@pytest.mark.parametrize("tau", [0, 100, -5, 100.5])
def test_percentile_must_be_inside_0_100(tau):
    with pytest.raises(SaeuronError, match=r"percentile must be in \(0, 100\)"):
        select(torch.rand(2, 10), tau)


def test_unknown_concept_and_missing_others():
    codes, labels = random_codes()
    stats = stats_from(codes, labels)
    with pytest.raises(SaeuronError, match="unknown concept 'Pixel'; known: Cartoon, Sketch, Watercolor"):
        score(stats, "Pixel")
    with pytest.raises(SaeuronError, match="unknown concept 'Pixel'"):
        concept_means(codes, labels, "Pixel")
    alone = ConceptStats(
        means=stats.means[:1], counts=stats.counts[:1], concepts=CONCEPTS[:1], timesteps=stats.timesteps
    )
    with pytest.raises(SaeuronError, match="at least one other concept"):
        score(alone, "Cartoon")


def test_stats_shapes_are_checked_and_timesteps_looked_up():
    with pytest.raises(SaeuronError, match="as many counts and names"):
        ConceptStats(means=torch.zeros(2, 3, 4), counts=torch.ones(3), concepts=("a", "b"), timesteps=(3, 2, 1))
    with pytest.raises(SaeuronError, match="3 steps but 2 timesteps"):
        ConceptStats(means=torch.zeros(2, 3, 4), counts=torch.ones(2), concepts=("a", "b"), timesteps=(3, 2))
    stats = ConceptStats(
        means=torch.zeros(2, 3, 4), counts=torch.ones(2), concepts=("a", "b"), timesteps=(901, 601, 301)
    )
    assert [stats.row_for_timestep(t) for t in (999, 700, 650, 1)] == [0, 1, 1, 2]


def test_mean_activation_over_all_concepts_weights_concepts_equally():
    codes, labels = random_codes()
    stats = stats_from(codes, labels)
    expected = sum(concept_means(codes, labels, c) for c in CONCEPTS) / 3
    assert torch.allclose(mean_activation_all(stats), expected)


def test_specificity_of_a_selection_by_hand():
    from saeuron_core.scoring import ConceptStats, specificity, tau_for_count

    # 2 concepts, 1 step, 4 latents: latent 0 fires 4x more on "a" than on "b"; latent 3 only on "a"
    means = torch.tensor([[[4.0, 1.0, 1.0, 2.0]], [[1.0, 1.0, 1.0, 0.0]]])
    stats = ConceptStats(means, torch.tensor([10, 10]), ("a", "b"), (999,))
    # scores: 4/8 - 1/3, 1/8 - 1/3, 1/8 - 1/3, 2/8 - 0: latent 3 (0.25) first, then latent 0 (0.17)
    one = specificity(stats, "a", tau_for_count(1, 4))
    assert (
        one["distinct_latents"] == 1
        and one["median_ratio"] == float("inf")
        and one["mass_share"] == pytest.approx(2 / 8)
    )
    two = specificity(stats, "a", tau_for_count(2, 4))
    assert (
        two["distinct_latents"] == 2
        and two["min_ratio"] == pytest.approx(4.0)
        and two["mass_share"] == pytest.approx(6 / 8)
    )


def test_specific_score_weighs_the_paper_score_by_contrast():
    """Latent 0 fires only on concept a, latent 1 as much on b, latent 2 more on b."""
    from saeuron_core.scoring import SCORES, specific_score

    means = torch.tensor([[[4.0, 2.0, 1.0]], [[0.0, 2.0, 8.0]]])  # [concept, T=1, latent]
    stats = ConceptStats(means, torch.tensor([1, 1]), ("a", "b"), (999,))
    paper = score(stats, "a")[0]
    got = specific_score(stats, "a")[0]
    # contrast: (4-0)/(4+0) = 1, (2-2)/4 = 0, (1-8)/9 < 0 -> 0
    assert torch.allclose(got, torch.stack([paper[0], torch.tensor(0.0), torch.tensor(0.0)]), atol=1e-6)
    assert paper[1] > 0  # the paper's score still ranks latent 1 (more mass share on a than on b)
    assert set(SCORES) == {"paper", "specific"}


def test_unknown_score_is_refused_where_it_enters():
    from saeuron_core.interventions import Unlearn

    with pytest.raises(SaeuronError, match="unknown score 'ratio'; scores: paper, specific"):
        Unlearn(("a",), 99.0, -1.0, score="ratio")
