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

    from saeuron_core.recipe import RecipeConfig, make_schedulers, make_text_encoder, make_unet, make_vae
    from saeuron_core.tokenizer import write_tokenizer

    torch.manual_seed(0)
    cfg = RecipeConfig(vae_channels=[16, 16], unet_channels=[32, 32, 32], text_hidden=32, text_layers=1)
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


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("foreign_pipeline")
    make_tiny_pipeline().save_pretrained(folder)
    return folder
