"""Interventions: exactness where nothing is edited, locality of edits, the unlearning rule."""

from __future__ import annotations

import contextlib

import pytest
import torch

from saeuron_core.errors import SaeuronError  # noqa: E402
from saeuron_core.hooks import Step, capture_activations, to_tokens  # noqa: E402
from saeuron_core.interventions import (  # noqa: E402
    PointEditor,
    Replace,
    ScaleFeatures,
    Steer,
    StepWindow,
    Unlearn,
    apply_interventions,
)
from saeuron_core.minicanvas.build import BuildConfig, make_unet  # noqa: E402
from saeuron_core.sae import SaeConfig, TopKSae  # noqa: E402
from saeuron_core.scoring import ConceptStats, mean_activation_all, score, select  # noqa: E402

POINT = "up_blocks.1.attentions.1"
CONCEPTS = ("Cartoon", "Sketch", "Watercolor")
TIMESTEPS = (900, 500, 100)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return make_unet(BuildConfig(unet_channels=[32, 32, 32], text_hidden=32), 8).eval()


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(1)
    return TopKSae(SaeConfig(d_in=32, num_latents=128, k=8)).requires_grad_(False)


def run(unet, timestep: int = 500, batch: int = 2):
    gen = torch.Generator().manual_seed(0)
    sample, text = torch.randn(batch, 4, 8, 8, generator=gen), torch.randn(batch, 5, 32, generator=gen)
    with torch.no_grad():
        return unet(sample, timestep, text).sample


def block_output(unet, interventions=(), saes=None, stats=None, **kwargs) -> torch.Tensor:
    """The (possibly edited) output of POINT in one U-Net call: a capture registered after the edit."""
    editing = (
        apply_interventions(unet, saes, interventions, stats, **kwargs) if interventions else contextlib.nullcontext()
    )
    with editing, capture_activations(unet, POINT) as rec:
        run(unet)
    return rec.stacked(POINT)[0]


def uniform_stats(n_latents: int) -> ConceptStats:
    """Every concept looks the same: every score is 0, so no feature is selected."""
    return ConceptStats(torch.full((3, 3, n_latents), 0.5), torch.tensor([4.0, 2.0, 3.0]), CONCEPTS, TIMESTEPS)


def random_stats(n_latents: int, scale: float) -> ConceptStats:
    means = torch.rand(3, 3, n_latents, generator=torch.Generator().manual_seed(0)) * scale
    return ConceptStats(means, torch.tensor([4.0, 2.0, 3.0]), CONCEPTS, TIMESTEPS)


def fired_tokens(sae, x: torch.Tensor, feature: int) -> torch.Tensor:
    """[B * H * W] bool: tokens of block output x where ``feature`` is in the top-k with z > 0."""
    acts, idx = sae.encode(to_tokens(x).reshape(-1, x.shape[1]))
    return ((idx == feature) & (acts > 0)).any(-1)


def changed_tokens(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (to_tokens(before) != to_tokens(after)).any(-1).reshape(-1)


def test_nothing_to_do_leaves_the_unet_bit_identical(unet, sae):
    reference = run(unet)
    cases = [
        [],
        [ScaleFeatures((3, 7), 1.0)],
        [ScaleFeatures((3,), 0.0, steps=StepWindow(1, 4))],  # a single call is step 0
        [Unlearn(CONCEPTS[:2], tau=90.0, gamma=-5.0)],  # with uniform statistics nothing is selected
    ]
    for interventions in cases:
        with apply_interventions(unet, {POINT: sae}, interventions, stats=uniform_stats(sae.num_latents)):
            assert torch.equal(run(unet), reference), interventions


def test_no_op_returns_the_original_tensor_object(sae):
    x = torch.randn(2, 32, 4, 6)
    for interventions in ([], [ScaleFeatures((1, 2), 1.0)], [Unlearn(("Sketch",), tau=50.0)]):
        editor = PointEditor(POINT, sae, interventions, uniform_stats(sae.num_latents))
        assert editor(x, Step(500, 0)) is x


def test_ablation_changes_only_tokens_where_the_feature_fired(unet, sae):
    before = block_output(unet)
    counts = torch.stack([fired_tokens(sae, before, f) for f in range(sae.num_latents)]).sum(1)
    feature = int((counts - 16).abs().argmin())  # fires at about half of the 32 tokens
    after = block_output(unet, [ScaleFeatures((feature,), 0.0)], {POINT: sae})
    fired = fired_tokens(sae, before, feature)
    assert 0 < fired.sum() < fired.numel()
    assert torch.equal(changed_tokens(before, after), fired)
    # the change is exactly minus the feature's contribution z_i * W_dec[i]
    acts, idx = sae.encode(to_tokens(before).reshape(-1, 32))
    z_i = (acts * (idx == feature)).sum(-1)
    expected = to_tokens(before).reshape(-1, 32) - z_i[:, None] * sae.W_dec[feature]
    assert torch.allclose(to_tokens(after).reshape(-1, 32), expected, atol=1e-5)


def test_steering_changes_only_masked_tokens_in_both_halves(unet, sae):
    before = block_output(unet)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[1, 2] = mask[3, 0] = True
    after = block_output(unet, [Steer((5,), 4.0, mask=mask)], {POINT: sae})
    assert torch.equal(changed_tokens(before, after), mask.reshape(-1).repeat(2))
    delta = to_tokens(after) - to_tokens(before)
    assert torch.allclose(delta[:, 1 * 4 + 2], (4.0 * sae.W_dec[5]).expand(2, -1), atol=1e-5)
    # token indices address the same places; halves="cond" edits only the second half
    only_cond = block_output(unet, [Steer((5,), 4.0, mask=(6, 12))], {POINT: sae}, halves="cond")
    assert torch.equal(
        changed_tokens(before, only_cond), torch.cat([torch.zeros(16, dtype=torch.bool), mask.reshape(-1)])
    )


def test_reference_error_term_differs_even_with_nothing_selected(unet, sae):
    before = block_output(unet)
    stats = uniform_stats(sae.num_latents)
    after = block_output(unet, [Unlearn(("Sketch",), tau=90.0, reference_error_term=True)], {POINT: sae}, stats)
    assert not torch.equal(after, before)
    tokens = to_tokens(before).reshape(-1, 32)
    x_hat = sae.decode(*sae.encode(tokens))
    assert torch.allclose(to_tokens(after).reshape(-1, 32), 2 * x_hat - tokens, atol=1e-5)


def slow_unlearn(sae, x, stats, concepts, taus, gammas, timestep):
    """METHOD section 4 on dense codes, latent by latent."""
    row = min(range(len(stats.timesteps)), key=lambda r: abs(stats.timesteps[r] - timestep))
    threshold = mean_activation_all(stats)[row]
    factor = {}
    for concept, tau, gamma in zip(concepts, taus, gammas):
        m_c = stats.means[stats.index(concept), row]
        for i in select(score(stats, concept), tau)[row].tolist():
            if i not in factor or abs(gamma * m_c[i]) > abs(factor[i]):
                factor[i] = gamma * m_c[i]
    tokens = to_tokens(x).reshape(-1, x.shape[1])
    z = sae.dense_codes(*sae.encode(tokens))
    z_edited = z.clone()
    for n in range(z.shape[0]):
        for i, f in factor.items():
            if z[n, i] > threshold[i]:
                z_edited[n, i] = z[n, i] * f
    return tokens + (z_edited - z) @ sae.W_dec


def test_unlearning_matches_the_method(sae):
    x = torch.randn(2, 32, 4, 6, generator=torch.Generator().manual_seed(3)) * 2
    z = sae.dense_codes(*sae.encode(to_tokens(x).reshape(-1, 32)))
    # statistics on the codes' scale, so firing thresholds split the tokens where latents fire
    stats = random_stats(sae.num_latents, scale=float(z[z > 0].median()))
    # one latent typical of both removed concepts: selected twice, with different multipliers
    shared = int((z > 0).sum(0).argmax())
    stats.means[[0, 2], :, shared] = z[:, shared].max()
    stats.means[1, :, shared] = 0
    concepts, taus, gammas = ("Cartoon", "Watercolor"), (80.0, 80.0), (-3.0, -10.0)
    threshold = mean_activation_all(stats)
    editor = PointEditor(POINT, sae, [Unlearn(concepts, tau=taus, gamma=gammas)], stats)
    for timestep, row in ((950, 0), (480, 1), (20, 2)):
        selected = [select(score(stats, c), tau)[row] for c, tau in zip(concepts, taus)]
        assert all(shared in ids for ids in selected)
        union = torch.cat(selected).unique()
        fired = z[:, union] > 0
        above = z[:, union] > threshold[row, union]
        assert above.any() and (fired & ~above).any()  # some firings are edited, some are not

        out = editor(x, Step(timestep, 0))
        expected = slow_unlearn(sae, x, stats, concepts, taus, gammas, timestep)
        assert torch.allclose(to_tokens(out).reshape(-1, 32), expected, atol=1e-5)


def test_step_window_uses_the_step_index(sae):
    x = torch.randn(1, 32, 4, 4)
    editor = PointEditor(POINT, sae, [Steer((0,), 1.0, steps=StepWindow(1, 3))], None)
    assert editor(x, Step(900, 0)) is x
    assert not torch.equal(editor(x, Step(500, 1)), x)
    assert editor(x, Step(100, 3)) is x
    with pytest.raises(SaeuronError, match="0 <= start < stop"):
        StepWindow(3, 3)


def test_invalid_interventions_are_named(unet, sae):
    stats = random_stats(sae.num_latents, scale=1.0)
    with pytest.raises(SaeuronError, match=r"feature ids \[128\] are out of range"):
        PointEditor(POINT, sae, [ScaleFeatures((1, 128), 0.0)], None)
    with pytest.raises(SaeuronError, match="unknown concept 'Pixel'"):
        PointEditor(POINT, sae, [Unlearn(("Pixel",))], stats)
    with pytest.raises(SaeuronError, match="needs concept statistics"):
        PointEditor(POINT, sae, [Unlearn(("Sketch",))], None)
    with pytest.raises(SaeuronError, match="tau is a percentile"):
        Unlearn(("Sketch",), tau=100.0)
    with pytest.raises(SaeuronError, match="gamma needs one value or one per concept"):
        Unlearn(("Sketch", "Cartoon"), gamma=(-1.0, -2.0, -3.0))
    with pytest.raises(SaeuronError, match=r"steering mask is \(3, 3\) but the map is 4x4"):
        PointEditor(POINT, sae, [Steer((1,), 1.0, mask=torch.ones(3, 3, dtype=torch.bool))], None)(
            torch.randn(1, 32, 4, 4), Step(1, 0)
        )
    small = TopKSae(SaeConfig(d_in=16, num_latents=32, k=4))
    with pytest.raises(SaeuronError, match="has d_in=16 but the block outputs 32 channels"):
        block_output(unet, [ScaleFeatures((1,), 0.0)], {POINT: small})
    with pytest.raises(SaeuronError, match="does not name its hook point"):
        with apply_interventions(unet, {POINT: sae, "up_blocks.1.attentions.0": sae}, [ScaleFeatures((1,), 0.0)]):
            pass


def concept_stats_with_unit(n_latents: int) -> ConceptStats:
    """ "Sketch" stands out on latents 3 and 7 at every step; every latent's typical top activation is 2."""
    means = torch.full((3, 3, n_latents), 0.1)
    means[1, :, [3, 7]] = 5.0
    return ConceptStats(
        means, torch.tensor([4.0, 2.0, 3.0]), CONCEPTS, TIMESTEPS, typical_top=torch.full((n_latents,), 2.0)
    )


def test_add_concept_steers_the_selected_latents_into_the_conditional_half(unet, sae):
    from saeuron_core.interventions import AddConcept

    stats = concept_stats_with_unit(sae.num_latents)
    before = block_output(unet)
    after = block_output(unet, [AddConcept(("Sketch",), 1.5, tau=98.0)], {POINT: sae}, stats)
    delta = (to_tokens(after) - to_tokens(before)).reshape(2, 16, 32)
    # every conditional token moves by 1.5 x 2 x (W_dec[3] + W_dec[7]); the unconditional half stays
    expected = (3.0 * (sae.W_dec[3] + sae.W_dec[7])).expand(16, -1)
    assert torch.equal(delta[0], torch.zeros_like(delta[0]))
    assert torch.allclose(delta[1], expected, atol=1e-5)
    both = block_output(unet, [AddConcept(("Sketch",), 1.5, tau=98.0, cond_only=False)], {POINT: sae}, stats)
    assert torch.allclose((to_tokens(both) - to_tokens(before)).reshape(2, 16, 32)[0], expected, atol=1e-5)


def test_add_concept_needs_the_typical_activations_and_a_known_concept(unet, sae):
    from saeuron_core.interventions import AddConcept

    with pytest.raises(SaeuronError, match="typical top activations"):
        block_output(unet, [AddConcept(("Sketch",), 1.0, tau=98.0)], {POINT: sae}, uniform_stats(sae.num_latents))
    with pytest.raises(SaeuronError, match="unknown concept 'Oil'"):
        block_output(
            unet, [AddConcept(("Oil",), 1.0, tau=98.0)], {POINT: sae}, concept_stats_with_unit(sae.num_latents)
        )
    with pytest.raises(SaeuronError, match="tau is a percentile"):
        AddConcept(("Sketch",), 1.0, tau=100.0)


def slow_replace(sae, x, stats, concept, tau, strength, target, timestep):
    """The replacement rule written out per token from dense codes (the reference for ``Replace``)."""
    from saeuron_core.scoring import other_means

    row = stats.row_for_timestep(timestep)
    tokens = to_tokens(x).reshape(-1, x.shape[1])
    z = sae.dense_codes(*sae.encode(tokens))
    c = stats.index(concept)
    m_c = stats.means[c, row]
    goal = other_means(stats, concept)[row] if target == "others" else stats.means[stats.index(target), row]
    flag_ids = select(score(stats, concept), tau)[row]
    flagged = (z[:, flag_ids] > mean_activation_all(stats)[row, flag_ids]).any(1, keepdim=True)
    edited = torch.where(flagged, (z + strength * (goal - m_c)).clamp(min=0), z)
    return tokens + (edited - z) @ sae.W_dec


def test_replacement_moves_flagged_tokens_towards_the_target_code(sae):
    x = torch.randn(2, 32, 4, 6, generator=torch.Generator().manual_seed(5)) * 2
    z = sae.dense_codes(*sae.encode(to_tokens(x).reshape(-1, 32)))
    stats = random_stats(sae.num_latents, scale=float(z[z > 0].median()))
    for target in ("others", "Watercolor"):
        editor = PointEditor(
            POINT, sae, [Replace(("Cartoon",), tau=90.0, strength=3.0, target=target, latents="all")], stats
        )
        for timestep in (950, 480):
            out = to_tokens(editor(x, Step(timestep, 0))).reshape(-1, 32)
            expected = slow_replace(sae, x, stats, "Cartoon", 90.0, 3.0, target, timestep)
            assert torch.allclose(out, expected, atol=1e-4)
            row = stats.row_for_timestep(timestep)
            flag_ids = select(score(stats, "Cartoon"), 90.0)[row]
            unflagged = ~(z[:, flag_ids] > mean_activation_all(stats)[row, flag_ids]).any(1)
            assert unflagged.any() and torch.equal(out[unflagged], to_tokens(x).reshape(-1, 32)[unflagged])  # untouched
            assert not torch.equal(out[~unflagged], to_tokens(x).reshape(-1, 32)[~unflagged])
    # "nearest": the other concept whose mean code is closest by cosine at that step
    stats.means[2] = stats.means[0] * 1.5 + 0.01  # Watercolor ~ Cartoon
    nearest = PointEditor(
        POINT, sae, [Replace(("Cartoon",), tau=90.0, strength=3.0, target="nearest", latents="all")], stats
    )
    named = PointEditor(
        POINT, sae, [Replace(("Cartoon",), tau=90.0, strength=3.0, target="Watercolor", latents="all")], stats
    )
    assert torch.equal(nearest(x, Step(480, 0)), named(x, Step(480, 0)))
    with pytest.raises(SaeuronError, match="strength must be > 0"):
        Replace(("Cartoon",), strength=-1.0)
    with pytest.raises(SaeuronError, match="latents must be one of"):
        Replace(("Cartoon",), latents="some")
    with pytest.raises(SaeuronError, match="is the removed concept itself"):
        PointEditor(POINT, sae, [Replace(("Cartoon",), tau=90.0, target="Cartoon")], stats)
