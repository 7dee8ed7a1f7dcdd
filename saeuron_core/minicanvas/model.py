"""The MiniCanvas model's recipe and assembly: ``BuildConfig`` (everything that decides the
bundled model), the component factories (autoencoder, CLIP text encoder, U-Net, SD1.5's
schedulers) and ``export_pipeline``, which puts trained components together as a
``StableDiffusionPipeline`` folder. ``build`` trains them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..errors import SaeuronError
from ..io import atomic_dir, write_json
from . import dataset as mc

BUNDLED_CONFIG_NAME = "saeuron.json"


@dataclass
class BuildConfig:
    """Everything that decides the bundled model. Defaults are the shipped recipe."""

    images_per_pair: int = 625
    """Training renders per (object, style) pair (48 pairs)."""
    heldout_per_pair: int = 20
    """Held-out renders per pair, for the judge's and the autoencoder's test numbers."""
    vae_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    """AutoencoderKL block widths; len-1 downsamplings (3 -> 64x64 images to 16x16 latents)."""
    vae_steps: int = 2000
    """Autoencoder optimiser steps (batch ``vae_batch`` random 32x32 crops)."""
    vae_batch: int = 32
    judge_steps: int = 900
    """Judge optimiser steps (batch ``judge_batch``)."""
    judge_batch: int = 96
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    """U-Net block widths: CrossAttnDown x2 + Down; Up + CrossAttnUp x2 (up_blocks.1 has attentions)."""
    text_hidden: int = 128
    """Width of the CLIP text encoder (= the U-Net's cross-attention dim)."""
    text_layers: int = 2
    unet_steps: int = 1_000_000
    """Upper bound on U-Net optimiser steps; training also stops at ``unet_minutes``."""
    unet_minutes: float = 75.0
    """Wall-clock budget for U-Net training, summed over resumed runs."""
    unet_batch: int = 48
    unet_lr: float = 5e-4
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.1
    """Probability of the empty prompt (for classifier-free guidance)."""
    object_only: float = 0.1
    """Probability of the unstyled prompt "An image of {object}."."""
    checkpoint_minutes: float = 5.0
    seed: int = 0

    def __post_init__(self):
        if self.images_per_pair < 1 or self.heldout_per_pair < 1:
            raise SaeuronError("images_per_pair and heldout_per_pair must be >= 1")
        for name in ("vae_steps", "judge_steps", "unet_steps", "vae_batch", "judge_batch", "unet_batch"):
            if getattr(self, name) < 1:
                raise SaeuronError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.unet_channels) != 3 or len(self.vae_channels) < 2:
            raise SaeuronError("unet_channels needs 3 widths and vae_channels at least 2")
        if not 0 <= self.caption_dropout + self.object_only < 1:
            raise SaeuronError("caption_dropout + object_only must be in [0, 1)")


DEFAULT_HOOKS = {"object": "mid_block.attentions.0", "style": "up_blocks.1.attentions.1"}
"""Where `saeuron locate` finds each kind entering the bundled U-Net (results/locate): object
words act only through the mid block; styles act at several up blocks, and the shipped style
block is the one with style-selective SAE features (README, "Where concepts live")."""


# --------------------------------------------------------------------------- model factories
def make_vae(cfg: BuildConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=mc.IMAGE_SIZE,
    )


def make_text_encoder(cfg: BuildConfig, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.text_hidden,
            intermediate_size=cfg.text_hidden * 2,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=4,
            max_position_embeddings=32,
            projection_dim=cfg.text_hidden,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )


def make_unet(cfg: BuildConfig, latent_size: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=1,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=8,
        norm_num_groups=min(32, cfg.unet_channels[0]),
    )


def make_schedulers():
    """SD1.5's noise schedule: DDPM for training, DDIM (eta 0) for sampling."""
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )
    return DDPMScheduler(**common), DDIMScheduler(**common, set_alpha_to_one=False, steps_offset=1)


def export_pipeline(cfg, work: Path, out: Path, unet, text_encoder, ema, tokenizer, training: dict) -> Path:
    """Write the EMA weights as a StableDiffusionPipeline folder (atomically)."""
    import copy

    from diffusers import AutoencoderKL, StableDiffusionPipeline

    unet_e, text_e = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    with torch.no_grad():
        for p, e in zip(list(unet_e.parameters()) + list(text_e.parameters()), ema):
            p.copy_(e)
    _, ddim = make_schedulers()
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(work / "vae" / "model"),
        text_encoder=text_e,
        tokenizer=tokenizer,
        unet=unet_e,
        scheduler=ddim,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    meta = {
        "name": "minicanvas",
        "image_size": mc.IMAGE_SIZE,
        "vocabulary": {"object": list(mc.OBJECTS), "style": list(mc.STYLES)},
        "hook_points": DEFAULT_HOOKS,
        "default_steps": 20,
        "default_guidance": 6.0,
        "recipe": asdict(cfg),
        "training": training,
    }
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        write_json(tmp / BUNDLED_CONFIG_NAME, meta)
    return out
