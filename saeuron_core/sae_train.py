"""Training a TopK SAE on one hook point of an activation store (`saeuron train-sae`).

Adam on FVU + alpha * AuxK, decoder rows renormalised and the gradient component parallel to
each row removed at every step, b_dec initialised to the geometric median of the first batch,
dead latents tracked in tokens since last fired.

Output, as sparsify lays it out: the artefact ``<out>/<point>/`` holds only ``cfg.json`` and
``sae.safetensors``. Training state lives beside it in ``<out>/.train/<point>/``: ``state.pt``
(weights, optimizer, step, dead-latent counters; weights-only) and ``metrics.json``.

Checkpoints are atomic and periodic; SIGTERM checkpoints and stops. Running the same command again
resumes: the data stream seeks to the checkpoint's batch (skipped shards are not read), so a
resumed run trains the same SAE as an uninterrupted one.

Under torchrun the training is data parallel: every rank reads the same global batch of
``batch_size`` tokens and trains on its contiguous slice of it; each rank's loss is its part of
the global batch's FVU (and AuxK) loss, both divided by the global batch's variance, and the
gradients are summed over ranks, so the step is the one-process step up to float rounding. The
decoder is then projected and renormalised identically on every rank, the fired-latent masks are
all-reduced (the dead-latent counters stay equal), rank 0 alone writes checkpoints, and a run
resumes with any world size. Every rank still reads the whole stream (only the compute is split).

Devices: ``TrainConfig.device`` (auto: CUDA when present). The SAE, Adam state and dead-latent
counters live there; token batches are streamed to it one batch ahead (``device.prefetch_to``:
pinned memory and a side stream on CUDA), and the sparse products are the device's
(``sparse_ops``). Under torchrun each rank trains on its own GPU (cuda:LOCAL_RANK). The
initial weights are drawn on the CPU, so a seed gives the same SAE to start from on any device;
checkpoints are portable across devices.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import distributed as dist
from .device import DTYPE_ALIASES, DTYPES, prefetch_to, process_device, resolve_device, tf32
from .errors import SaeuronError
from .io import write_json
from .sae import SaeConfig, TopKSae
from .store import ActivationStore
from .training import Progress, StopRequest, load_state, save_state

TRAIN_DIR = ".train"
STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"


@dataclass
class TrainConfig:
    """How to train one SAE."""

    sae: SaeConfig = field(default_factory=SaeConfig)
    """The SAE to train: size (num_latents or expansion_factor), k, dead-latent threshold, AuxK
    weight. Its d_in is taken from the hook point."""
    batch_size: int = 4096
    """Tokens per optimiser step (the paper: 4096)."""
    epochs: int = 5
    """Passes over the store (the paper: 5-10)."""
    lr: float | None = None
    """Adam learning rate; None = 2e-4 / sqrt(num_latents / 2**14), sparsify's rule."""
    checkpoint_every: int = 200
    """Optimiser steps between checkpoints."""
    seed: int = 0
    """Seeds the SAE's initialisation and the data order."""
    device: str = "auto"
    """Where the SAE trains: auto (CUDA when present, else MPS, else CPU), cpu, cuda, cuda:N or
    mps. Under torchrun, auto and cuda mean each rank's own GPU (cuda:LOCAL_RANK)."""
    dtype: str = "float32"
    """Storage precision of the SAE's weights and Adam state: float32, or bfloat16 for half the
    memory. The arithmetic is float32 either way unless ``autocast`` is set."""
    autocast: str | None = None
    """None, or bf16: the encoder's matmul under torch.autocast in bfloat16 (as sparsify trains on
    CUDA); TopK values, sparse products, losses and gradients stay float32."""
    tf32: bool = True
    """Let float32 matmuls use TensorFloat-32 on CUDA (Ampere and newer; faster, about 3 decimal
    digits in each product); no effect on other devices."""

    def __post_init__(self):
        if not isinstance(self.sae, SaeConfig):
            raise SaeuronError(f"TrainConfig.sae must be a SaeConfig, got {type(self.sae).__name__}")
        resolve_device(self.device)  # a device that is not here fails now, before any work
        dtype = DTYPE_ALIASES.get(str(self.dtype).lower(), str(self.dtype).lower())
        if dtype not in ("float32", "bfloat16"):
            raise SaeuronError(f"the SAE's dtype must be float32 or bfloat16, got {self.dtype!r}")
        self.dtype = dtype
        autocast = (
            None
            if self.autocast in (None, "", "none")
            else DTYPE_ALIASES.get(str(self.autocast).lower(), str(self.autocast).lower())
        )
        if autocast not in (None, "bfloat16"):
            raise SaeuronError(f"autocast must be None (off) or bf16, got {self.autocast!r}")
        self.autocast = autocast and "bf16"
        for name in ("batch_size", "epochs", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise SaeuronError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise SaeuronError(f"lr must be positive, got {self.lr}")

    def identity(self, d_in: int) -> dict:
        """What decides the result (the checkpoint cadence does not), with the SAE config resolved."""
        d = asdict(self)
        for where in ("checkpoint_every", "device", "tf32"):  # a checkpoint resumes on any device
            d.pop(where)
        d["sae"] = asdict(self.sae.with_d_in(d_in))
        return d


def train_dir(out: str | Path, point: str) -> Path:
    """Where the training state of ``point`` lives: beside the artefact ``<out>/<point>``, not in it."""
    return Path(out) / TRAIN_DIR / point


def train_sae(
    store: ActivationStore,
    point: str,
    cfg: TrainConfig,
    out: str | Path,
    log=None,
    data_parallel: bool = True,
    device: str | torch.device | None = None,
) -> dict:
    """Train (or resume training) the SAE for ``point``; returns final metrics.

    ``device``: where to train (None: ``cfg.device``), resolved for this process
    (``device.process_device``) before the store is read.
    ``log(record)`` receives a record every 20 steps. SIGTERM (in the main thread) checkpoints
    and raises SaeuronError; the same call resumes. ``data_parallel``: under torchrun, train this
    SAE together with every rank (DDP, see the module docstring); False trains it in this process
    alone (hook points on different ranks).
    """
    device = process_device(cfg.device if device is None else device)
    ddp = data_parallel and dist.active()
    world, rank = (dist.world(), dist.rank()) if ddp else (1, 0)
    writer = rank == 0  # the one process that writes checkpoints and metrics
    if point not in store.points:
        raise SaeuronError(f"hook point {point!r} is not in the store; it holds {', '.join(store.points)}")
    if not store.completed:
        raise SaeuronError(f"the store at {store.root} has no completed shards")
    sae_cfg = cfg.sae.with_d_in(store.meta["points"][point]["channels"])
    tokens_per_epoch = store.token_count(point)
    total = cfg.epochs * (tokens_per_epoch // cfg.batch_size)  # an upper bound: group leftovers are dropped
    if total < 1:
        raise SaeuronError(
            f"the store holds {tokens_per_epoch} tokens at {point}: fewer than one batch of {cfg.batch_size}"
        )
    if cfg.batch_size < 2 * world:
        raise SaeuronError(
            f"batch_size {cfg.batch_size} is too small for {world} ranks: each rank needs at least 2 tokens of every "
            "batch"
        )
    folder, state_path = Path(out) / point, train_dir(out, point) / STATE_FILE
    identity = cfg.identity(sae_cfg.d_in)
    torch.manual_seed(cfg.seed)
    sae = TopKSae(sae_cfg).to(device=device, dtype=DTYPES[cfg.dtype])  # drawn on the CPU: the same start anywhere
    lr = cfg.lr or 2e-4 / math.sqrt(sae.num_latents / 2**14)
    # On CUDA the fused kernel: one launch for all parameters instead of a foreach chain (it was
    # the largest item of a paper-size step on an H100, 1.4 of 7.6 ms); the same update either way.
    opt = torch.optim.Adam(sae.parameters(), lr=lr, eps=6.25e-10, fused=device.type == "cuda" or None)
    step, tokens_since_fired = 0, torch.zeros(sae.num_latents, dtype=torch.long, device=device)
    history: list[dict] = []
    if (state := load_state(state_path)) is not None:
        # a run from before dtype / autocast existed was float32 without autocast
        if {"dtype": "float32", "autocast": None, **state["train_config"]} != identity:
            raise SaeuronError(f"{state_path.parent} holds a run with a different training config; use another --out")
        sae.load_state_dict(state["sae"])
        opt.load_state_dict(state["opt"])  # moves Adam's state to the parameters' device
        step, tokens_since_fired, history = state["step"], state["tokens_since_fired"].to(device), state["history"]
    if ddp:
        dist.broadcast_tensors(list(sae.parameters()))  # start from rank 0's weights, whatever happened before

    def checkpoint():
        if not writer:
            return
        # The state holds the weights too: it is one atomic file, consistent with the optimizer
        # even if the process dies between writing it and exporting the artefact.
        save_state(
            state_path,
            {
                "sae": sae.state_dict(),
                "opt": opt.state_dict(),
                "step": step,
                "tokens_since_fired": tokens_since_fired,
                "history": history,
                "train_config": identity,
            },
        )
        sae.save(folder)

    batches = prefetch_to(
        store.iter_token_batches(point, cfg.batch_size, shuffle=True, seed=cfg.seed, epochs=cfg.epochs, start=step),
        device,
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16")
    t0 = time.time()
    progress = Progress(
        f"train-sae {point}", total, step, checkpoint, every_steps=cfg.checkpoint_every, postfix_every=20
    )
    with StopRequest() as stop, tf32(cfg.tf32), contextlib.closing(batches):
        for x in batches:
            stop_now = stop.requested
            if ddp:  # any rank's SIGTERM stops every rank at the same step
                stop_now = bool(dist.all_reduce(torch.tensor([float(stop_now)]), "max").item())
            if stop_now:
                checkpoint()
                progress.close()
                raise SaeuronError(
                    f"train-sae {point} stopped by SIGTERM at step {step}; checkpoint saved, run the same command to "
                    "resume"
                )
            if step == 0:
                sae.init_b_dec_geometric_median(x)
            dead = tokens_since_fired > sae_cfg.dead_feature_threshold
            xr = x.tensor_split(world)[rank] if ddp else x
            with autocast:
                res = sae(xr, dead_mask=dead if dead.any() else None)
            loss = res.fvu + sae_cfg.auxk_alpha * res.auxk_loss
            if ddp:
                # both losses are divided by this slice's variance; rescale to the global batch's,
                # so that the sum over ranks is the one-process loss of the whole batch
                share = (xr - xr.mean(0)).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
                loss = loss * share
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if ddp:
                dist.all_reduce_grads(list(sae.parameters()))
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            sae.set_decoder_norm_to_unit_norm()
            fired = torch.zeros(sae.num_latents, dtype=torch.bool, device=device)
            fired[res.latent_indices[res.latent_acts > 0]] = True
            if ddp:
                fired = dist.all_reduce(fired.to(torch.uint8), "max").bool()
            tokens_since_fired += x.shape[0]
            tokens_since_fired[fired] = 0
            step += 1
            postfix = {}
            if step % 20 == 0 or step == total:
                fvu, l0 = res.fvu.detach(), (res.latent_acts > 0).sum(-1).float().mean()
                if ddp:  # the global batch's FVU and mean L0
                    fvu, l0 = dist.all_reduce(torch.stack([fvu * share.detach(), l0 * len(xr) / len(x)])).unbind()
                fvu, l0 = fvu.item(), l0.item()
                rec = {"step": step, "fvu": fvu, "dead_fraction": dead.float().mean().item(), "l0": l0}
                history.append(rec)
                postfix = {"fvu": f"{rec['fvu']:.4f}", "dead": f"{rec['dead_fraction']:.3f}", "l0": f"{l0:.1f}"}
                if log:
                    log(rec)
            progress.tick(step, **postfix)
    progress.close()
    checkpoint()
    final = history[-1] if history else {}
    metrics = {
        **final,
        "steps": step,
        "tokens": step * cfg.batch_size,
        "seconds_this_run": round(time.time() - t0, 1),
        "num_latents": sae.num_latents,
        "k": sae_cfg.k,
        "device": str(device),
        "sparse_ops": sae.sparse_ops.name,
    }
    if ddp:
        metrics["ranks"] = world
    if writer:
        write_json(train_dir(out, point) / METRICS_FILE, metrics)
    if ddp:
        dist.barrier()  # every rank returns once the artefact is on disk
    return metrics
