"""U-Net hooks: token layout, CFG halves, timesteps and step indices, cleanup, names."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput  # noqa: E402

from saeuron_core.errors import SaeuronError  # noqa: E402
from saeuron_core.hooks import (  # noqa: E402
    _block_tensor,
    _replace_block_tensor,
    capture_activations,
    edit_block_output,
    from_tokens,
    to_tokens,
)
from saeuron_core.minicanvas.build import BuildConfig, make_unet  # noqa: E402

POINT = "up_blocks.1.attentions.1"


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    # the bundled model's architecture at width 32
    return make_unet(BuildConfig(unet_channels=[32, 32, 32], text_hidden=32), 8).eval()


def run(unet, timestep, batch: int = 2, height: int = 8, width: int = 8):
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, 4, height, width, generator=gen)
    text = torch.randn(batch, 5, 32, generator=gen)
    with torch.no_grad():
        return unet(sample, timestep, text).sample


def assert_no_hooks(unet):
    for name, module in unet.named_modules():
        for hooks in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
        ):
            assert not getattr(module, hooks), f"{name or 'unet'} still has {hooks}"


def test_token_layout_is_h_times_w_plus_w():
    x = torch.randn(2, 3, 4, 5)
    tokens = to_tokens(x)
    assert tokens.shape == (2, 20, 3)
    assert torch.equal(tokens[1, 2 * 5 + 3], x[1, :, 2, 3])
    back = from_tokens(tokens, 4, 5)
    assert torch.equal(back, x) and back.is_contiguous()
    with pytest.raises(SaeuronError, match="do not form a 5x5 map"):
        from_tokens(tokens, 5, 5)


def test_non_square_maps_are_captured_as_they_are(unet):
    with capture_activations(unet, [POINT, "unet.conv_in"]) as rec:
        run(unet, 500, height=16, width=24)
    assert rec.records[POINT][0].tensor.shape == (2, 32, 8, 12)
    assert rec.stacked("conv_in").shape == (1, 2, 32, 16, 24)
    assert_no_hooks(unet)


def test_cfg_halves(unet):
    captured = {}
    for halves in ("both", "cond", "uncond"):
        with capture_activations(unet, POINT, halves=halves) as rec:
            run(unet, 500, batch=4)
        captured[halves] = rec.stacked(POINT)[0]
    assert torch.equal(captured["uncond"], captured["both"][:2])
    assert torch.equal(captured["cond"], captured["both"][2:])
    with capture_activations(unet, POINT, halves="cond", cfg=False) as rec:
        run(unet, 500, batch=3)
    assert rec.stacked(POINT).shape[1] == 3
    with pytest.raises(SaeuronError, match="cannot be split into"):
        with capture_activations(unet, POINT, halves="cond"):
            run(unet, 500, batch=3)
    with pytest.raises(SaeuronError, match="needs cfg=True"):
        with capture_activations(unet, POINT, halves="uncond", cfg=False):
            pass
    assert_no_hooks(unet)


def test_editing_one_half_leaves_the_other(unet):
    def add_one(x, step):
        return x + 1

    with capture_activations(unet, POINT) as plain:
        run(unet, 500, batch=4)
    with edit_block_output(unet, POINT, add_one, halves="cond"), capture_activations(unet, POINT) as edited:
        run(unet, 500, batch=4)
    before, after = plain.stacked(POINT)[0], edited.stacked(POINT)[0]
    assert torch.equal(after[:2], before[:2])
    assert torch.equal(after[2:], before[2:] + 1)


def test_returning_the_input_keeps_the_output_bit_identical(unet):
    seen = []

    def identity(x, step):
        seen.append(step)
        return x

    reference = run(unet, 321)
    with edit_block_output(unet, POINT, identity):
        assert torch.equal(run(unet, 321), reference)
    assert seen[0].timestep == 321 and seen[0].index == 0


def test_timestep_is_read_from_each_call_not_counted(unet):
    with capture_activations(unet, POINT) as rec:
        for t in (torch.tensor(900), torch.tensor([600, 600]), 300):
            run(unet, t)  # twice per step: separate uncond / cond calls
            run(unet, t)
    assert [(r.timestep, r.step) for r in rec.records[POINT]] == [
        (900, 0),
        (900, 0),
        (600, 1),
        (600, 1),
        (300, 2),
        (300, 2),
    ]
    with pytest.raises(SaeuronError, match="one U-Net call per step"):
        rec.stacked(POINT)

    with capture_activations(unet, POINT) as rec:
        for t in (800, 400, 900, 450.5):  # a larger timestep starts a new generation
            run(unet, t)
    assert [(r.timestep, r.step) for r in rec.records[POINT]] == [(800, 0), (400, 1), (900, 0), (450.5, 1)]

    with pytest.raises(SaeuronError, match="different timesteps per sample"):
        with capture_activations(unet, POINT):
            run(unet, torch.tensor([10, 20]))
    assert_no_hooks(unet)


def test_steps_in_a_real_cfg_pipeline():
    from conftest import make_tiny_pipeline

    pipe = make_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    with capture_activations(pipe.unet, POINT, halves="cond") as rec:
        pipe(
            prompt=["An image of star.", "An image of heart."],
            num_inference_steps=3,
            guidance_scale=5.0,
            output_type="latent",
        )
    assert rec.stacked(POINT).shape == (3, 2, 32, 4, 4)
    assert rec.timesteps == pipe.scheduler.timesteps.tolist()
    with capture_activations(pipe.unet, POINT, halves="uncond") as rec:
        for _ in range(2):
            pipe(prompt="An image of star.", num_inference_steps=2, guidance_scale=5.0, output_type="latent")
    assert [r.step for r in rec.records[POINT]] == [0, 1, 0, 1]
    assert rec.records[POINT][0].tensor.shape[0] == 1


def test_hooks_are_removed_after_exceptions(unet):
    def explode(x, step):
        raise RuntimeError("boom")

    for i in range(1000):
        with pytest.raises(RuntimeError, match="boom"):
            with edit_block_output(unet, "conv_in", explode):
                run(unet, i % 1000, batch=1, height=2, width=2)
    with pytest.raises(KeyboardInterrupt):
        with capture_activations(unet, [POINT, "conv_in"]):
            raise KeyboardInterrupt
    with pytest.raises(SaeuronError, match="does not exist"):  # the second point fails after the first hooked
        with capture_activations(unet, [POINT, "no.such.block"]):
            pass
    assert_no_hooks(unet)


def test_hook_names_are_unique_per_unet(unet):
    with edit_block_output(unet, POINT, lambda x, s: x, name="mine"):
        with pytest.raises(SaeuronError, match="'mine' is already registered"):
            with edit_block_output(unet, "conv_in", lambda x, s: x, name="mine"):
                pass
        with pytest.raises(SaeuronError, match="already registered"):
            with capture_activations(unet, POINT), capture_activations(unet, POINT):
                pass
    with edit_block_output(unet, POINT, lambda x, s: x, name="mine"):  # free again
        pass
    assert_no_hooks(unet)


def test_unknown_hook_point_lists_close_names(unet):
    with pytest.raises(SaeuronError, match=r"close names: up_blocks\.1\.attentions\.1.*attention blocks: down_blocks"):
        with capture_activations(unet, "up_blocks.1.attention.1"):
            pass


def test_block_output_forms():
    x, y = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    for output in (x, (x,), Transformer2DModelOutput(sample=x)):
        assert _block_tensor(output) is x
        replaced = _replace_block_tensor(output, y)
        assert type(replaced) is type(output) and _block_tensor(replaced) is y
    with pytest.raises(SaeuronError, match=r"\[B, C, H, W\]"):
        _block_tensor(torch.randn(2, 3))


# --------------------------------------------------------------------------- steps from the scheduler
def _scheduler(pipe, name: str):
    from diffusers import DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler

    kinds = {
        "heun": (HeunDiscreteScheduler, {}),
        "dpm++ karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
        "euler ancestral": (EulerAncestralDiscreteScheduler, {}),
    }
    cls, options = kinds[name]
    return cls.from_config(pipe.scheduler.config, **options)


@pytest.mark.parametrize("name", ["heun", "dpm++ karras", "euler ancestral"])
def test_step_index_is_the_pipelines_loop_index_for_any_scheduler(name):
    from conftest import make_tiny_pipeline

    pipe = make_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = _scheduler(pipe, name)
    seen = []  # (the pipeline's loop index, the step of the capture's last record at that moment)

    def callback(_pipe, index, _timestep, tensors):
        seen.append((index, rec.records[POINT][-1].step, rec.records["conv_in"][-1].step))
        return tensors

    with capture_activations(pipe.unet, [POINT, "conv_in"], halves="cond", scheduler=pipe.scheduler) as rec:
        for _ in range(2):  # back to back: the second starts at index 0 again
            pipe(
                prompt="An image of star.",
                num_inference_steps=4,
                guidance_scale=5.0,
                output_type="latent",
                callback_on_step_end=callback,
            )
    loops = len(seen) // 2
    assert [i for i, _, _ in seen] == list(range(loops)) * 2
    assert all(i == a == b for i, a, b in seen)
    assert [r.step for r in rec.records[POINT]] == list(range(loops)) * 2  # one U-Net call per loop iteration
    assert "set_timesteps" not in vars(pipe.scheduler) and "step" not in vars(pipe.scheduler)  # restored
    assert_no_hooks(pipe.unet)


def test_a_generation_that_starts_where_the_last_ended_is_a_new_one():
    from conftest import make_tiny_pipeline
    from diffusers import EulerDiscreteScheduler

    pipe = make_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with capture_activations(pipe.unet, POINT, halves="cond", scheduler=pipe.scheduler) as rec:
        for timesteps in ([999, 500], [500, 100]):  # custom timesteps pass through the wrapped set_timesteps
            pipe(prompt="An image of star.", timesteps=timesteps, guidance_scale=5.0, output_type="latent")
    assert [(r.timestep, r.step) for r in rec.records[POINT]] == [(999, 0), (500, 1), (500, 0), (100, 1)]
    # the timestep alone cannot tell: it reads the second generation's first step as the first's last
    with capture_activations(pipe.unet, POINT, halves="cond") as rec:
        for timesteps in ([999, 500], [500, 100]):
            pipe(prompt="An image of star.", timesteps=timesteps, guidance_scale=5.0, output_type="latent")
    assert [r.step for r in rec.records[POINT]] == [0, 1, 1, 2]


def test_without_a_scheduler_a_timestep_going_back_up_inside_a_generation_is_refused(unet):
    with pytest.raises(SaeuronError, match="give the hooks the pipeline's scheduler"):
        with capture_activations(unet, POINT) as rec:
            for t in (800, 400, 600):  # neither the same generation (up) nor a new one (below its start)
                run(unet, t)
    assert [r.step for r in rec.records[POINT]] == [0, 1]
    assert_no_hooks(unet)


def test_step_windows_and_statistics_follow_the_schedulers_steps():
    """An edit limited to a StepWindow fires at exactly the pipeline's loop indices it names, and
    the statistics row it uses is the one whose timestep is nearest (Heun repeats timesteps)."""
    from conftest import make_tiny_pipeline

    pipe = make_tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = _scheduler(pipe, "heun")
    fired = []

    def edit(x, step):
        fired.append(step)
        return x

    with edit_block_output(pipe.unet, POINT, edit, halves="cond", scheduler=pipe.scheduler):
        pipe(prompt="An image of star.", num_inference_steps=3, guidance_scale=5.0, output_type="latent")
    assert [s.index for s in fired] == list(range(len(pipe.scheduler.timesteps)))
    assert [s.timestep for s in fired] == pytest.approx(pipe.scheduler.timesteps.tolist())
