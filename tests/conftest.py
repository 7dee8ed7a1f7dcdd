"""Shared fixtures. Tests run torch on one thread: oversubscribing 2 cores costs 25x here."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
import torch

torch.set_num_threads(1)

from saeuron_core.paths import ASSETS  # noqa: E402

BUNDLED_READY = (ASSETS / "minicanvas" / "model_index.json").is_file() and (ASSETS / "judge" / "config.json").is_file()
needs_bundled = pytest.mark.skipif(not BUNDLED_READY, reason="bundled model not built yet (saeuron build-model)")


def make_tiny_pipeline(sample_size: int = 8):
    """A random SD-architecture pipeline built here, as a stand-in for a foreign SD1.x folder."""
    from diffusers import StableDiffusionPipeline

    from saeuron_core.minicanvas.build import BuildConfig, make_schedulers, make_text_encoder, make_unet, make_vae
    from saeuron_core.minicanvas.tokenizer import write_tokenizer

    torch.manual_seed(0)
    cfg = BuildConfig(vae_channels=[16, 16], unet_channels=[32, 32, 32], text_hidden=32, text_layers=1)
    import tempfile

    tok = write_tokenizer(tempfile.mkdtemp())
    _, ddim = make_schedulers()
    return StableDiffusionPipeline(
        vae=make_vae(cfg),
        text_encoder=make_text_encoder(cfg, len(tok)),
        tokenizer=tok,
        unet=make_unet(cfg, sample_size),
        scheduler=ddim,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_sd_architecture_pipeline(
    latent_size: int = 32,
    unet_channels=(32, 32, 64, 64),
    vae_channels=(16, 16),
    text_hidden: int = 32,
    text_layers: int = 1,
    seed: int = 0,
):
    """A random pipeline with Stable Diffusion 1.x's U-Net layout (4 levels, 2 layers per block,
    cross-attention in the top three: ``up_blocks.1.attentions.{0,1,2}`` exist as in SD1.5) at
    any width. SD1.5's own sizes: unet_channels (320, 640, 1280, 1280), vae_channels
    (128, 256, 512, 512), text_hidden 768, text_layers 12, latent_size 64 (512 px)."""
    import tempfile

    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    from saeuron_core.minicanvas.build import BuildConfig, make_schedulers, make_text_encoder
    from saeuron_core.minicanvas.tokenizer import write_tokenizer

    torch.manual_seed(seed)
    tok = write_tokenizer(tempfile.mkdtemp())
    n = len(vae_channels)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(vae_channels),
        layers_per_block=1 if vae_channels[0] < 64 else 2,
        latent_channels=4,
        norm_num_groups=min(32, vae_channels[0]),
        sample_size=latent_size * 2 ** (n - 1),
    )
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=tuple(unet_channels),
        layers_per_block=2,
        cross_attention_dim=text_hidden,
        attention_head_dim=8,
        norm_num_groups=min(32, unet_channels[0]),
    )
    text_cfg = BuildConfig(text_hidden=text_hidden, text_layers=text_layers)
    _, ddim = make_schedulers()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=make_text_encoder(text_cfg, len(tok)),
        tokenizer=tok,
        unet=unet,
        scheduler=ddim,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign_pipeline")
    make_tiny_pipeline().save_pretrained(folder)
    return folder


TINY_POINTS = {"object": "up_blocks.1.attentions.0", "style": "up_blocks.1.attentions.1"}


@pytest.fixture(scope="session")
def tiny_bundle(tiny_pipeline_dir, tmp_path_factory):
    """A tiny pipeline with the bundled layout: saeuron.json, SAEs, statistics, defaults, judge.

    Random weights: for plumbing tests only (no claims about what gets unlearned).
    """
    import json
    import shutil

    from saeuron_core.minicanvas.judge import Judge, JudgeConfig
    from saeuron_core.pipeline import load_pipeline
    from saeuron_core.sae import SaeConfig, TopKSae
    from saeuron_core.sae_train import TrainConfig, train_sae
    from saeuron_core.stats import compute_stats
    from saeuron_core.store import PromptItem, cache_activations

    root = tmp_path_factory.mktemp("bundle")
    model = root / "model"
    shutil.copytree(tiny_pipeline_dir, model)
    objects, styles = ["star", "heart", "circle"], ["dots", "solid", "rings"]
    meta = {
        "name": "tiny",
        "image_size": 16,
        "vocabulary": {"object": objects, "style": styles},
        "hook_points": TINY_POINTS,
        "default_steps": 3,
        "default_guidance": 4.0,
    }
    (model / "saeuron.json").write_text(json.dumps(meta))
    pipe = load_pipeline(str(model))
    items = [
        PromptItem(f"An image of {o} in {s} style.", seed, {"object": o, "style": s})
        for o in objects
        for s in styles
        for seed in (0, 1)
    ]
    store = cache_activations(
        pipe, items, list(TINY_POINTS.values()), root / "store", steps=3, guidance=4.0, items_per_shard=9
    )
    for point in TINY_POINTS.values():
        train_sae(store, point, TrainConfig(SaeConfig(expansion_factor=4, k=4), batch_size=64, epochs=2), root / "sae")
        compute_stats(store, point, TopKSae.load(root / "sae" / point), top_m=2).save(root / "stats" / point)
    defaults = {"kinds": {"style": {"tau": 99.0, "gamma": -5.0}}, "concepts": {"star": {"tau": 98.0, "gamma": -10.0}}}
    (root / "defaults.json").write_text(json.dumps(defaults))
    torch.manual_seed(0)
    Judge(JudgeConfig(channels=[8, 8], image_size=16)).save(root / "judge")
    return root


def start_paused(cmd: list[str], after: int, env: dict | None = None, timeout: float = 300):
    """Start ``cmd`` with ``SAEURON_TEST_PAUSE_AFTER=after`` and block on its stderr pipe until a
    process says it paused there (``saeuron_core.pause``); returns (Popen, pid of the paused
    process) for the test to kill. A deadline bounds the wait: no sleeps, no polling of files."""
    import re
    import select
    import subprocess
    import time

    from saeuron_core.pause import PAUSE_ENV

    env = {**(os.environ if env is None else env), PAUSE_ENV: str(after)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fd, seen = proc.stderr.fileno(), b""
    deadline = time.monotonic() + timeout
    while (found := re.search(rb"saeuron: paused after \d+ \w+ \(pid (\d+)\)", seen)) is None:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 1 << 16) if ready else None
        if not chunk:
            proc.kill()
            proc.wait()
            why = "ended" if chunk == b"" else f"did not pause within {timeout} s"
            tail = seen[-2000:].decode(errors="replace")
            pytest.fail(f"{cmd[2:5]} {why} before pausing after {after}; stderr: {tail}")
        seen += chunk
    return proc, int(found.group(1))
