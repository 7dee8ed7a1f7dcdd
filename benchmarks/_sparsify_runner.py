"""EleutherAI sparsify's ``SparseCoder`` stepped exactly as ``sparsify.Trainer.fit`` does, for the
SAE-training benchmark (bench_sae_training.py): loss_fn="fvu", optimizer="adam", no accumulation.

b_dec = batch mean on the first batch, decoder renorm BEFORE the forward,
``forward(x, y=x, dead_mask, total_variance)``, ``did_fire`` from ``latent_indices``,
loss = fvu + alpha * auxk + multi_topk_fvu / 8, ``remove_gradient_parallel_to_decoder_directions``,
``torch.optim.Adam``; the Trainer's linear LR warmup / decay only when ``warmup`` > 0.
"""

from __future__ import annotations

import contextlib
import sys

import torch

with contextlib.redirect_stdout(sys.stderr):  # sparsify prints "Triton not installed ..." on import
    from sparsify import SparseCoder, SparseCoderConfig

__all__ = ["SparseCoder", "SparseCoderConfig", "SparsifyRunner", "sparsify_decoder", "sparsify_forward"]


class SparsifyRunner:
    """A ``SparseCoder`` and its Adam optimiser, one ``step(x)`` per batch as ``Trainer.fit`` takes it."""

    def __init__(
        self,
        d_in: int,
        num_latents: int,
        k: int,
        lr: float,
        auxk_alpha: float,
        dead_threshold: int,
        seed: int,
        warmup: int,
        total_steps: int,
        device: torch.device,
        autocast: bool = False,
    ):
        torch.manual_seed(seed)
        # drawn on the CPU like ours (same seed, same initial weights), then moved
        self.sae = SparseCoder(
            d_in, SparseCoderConfig(num_latents=num_latents, k=k), device="cpu", dtype=torch.float32
        ).to(device)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=lr)
        self.sched = None
        if warmup:
            from transformers import get_linear_schedule_with_warmup

            self.sched = get_linear_schedule_with_warmup(self.opt, warmup, total_steps)
        self.auxk_alpha, self.dead_threshold = auxk_alpha, dead_threshold
        self.since_fired = torch.zeros(num_latents, dtype=torch.long, device=device)
        self.did_fire = torch.zeros(num_latents, dtype=torch.bool, device=device)
        self.step_count = 0
        self.history: list[dict] = []

    def step(self, x: torch.Tensor) -> None:
        sae = self.sae
        if self.step_count == 0:
            sae.b_dec.data = x.mean(0).to(sae.dtype)
        sae.set_decoder_norm_to_unit_norm()
        dead_mask = self.since_fired > self.dead_threshold if self.auxk_alpha > 0 else None
        total_variance = (x - x.mean(0)).pow(2).sum()
        with self.autocast:
            out = sae(x=x, y=x, dead_mask=dead_mask, total_variance=total_variance)
        self.did_fire[out.latent_indices.flatten()] = True
        fvu = float(out.fvu.detach())  # the Trainer's avg_fvu logging (a sync on GPU)
        loss = out.fvu + self.auxk_alpha * out.auxk_loss + out.multi_topk_fvu / 8
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        self.opt.step()
        self.opt.zero_grad()
        if self.sched is not None:
            self.sched.step()
        with torch.no_grad():
            self.since_fired += x.shape[0]
            self.since_fired[self.did_fire] = 0
            self.did_fire.zero_()
        self.step_count += 1
        if self.step_count % 20 == 0:
            self.history.append(
                {
                    "step": self.step_count,
                    "fvu": fvu,
                    "dead_fraction": float((self.since_fired > self.dead_threshold).float().mean()),
                }
            )


def sparsify_forward(sae):
    def f(x):
        out = sae(x)
        return out.sae_out, out.latent_acts, out.latent_indices, sae.num_latents

    return f


def sparsify_decoder() -> str:
    from sparsify import utils

    return utils.decoder_impl.__name__
