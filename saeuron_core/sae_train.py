"""Training a TopK SAE on one hook point of an activation store (`saeuron train-sae`).

Adam on FVU + alpha * AuxK, decoder rows renormalised and the gradient component parallel to
each row removed at every step, b_dec initialised to the geometric median of the first batch,
dead latents tracked in tokens since last fired. Checkpoints are atomic and periodic; running
the same command again resumes from the last one (same data order, same result).

Output: ``<out>/<point>/cfg.json`` + ``sae.safetensors`` (EleutherAI sparsify layout) and
``train_state.pt`` (optimizer state, step, dead-latent counters; our own file, weights-only).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import SaeuronError
from .io import atomic_path, write_json
from .sae import SaeConfig, TopKSae
from .store import ActivationStore


@dataclass
class TrainConfig:
    """How to train one SAE."""

    expansion_factor: int = 16
    """num_latents = expansion_factor * d_in (the paper: 16)."""
    k: int = 16
    """Active latents per token."""
    batch_size: int = 4096
    """Tokens per optimiser step (the paper: 4096)."""
    epochs: int = 5
    """Passes over the store (the paper: 5-10)."""
    lr: float | None = None
    """Adam learning rate; None = 2e-4 / sqrt(num_latents / 2**14), sparsify's rule."""
    auxk_alpha: float = 1 / 32
    dead_feature_threshold: int = 1_000_000
    """Tokens without firing after which a latent counts as dead (the paper: 10M at SD scale)."""
    checkpoint_every: int = 200
    """Optimiser steps between checkpoints."""
    seed: int = 0

    def __post_init__(self):
        for name in ("expansion_factor", "k", "batch_size", "epochs", "checkpoint_every", "dead_feature_threshold"):
            if getattr(self, name) < 1:
                raise SaeuronError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise SaeuronError(f"lr must be positive, got {self.lr}")


def train_sae(store: ActivationStore, point: str, cfg: TrainConfig, out: str | Path, log=None) -> dict:
    """Train (or resume training) the SAE for ``point``; returns final metrics."""
    if point not in store.points:
        raise SaeuronError(f"hook point {point!r} is not in the store; it holds {', '.join(store.points)}")
    if not store.completed:
        raise SaeuronError(f"the store at {store.root} has no completed shards")
    d_in = store.meta["points"][point]["channels"]
    if cfg.k > d_in * cfg.expansion_factor:
        raise SaeuronError(f"k={cfg.k} exceeds num_latents={d_in * cfg.expansion_factor}")
    folder = Path(out) / point
    state_path = folder / "train_state.pt"
    torch.manual_seed(cfg.seed)
    sae = TopKSae(SaeConfig(d_in=d_in, num_latents=d_in * cfg.expansion_factor, k=cfg.k, dead_feature_threshold=cfg.dead_feature_threshold, auxk_alpha=cfg.auxk_alpha))
    lr = cfg.lr or 2e-4 / math.sqrt(sae.num_latents / 2**14)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=6.25e-10)
    step, tokens_since_fired = 0, torch.zeros(sae.num_latents, dtype=torch.long)
    history: list[dict] = []
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["train_config"] != asdict(cfg):
            raise SaeuronError(f"{folder} holds a run with a different training config; use another --out")
        sae = TopKSae.load(folder)
        opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=6.25e-10)
        opt.load_state_dict(state["opt"])
        step, tokens_since_fired, history = state["step"], state["tokens_since_fired"], state["history"]
    tokens_per_epoch = store.token_count(point)
    total = cfg.epochs * (tokens_per_epoch // cfg.batch_size)
    if total < 1:
        raise SaeuronError(f"the store holds {tokens_per_epoch} tokens at {point}: fewer than one batch of {cfg.batch_size}")

    def checkpoint():
        sae.save(folder)
        with atomic_path(state_path) as tmp:
            torch.save({"opt": opt.state_dict(), "step": step, "tokens_since_fired": tokens_since_fired, "history": history, "train_config": asdict(cfg)}, tmp)

    batches = store.iter_token_batches(point, cfg.batch_size, shuffle=True, seed=cfg.seed, epochs=cfg.epochs)
    t0 = time.time()
    bar = tqdm(total=total, initial=step, desc=f"train-sae {point}", mininterval=5)
    for i, x in enumerate(batches):
        if i < step:  # resume: replay the deterministic data order up to the checkpoint
            continue
        if step == 0:
            sae.init_b_dec_geometric_median(x)
        dead = tokens_since_fired > cfg.dead_feature_threshold
        out = sae(x, dead_mask=dead if dead.any() else None)
        loss = out.fvu + cfg.auxk_alpha * out.auxk_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()
        fired = torch.zeros(sae.num_latents, dtype=torch.bool)
        fired[out.latent_indices[out.latent_acts > 0]] = True
        tokens_since_fired += x.shape[0]
        tokens_since_fired[fired] = 0
        step += 1
        bar.update(1)
        if step % 20 == 0 or step == total:
            l0 = (out.latent_acts > 0).sum(-1).float().mean().item()
            rec = {"step": step, "fvu": out.fvu.item(), "dead_fraction": dead.float().mean().item(), "l0": l0}
            history.append(rec)
            bar.set_postfix(fvu=f"{rec['fvu']:.4f}", dead=f"{rec['dead_fraction']:.3f}", l0=f"{l0:.1f}")
            if log:
                log(rec)
        if step % cfg.checkpoint_every == 0:
            checkpoint()
    bar.close()
    checkpoint()
    final = history[-1] if history else {}
    metrics = {**final, "steps": step, "tokens": step * cfg.batch_size, "seconds_this_run": round(time.time() - t0, 1), "num_latents": sae.num_latents, "k": cfg.k}
    write_json(folder / "train_metrics.json", metrics)
    return metrics
