"""SAE training throughput (tokens/s) and FVU after equal tokens: ours vs EleutherAI sparsify.

Both trainers see the SAME token batches in the same order, with the same config (d_in,
num_latents, k, batch size, lr, AuxK alpha, dead-feature threshold) and the same initial
encoder (same seed, same ``nn.Linear`` init; W_dec = normalised copy in both). Steps are
interleaved one by one (sparsify step on batch i, then ours on batch i), so machine load hits
both alike.

- ours: ``saeuron_core.sae_train.train_sae`` ITSELF, fed through a duck-typed store whose
  ``iter_token_batches`` hands it the benchmark's batches; ours' time for a batch is the time
  between handing it over and train_sae asking for the next one (its whole loop body: forward,
  backward, parallel-gradient removal, Adam, renorm, dead-latent bookkeeping, logging).
  Geometric-median b_dec init on the first batch (its convention).
- sparsify: ``sparsify.SparseCoder`` stepped exactly as ``sparsify.Trainer.fit`` does for
  loss_fn="fvu", optimizer="adam", no accumulation: b_dec = batch mean on the first batch,
  decoder renorm BEFORE the forward, ``forward(x, y=x, dead_mask, total_variance)``,
  ``did_fire`` from ``latent_indices``, loss = fvu + alpha * auxk + multi_topk_fvu / 8,
  ``remove_gradient_parallel_to_decoder_directions``, ``torch.optim.Adam`` (bitsandbytes is not
  installed, so the Trainer would fall back to it too), default eps. Its Trainer's LR schedule
  (1000 warmup steps, linear decay) is off by default to match ours' constant LR
  (``--sparsify-warmup N`` turns it on).

Synthetic data (sparse non-negative combinations of random unit directions plus an offset and
noise, so FVU is meaningful)::

    .venv/bin/python benchmarks/bench_sae_training.py --synthetic --steps 300 --out bench_sae_training.json

An activation store (``saeuron cache``), one hook point::

    .venv/bin/python benchmarks/bench_sae_training.py --store build/store --point up_blocks.1.attentions.1 --steps 300

On a GPU (``--device cuda``): both trainers get the same batches already on the device (made on
the CPU outside the timing), both are timed between ``torch.cuda.synchronize()`` calls, and ours'
prefetch thread is replaced by a plain pass-through (there is nothing left to hide, and the timing
must stay in the training loop's thread); sparsify uses its Triton decoder when triton imports.
``--autocast bf16`` trains ours under bf16 autocast (sparsify's Trainer does too on CUDA: its step
is then run under the same autocast); ``--no-tf32`` keeps float32 matmuls exact on CUDA.

Add ``--profile`` for the top ops of each trainer (torch.profiler, a few extra steps; on CUDA by kernel time).
Goal (issue): ours >= 1.2x sparsify's tokens/s at equal or better FVU.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, environment, log, one_thread  # noqa: E402

one_thread()

import torch  # noqa: E402
from _sparsify_runner import (  # noqa: E402
    SparseCoder,
    SparseCoderConfig,
    SparsifyRunner,
    sparsify_decoder,
    sparsify_forward,
)
from _token_sources import store_source, synthetic_source  # noqa: E402

import saeuron_core.sae_train as sae_train_module  # noqa: E402
from saeuron_core.sae import SaeConfig, TopKSae  # noqa: E402
from saeuron_core.sae_train import TrainConfig, train_sae  # noqa: E402

DEVICE = torch.device("cpu")  # set by --device


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


# --------------------------------------------------------------------------- ours, through train_sae
class FeedStore:
    """Just enough of ``ActivationStore`` for ``train_sae``: one point, the benchmark's batches."""

    def __init__(
        self, point: str, d_in: int, batches, n_batches: int, batch_size: int, before_yield=None, after_last=None
    ):
        self.points = [point]
        self.completed = [0]
        self.root = Path("<benchmark feed>")
        self.meta = {"points": {point: {"channels": d_in}}}
        self._batches, self._n, self._bs = batches, n_batches, batch_size
        self.before_yield, self.after_last = before_yield, after_last
        self.ours_seconds: list[float] = []
        self.fed = 0

    def token_count(self, point: str) -> int:
        return self._n * self._bs

    def iter_token_batches(self, point, batch_size, shuffle=True, seed=0, epochs=1, **_):
        assert batch_size == self._bs and epochs == 1
        for _ in range(self._n):
            try:
                x = next(self._batches)
            except StopIteration:
                return
            if self.before_yield is not None:
                self.before_yield(x)
            self.fed += 1
            sync()
            t0 = time.perf_counter()
            yield x
            sync()
            self.ours_seconds.append(time.perf_counter() - t0)
        if self.after_last is not None:
            self.after_last()


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(forward, x: torch.Tensor, chunk: int = 2048) -> dict:
    """FVU (batch-mean denominator, as both define it), L0 and the fraction of latents that never
    fire on ``x``."""
    residual, l0, fired = 0.0, 0.0, None
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk]
        sae_out, acts, idx, n = forward(part)
        residual += (part - sae_out).pow(2).sum().item()
        l0 += (acts > 0).sum().item()
        f = torch.zeros(n, dtype=torch.bool, device=x.device)
        f[idx[acts > 0]] = True
        fired = f if fired is None else fired | f
    total = (x - x.mean(0)).pow(2).sum().item()
    return {
        "fvu": round(residual / total, 5),
        "l0": round(l0 / len(x), 2),
        "never_fired_fraction": round(1 - fired.float().mean().item(), 4),
    }


def _ours_forward(sae: TopKSae):
    def f(x):
        out = sae(x)
        return out.sae_out, out.latent_acts, out.latent_indices, sae.num_latents

    return f


def throughput(seconds: list[float], batch_size: int, skip: int) -> dict:
    steady = seconds[skip:] or seconds
    return {
        "steps": len(seconds),
        "seconds_total": round(sum(seconds), 3),
        "tokens_per_s": round(batch_size * len(seconds) / sum(seconds), 1),
        "tokens_per_s_steady": round(batch_size * len(steady) / sum(steady), 1),
        "ms_per_step_median": round(1000 * statistics.median(steady), 3),
        "first_step_ms": round(1000 * seconds[0], 3),
    }


def sparsify_runner(args, d_in: int, num_latents: int, lr: float, warmup: int, steps: int) -> "SparsifyRunner":
    """sparsify's trainer as the run's arguments configure it (device, autocast)."""
    return SparsifyRunner(
        d_in,
        num_latents,
        args.k,
        lr,
        args.auxk_alpha,
        args.dead_threshold,
        args.seed,
        warmup,
        steps,
        DEVICE,
        autocast=args.autocast == "bf16",
    )


def ours_config(args, num_latents: int, lr: float) -> TrainConfig:
    """Ours' TrainConfig as the run's arguments configure it: the same SAE as sparsify's, one epoch,
    no checkpoint inside the timing, on the run's device with its autocast and TF32 choice."""
    return TrainConfig(
        SaeConfig(
            num_latents=num_latents,
            k=args.k,
            auxk_alpha=args.auxk_alpha,
            dead_feature_threshold=args.dead_threshold,
        ),
        batch_size=args.batch_size,
        epochs=1,
        lr=lr,
        checkpoint_every=10**9,
        seed=args.seed,
        device=str(DEVICE),
        autocast=args.autocast,
        tf32=not args.no_tf32,
    )


# --------------------------------------------------------------------------- profiling
def profile(args, d_in: int, num_latents: int, lr: float, batches, steps: int) -> dict:
    """torch.profiler over ``steps`` steps of each trainer (fresh models), top ops by self time on
    the benchmark's device (CPU time on the CPU, kernel time on CUDA)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    xs = [next(batches) for _ in range(steps + 1)]
    out = {}
    runner = sparsify_runner(args, d_in, num_latents, lr, warmup=0, steps=steps + 1)
    runner.step(xs[0])
    sync()
    with tprofile(activities=activities) as prof:
        for x in xs[1:]:
            runner.step(x)
        sync()
    out["sparsify"] = _top_ops(prof, steps)

    with tempfile.TemporaryDirectory() as tmp:
        # first step (b_dec init) outside the profile: feed it, then profile the rest
        state = {"prof": None}

        def before(x):
            if store.fed == 1 and state["prof"] is None:
                state["prof"] = tprofile(activities=activities)
                state["prof"].__enter__()

        def after():
            sync()
            state["prof"].__exit__(None, None, None)  # before train_sae's final checkpoint

        store = FeedStore("p", d_in, iter(xs), len(xs), args.batch_size, before_yield=before, after_last=after)
        cfg = ours_config(args, num_latents, lr)
        with open("/dev/null", "w") as devnull, contextlib.redirect_stderr(devnull):
            train_sae(store, "p", cfg, tmp)
    out["ours"] = _top_ops(state["prof"], steps)
    return out


def _top_ops(prof, steps: int, n: int = 12) -> list[dict]:
    def self_us(e) -> float:
        return e.self_device_time_total if DEVICE.type == "cuda" else e.self_cpu_time_total

    rows = sorted(prof.key_averages(), key=self_us, reverse=True)[:n]
    return [
        {
            "op": e.key,
            "self_ms_per_step": round(self_us(e) / 1000 / steps, 3),
            "calls_per_step": round(e.count / steps, 2),
        }
        for e in rows
    ]


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="synthetic structured tokens")
    src.add_argument("--store", help="activation store folder (saeuron cache)")
    ap.add_argument("--point", help="hook point in --store")
    ap.add_argument(
        "--epochs",
        type=int,
        default=1,
        help="--store: passes over the store (held-out batches are only disjoint within the first)",
    )
    ap.add_argument("--d-in", type=int, default=64, help="--synthetic: token width")
    ap.add_argument("--atoms", type=int, default=512, help="--synthetic: ground-truth directions")
    ap.add_argument("--active", type=int, default=8, help="--synthetic: directions per token")
    ap.add_argument("--noise", type=float, default=0.05, help="--synthetic: gaussian noise std")
    ap.add_argument("--expansion", type=int, default=16, help="num_latents = expansion * d_in")
    ap.add_argument(
        "--k", type=int, default=16, help="TopK k (the bundled SAEs: 16; SaeConfig default and the paper: 32)"
    )
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument(
        "--steps", type=int, default=300, help="optimiser steps (equal tokens: steps * batch size for both)"
    )
    ap.add_argument(
        "--lr", type=float, default=None, help="default: 2e-4 / sqrt(num_latents / 2**14), both projects' rule"
    )
    ap.add_argument("--auxk-alpha", type=float, default=1 / 32)
    ap.add_argument(
        "--dead-threshold",
        type=int,
        default=1_000_000,
        help=(
            "tokens without firing before a latent is dead (1M: the bundled SAEs' setting; SaeConfig's default is 10M)"
        ),
    )
    ap.add_argument(
        "--sparsify-warmup",
        type=int,
        default=0,
        help="sparsify Trainer's linear LR warmup/decay (its default: 1000); 0 = constant LR like ours",
    )
    ap.add_argument("--heldout", type=int, default=8192, help="held-out tokens for the final FVU")
    ap.add_argument("--skip", type=int, default=2, help="first steps left out of the steady-state throughput")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N: where both trainers run")
    ap.add_argument("--autocast", choices=["bf16"], default=None, help="train both under bf16 autocast")
    ap.add_argument(
        "--no-tf32",
        action="store_true",
        help="CUDA: keep float32 matmuls exact (ours' TrainConfig.tf32 off, and sparsify's)",
    )
    ap.add_argument(
        "--profile", action="store_true", help="also profile a few steps of each (torch.profiler; on CUDA: kernel time)"
    )
    ap.add_argument("--profile-steps", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.store and not args.point:
        raise SystemExit("--store needs --point")
    global DEVICE
    from saeuron_core.device import resolve_device

    DEVICE = resolve_device(args.device)
    if DEVICE.type == "cuda":
        DEVICE = torch.device("cuda", DEVICE.index or 0)
        torch.backends.cuda.matmul.allow_tf32 = not args.no_tf32  # sparsify's steps (ours sets its own)
        # batches are already on the device: ours' prefetch thread would only move the timing out of its loop
        sae_train_module.prefetch_to = lambda batches, device: iter(batches)
    env = environment()
    if DEVICE.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(DEVICE)

    d_in, heldout, batches = synthetic_source(args, DEVICE) if args.synthetic else store_source(args, DEVICE)
    num_latents = d_in * args.expansion
    lr = args.lr or 2e-4 / math.sqrt(num_latents / 2**14)
    sparsify = sparsify_runner(args, d_in, num_latents, lr, warmup=args.sparsify_warmup, steps=args.steps)
    sparsify_seconds: list[float] = []

    def sparsify_step(x):
        sync()
        t0 = time.perf_counter()
        sparsify.step(x)
        sync()
        sparsify_seconds.append(time.perf_counter() - t0)

    store = FeedStore("point", d_in, batches, args.steps, args.batch_size, before_yield=sparsify_step)
    cfg = ours_config(args, num_latents, lr)
    log(
        f"training {args.steps} steps of {args.batch_size} tokens: d_in={d_in}, num_latents={num_latents},"
        f" k={args.k}, lr={lr:.3g}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        metrics = train_sae(store, "point", cfg, tmp)
        wall = time.perf_counter() - t0
        ours = TopKSae.load(Path(tmp) / "point", device=DEVICE)
    steps_done = len(store.ours_seconds)
    sparsify_seconds = sparsify_seconds[:steps_done]
    init_same = None  # checked on fresh models: same seed -> same encoder
    torch.manual_seed(args.seed)

    a = TopKSae(SaeConfig(d_in=d_in, num_latents=num_latents, k=args.k))
    torch.manual_seed(args.seed)
    b = SparseCoder(d_in, SparseCoderConfig(num_latents=num_latents, k=args.k))
    init_same = bool(torch.equal(a.encoder.weight, b.encoder.weight) and torch.equal(a.W_dec, b.W_dec))

    t_ours = throughput(store.ours_seconds, args.batch_size, args.skip)
    t_sp = throughput(sparsify_seconds, args.batch_size, args.skip)
    result = {
        "data": "synthetic" if args.synthetic else {"store": args.store, "point": args.point},
        "device": str(DEVICE),
        "sparse_ops": {"ours": metrics.get("sparse_ops"), "sparsify": sparsify_decoder()},
        "autocast": args.autocast,
        "tf32": DEVICE.type == "cuda" and not args.no_tf32,
        "config": {
            "d_in": d_in,
            "num_latents": num_latents,
            "k": args.k,
            "batch_size": args.batch_size,
            "lr": lr,
            "auxk_alpha": args.auxk_alpha,
            "dead_feature_threshold": args.dead_threshold,
            "sparsify_warmup": args.sparsify_warmup,
        },
        "tokens_each": steps_done * args.batch_size,
        "same_initial_weights": init_same,
        "ours": {
            **t_ours,
            "heldout": evaluate(_ours_forward(ours), heldout),
            "train_fvu_last_logged": metrics.get("fvu"),
            "dead_fraction_last_logged": metrics.get("dead_fraction"),
        },
        "sparsify": {
            **t_sp,
            "heldout": evaluate(sparsify_forward(sparsify.sae), heldout),
            "train_fvu_last_logged": sparsify.history[-1]["fvu"] if sparsify.history else None,
            "dead_fraction_last_logged": sparsify.history[-1]["dead_fraction"] if sparsify.history else None,
        },
        "throughput_ratio_ours_over_sparsify": round(t_ours["tokens_per_s_steady"] / t_sp["tokens_per_s_steady"], 3),
        "throughput_ratio_all_steps": round(t_ours["tokens_per_s"] / t_sp["tokens_per_s"], 3),
        "wall_seconds_both": round(wall, 1),
        "goal": "throughput_ratio >= 1.2 at equal or better held-out FVU",
    }
    result["fvu_delta_ours_minus_sparsify"] = round(
        result["ours"]["heldout"]["fvu"] - result["sparsify"]["heldout"]["fvu"], 5
    )
    if args.profile:
        log(f"profiling {args.profile_steps} steps of each")
        source = (synthetic_source if args.synthetic else store_source)(args, DEVICE)[2]
        result["profile_top_ops"] = profile(args, d_in, num_latents, lr, source, args.profile_steps)
    result["environment"] = env
    emit(result, args.out)


if __name__ == "__main__":
    main()
