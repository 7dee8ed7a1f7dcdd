"""A micro run of `saeuron build-model`: every stage runs, resumes and exports a loadable pipeline."""

import json

import numpy as np
import pytest
import torch

from saeuron_core import minicanvas as mc
from saeuron_core.errors import SaeuronError
from saeuron_core.minicanvas.build import BuildConfig, build_model
from saeuron_core.minicanvas.judge import Judge
from saeuron_core.pipeline import generate, load_pipeline, model_info

MICRO = dict(
    images_per_pair=2,
    heldout_per_pair=1,
    vae_steps=2,
    judge_steps=2,
    unet_steps=2,
    vae_channels=[16, 16, 16],
    unet_channels=[32, 32, 32],
    text_hidden=32,
    text_layers=1,
    unet_batch=4,
    vae_batch=4,
    judge_batch=8,
)


@pytest.fixture(scope="module")
def micro_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    report = build_model(BuildConfig(**MICRO), root / "work", root / "pipe", root / "judge")
    return root, report


def test_micro_run_exports_a_pipeline_and_judge(micro_build):
    root, report = micro_build
    assert report["unet"]["steps"] == 2 and report["unet"]["images_seen"] == 8
    assert set(report["judge"]["heldout_renders"]) == {"object", "style"}
    pipe = load_pipeline(str(root / "pipe"))
    info = model_info(pipe)
    assert info.image_size == 64 and info.hook_points["object"] == "mid_block.attentions.0"
    assert info.vocabulary == {"object": tuple(mc.OBJECTS), "style": tuple(mc.STYLES)}  # written by kind
    meta = json.loads((root / "pipe" / "saeuron.json").read_text())
    assert meta["build_report"]["unet"]["steps"] == 2 and meta["recipe"]["images_per_pair"] == 2
    img = generate(pipe, "An image of star in dots style.", 1, steps=2, guidance=5.0, output_type="np")[0]
    assert img.shape == (64, 64, 3)
    judge = Judge.load(root / "judge")
    assert len(judge.classify(np.zeros((2, 64, 64, 3), np.uint8))["style"]) == 2


def test_rerun_skips_finished_stages_and_extends_a_grown_budget(micro_build):
    root, _ = micro_build
    state_before = torch.load(root / "work" / "unet" / "state.pt", weights_only=True)["step"]
    report = build_model(BuildConfig(**{**MICRO, "unet_steps": 3}), root / "work", root / "pipe", root / "judge")
    assert state_before == 2
    assert report["unet"]["steps"] == 3  # resumed from step 2, did one more
    assert report["vae"]["steps"] == 2  # finished stages are not redone


def test_a_checkpoint_from_before_diffusers_helpers_still_resumes(micro_build):
    """Old U-Net checkpoints kept the EMA as a bare list and no LR schedule; they resume with the
    EMA step count and the warm-up position taken from the step."""
    root, _ = micro_build
    ckpt = root / "work" / "unet" / "state.pt"
    state = torch.load(ckpt, weights_only=True)
    step = state["step"]
    shadow = state["ema"]["shadow_params"]
    legacy = {k: v for k, v in state.items() if k != "lr_scheduler"}
    legacy["ema"] = shadow
    torch.save(legacy, ckpt)
    (root / "work" / "unet" / "done.json").unlink()
    report = build_model(BuildConfig(**{**MICRO, "unet_steps": step + 1}), root / "work", root / "pipe", root / "judge")
    assert report["unet"]["steps"] == step + 1
    after = torch.load(ckpt, weights_only=True)
    assert after["ema"]["optimization_step"] == step + 1
    assert after["lr_scheduler"]["last_epoch"] == step + 1
    lr = BuildConfig().unet_lr * (step + 1) / 300  # still warming up
    assert after["opt"]["param_groups"][0]["lr"] == pytest.approx(lr)
    # the average carried on from the old one: shadow <- d * shadow + (1 - d) * weights
    decay = (1 + step) / (10 + step)
    expected = decay * shadow[0] + (1 - decay) * after["unet"]["conv_in.weight"]
    assert torch.allclose(after["ema"]["shadow_params"][0], expected, atol=1e-6)


def test_a_different_recipe_in_the_same_work_folder_is_refused(micro_build):
    root, _ = micro_build
    with pytest.raises(SaeuronError, match="different recipe \\(text_hidden\\)"):
        build_model(BuildConfig(**{**MICRO, "text_hidden": 64}), root / "work", root / "pipe2", root / "judge2")
    assert not (root / "pipe2").exists()


def test_recipe_config_validation():
    with pytest.raises(SaeuronError, match="vae_steps must be >= 1"):
        BuildConfig(vae_steps=0)
    with pytest.raises(SaeuronError, match="caption_dropout"):
        BuildConfig(caption_dropout=0.7, object_only=0.5)


def test_build_model_flags_come_from_build_config():
    from saeuron_core.cli import build_parser
    from saeuron_core.minicanvas.commands import build_config

    def config(*argv):
        return build_config(build_parser().parse_args(["build-model", *argv]))

    cfg = config(
        "--config", '{"unet_steps": 10, "seed": 3}', "--seed", "4", "--vae-channels", "16", "32", "--unet-minutes", "2"
    )
    # a flag wins over --config
    assert (cfg.unet_steps, cfg.seed, cfg.vae_channels, cfg.unet_minutes) == (10, 4, [16, 32], 2.0)
    assert config() == BuildConfig()
    with pytest.raises(SaeuronError, match="no field nope"):
        config("--config", '{"nope": 1}')
    with pytest.raises(SaeuronError, match="vae_steps must be >= 1"):
        config("--vae-steps", "0")
