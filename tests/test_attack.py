"""The UnlearnDiffAtk-style attack: gradients through interventions, real timesteps, a sanity run."""

import numpy as np
import pytest
import torch
from conftest import needs_bundled

from saeuron_core.baselines.attack import AttackConfig, run_attack, soft_prompt_embeddings
from saeuron_core.errors import SaeuronError
from saeuron_core.interventions import ScaleFeatures, apply_interventions
from saeuron_core.pipeline import load_pipeline, model_info
from saeuron_core.unlearning import SaeBundle


@pytest.mark.parametrize("steps", [0, -3])
def test_attack_budget_must_be_positive(steps):
    with pytest.raises(SaeuronError, match="attack budget"):
        AttackConfig(steps=steps)


@pytest.fixture(scope="module")
def tiny(tiny_bundle):
    pipe = load_pipeline(str(tiny_bundle / "model"))
    info = model_info(pipe)
    return pipe, info, SaeBundle.load(info, tiny_bundle / "sae", tiny_bundle / "stats", tiny_bundle / "defaults.json")


def test_soft_tokens_fill_slots_and_overflow_is_an_error(tiny):
    pipe, _, _ = tiny
    d = pipe.text_encoder.config.hidden_size
    soft = torch.randn(1, 3, d, requires_grad=True)
    out = soft_prompt_embeddings(pipe, ["An image of star in dots style."], soft)
    (grad,) = torch.autograd.grad(out.sum(), [soft])
    assert out.shape[1] == pipe.tokenizer.model_max_length and grad.abs().sum() > 0
    assert not pipe.text_encoder.get_input_embeddings()._forward_hooks  # the hook is gone
    with pytest.raises(SaeuronError, match="no room for 20 soft tokens"):
        soft_prompt_embeddings(pipe, ["An image of star in dots style."], torch.randn(1, 20, d))


def test_gradients_flow_through_the_intervention(tiny):
    pipe, _, bundle = tiny
    point = bundle.point_of_kind["style"]
    sae = bundle.saes[point]
    soft = torch.randn(1, 2, pipe.text_encoder.config.hidden_size, requires_grad=True)
    x = torch.randn(1, 4, 8, 8)
    every = tuple(range(sae.num_latents))

    def grad_with(factor):
        with apply_interventions(pipe.unet, bundle.saes, [ScaleFeatures(every, factor, point=point)]):
            out = pipe.unet(
                x, torch.tensor(500), encoder_hidden_states=soft_prompt_embeddings(pipe, ["An image of star."], soft)
            ).sample
            return torch.autograd.grad(out.square().mean(), [soft])[0]

    plain, edited = grad_with(1.0), grad_with(-2.0)
    assert torch.isfinite(edited).all() and edited.abs().sum() > 0
    assert not torch.allclose(plain, edited)  # the edit is part of the differentiated graph


def test_attack_feeds_the_unet_scheduler_timesteps(tiny):
    pipe, _, _ = tiny
    seen = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(float(args[1] if len(args) > 1 else kwargs["timestep"])), with_kwargs=True
    )
    try:
        result = run_attack(
            pipe, None, ["An image of star in dots style."], [1_000_000], 3, 2.0, AttackConfig(steps=4, n_tokens=2)
        )
    finally:
        handle.remove()
    pipe.scheduler.set_timesteps(3)
    allowed = {float(t) for t in pipe.scheduler.timesteps}
    assert set(seen) <= allowed and len(result.losses) == 4
    assert result.before.shape == result.after.shape == result.targets.shape and result.after.dtype == np.uint8


@needs_bundled
@pytest.mark.slow
def test_attack_pulls_the_target_concept_back_on_an_unedited_model():
    """Sanity: from 'solid' prompts, soft tokens fitted to 'stripes' targets raise the judge's
    stripes probability of what the model then generates."""
    import saeuron_core.minicanvas as mc
    from saeuron_core.minicanvas.judge import Judge, to_tensor
    from saeuron_core.paths import ASSETS

    pipe = load_pipeline("minicanvas")
    judge = Judge.load(ASSETS / "judge")
    objects = ["circle", "square", "star"]
    prompts = [mc.prompt(o, "solid") for o in objects]
    targets = [mc.prompt(o, "stripes") for o in objects]
    seeds = mc.split_seeds("heldout", 3)
    result = run_attack(pipe, None, prompts, seeds, 20, 6.0, AttackConfig(steps=40), target_prompts=targets)
    stripes = mc.STYLES.index("stripes")

    def p_stripes(images):
        with torch.no_grad():
            return judge(to_tensor(images)).style_logits.softmax(-1)[:, stripes].mean().item()

    before, after = p_stripes(result.before), p_stripes(result.after)
    print(f"judge P(stripes): {before:.3f} before, {after:.3f} after the attack")
    assert after > before + 0.3
    assert all(np.isfinite(result.losses))
