"""An UnlearnDiffAtk-style adversarial prompt attack on a concept removal (METHOD section 6).

For each prompt showing a removed concept, ``n_tokens`` soft token embeddings are inserted after
the start token and optimised (Adam, ``steps`` steps, ``lr``) so that the *edited* model's noise
prediction for a target image of the concept, noised to a sampled timestep, matches the noise:

    min_s  E_t,eps || eps_edited(sqrt(a_t) z0 + sqrt(1 - a_t) eps, t, text([BOS, s, prompt])) - eps ||^2

z0 is the latent the *un-edited* model generates for the prompt and seed (the UnlearnDiffAtk
target image, as a latent). Then the edited model generates from the attack prompt at the same
seed and the judge decides whether the concept came back.

Doing better than the reference code: gradients flow through the intervention (SAE encode, the
latent edit and the decoder update are all differentiable), and the timestep given to the U-Net
is a real scheduler timestep drawn from the generation schedule, never a step index.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
import torch
from torch import Tensor

from ..errors import SaeuronError
from ..hooks import HookSet
from ..pipeline import generate_jobs, text_embeddings


@dataclass(frozen=True)
class AttackConfig:
    """Soft-prompt attack settings (UnlearnDiffAtk: 5 tokens, 40 steps, Adam lr 0.01)."""

    steps: int = 40
    """Adam steps: the attack budget."""
    lr: float = 0.01
    """Adam learning rate on the soft token embeddings."""
    n_tokens: int = 5
    """Soft tokens inserted after the start token."""
    seed: int = 0
    """Seeds the token initialisation and the sampled timesteps / noise."""

    def __post_init__(self):
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 1:
            raise SaeuronError(f"the attack budget (steps) must be a positive integer, got {self.steps!r}")
        if not isinstance(self.n_tokens, int) or self.n_tokens < 1:
            raise SaeuronError(f"n_tokens must be a positive integer, got {self.n_tokens!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise SaeuronError(f"the attack learning rate must be a positive number, got {self.lr!r}")


@dataclass
class AttackResult:
    prompts: list[str]
    seeds: list[int]
    targets: np.ndarray
    """uint8 [N, H, W, 3]: what the un-edited model generates (the attack's target images)."""
    before: np.ndarray
    """uint8 images of the edited model from the plain prompts."""
    after: np.ndarray
    """uint8 images of the edited model from the attack prompts."""
    losses: list[float]
    """Mean attack loss per step."""
    soft_tokens: Tensor
    """[N, n_tokens, d] the optimised embeddings."""
    seconds: float


def _ids_with_slots(pipe, prompts: list[str], n_tokens: int) -> Tensor:
    """Token ids [N, L] = [BOS, slot x n_tokens, prompt tokens..., EOS, pad]; error if it overflows."""
    tok = pipe.tokenizer
    length = tok.model_max_length
    ids = tok(prompts, padding="max_length", max_length=length, truncation=False, return_tensors="pt").input_ids
    used = [len(tok(p).input_ids) for p in prompts]
    if max(used) + n_tokens > length:
        raise SaeuronError(
            f"a prompt of {max(used)} tokens leaves no room for {n_tokens} soft tokens (the text encoder takes "
            f"{length})"
        )
    slots = torch.full((len(prompts), n_tokens), tok.bos_token_id, dtype=ids.dtype)
    return torch.cat([ids[:, :1], slots, ids[:, 1 : length - n_tokens]], 1)


def soft_prompt_embeddings(pipe, prompts: list[str], soft: Tensor) -> Tensor:
    """Text-encoder hidden states [N, L, d] of ``prompts`` with ``soft`` [N, K, d] after BOS.

    The soft embeddings replace the token embeddings of K slot positions (a hook on the input
    embedding layer, removed on exit), so gradients reach ``soft``.
    """
    encoder = pipe.text_encoder
    ids = _ids_with_slots(pipe, prompts, soft.shape[1]).to(encoder.device)
    table = encoder.get_input_embeddings()

    def insert(_module, _args, output):
        return torch.cat([output[:, :1], soft.to(output.dtype), output[:, 1 + soft.shape[1] :]], 1)

    with HookSet(encoder) as hooks:
        hooks.forward_hook("attack:soft-tokens", table, insert)
        return encoder(ids)[0]


def _initial_tokens(pipe, n: int, k: int, seed: int) -> Tensor:
    """Embeddings of random vocabulary tokens (UnlearnDiffAtk starts from real tokens)."""
    table = pipe.text_encoder.get_input_embeddings().weight.detach()
    g = torch.Generator().manual_seed(seed)
    return table[torch.randint(table.shape[0], (n, k), generator=g)].clone().float()


def _images(pipe, latents: Tensor) -> np.ndarray:
    vae = pipe.vae
    with torch.no_grad():
        pixels = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return ((pixels.permute(0, 2, 3, 1).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()


def _generate(pipe, seeds, steps, guidance, prompts=None, embeds=None) -> Tensor:
    """Latents [N, 4, h, w] from prompts or prompt embeddings, one generator per seed (as
    ``pipeline.generate``)."""
    if embeds is None:
        return torch.stack(generate_jobs(pipe, list(zip(prompts, seeds)), steps, guidance, output_type="latent"))
    negative = text_embeddings(pipe, [""] * len(seeds))[1].to(embeds.dtype)
    with torch.no_grad():
        out = pipe(
            prompt_embeds=embeds,
            negative_prompt_embeds=negative,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            output_type="latent",
        )
    return out.images


def run_attack(
    pipe,
    removal_active: Callable[[], ContextManager] | None,
    prompts: list[str],
    seeds: list[int],
    steps: int,
    guidance: float,
    cfg: AttackConfig = AttackConfig(),
    progress: Callable[[int, int, float], None] | None = None,
    target_prompts: list[str] | None = None,
) -> AttackResult:
    """Attack a removal on ``prompts`` (each with its seed); see the module docstring.

    ``removal_active()`` returns the context in which the edited model runs (``Removal.active``
    bound to the pipeline); None attacks the un-edited model (a sanity check).
    ``target_prompts``: the un-edited model's prompts for the target images (default ``prompts``).
    """
    if not prompts or len(prompts) != len(seeds):
        raise SaeuronError("give one seed per prompt, and at least one prompt")
    target_prompts = list(target_prompts) if target_prompts is not None else list(prompts)
    if len(target_prompts) != len(prompts):
        raise SaeuronError("give one target prompt per prompt")
    active = removal_active or contextlib.nullcontext
    t0 = time.perf_counter()
    z0 = _generate(pipe, seeds, steps, guidance, prompts=target_prompts)  # the un-edited model's images
    unet, scheduler = pipe.unet, pipe.scheduler
    scheduler.set_timesteps(steps)
    schedule = scheduler.timesteps.clone()
    soft = _initial_tokens(pipe, len(prompts), cfg.n_tokens, cfg.seed).requires_grad_(True)
    opt = torch.optim.Adam([soft], lr=cfg.lr)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    losses = []
    with active():
        before = _generate(pipe, seeds, steps, guidance, prompts=prompts)
        for i in range(cfg.steps):
            t = schedule[torch.randint(len(schedule), (1,), generator=g)]
            noise = torch.randn(z0.shape, generator=g)
            x_t = scheduler.add_noise(z0, noise, t)
            with torch.enable_grad():
                cond = soft_prompt_embeddings(pipe, prompts, soft)
                pred = unet(x_t, t, encoder_hidden_states=cond).sample
                loss = torch.nn.functional.mse_loss(pred, noise)
                (grad,) = torch.autograd.grad(loss, [soft])
            soft.grad = grad
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if progress:
                progress(i + 1, cfg.steps, losses[-1])
        with torch.no_grad():
            embeds = soft_prompt_embeddings(pipe, prompts, soft.detach())
        after = _generate(pipe, seeds, steps, guidance, embeds=embeds)
    return AttackResult(
        list(prompts),
        list(seeds),
        _images(pipe, z0),
        _images(pipe, before),
        _images(pipe, after),
        losses,
        soft.detach(),
        time.perf_counter() - t0,
    )
