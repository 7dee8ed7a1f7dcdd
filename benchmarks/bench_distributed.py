"""Tokens/s of the activation cache and of SAE training on 2 ranks against 1 rank, in one run.

Each configuration runs in fresh processes (torch.multiprocessing spawn, gloo process group over a
file, one torch thread per rank), exactly the code paths ``torchrun -m saeuron_core cache`` /
``train-sae`` take. The clock starts after every rank has loaded the pipeline / store and met at a
barrier, and stops when the last rank is done (the final barrier), so process start-up and model
loading are excluded; they are reported separately as ``startup_s``.

- cache: ``cache_activations`` over ``--images`` prompts, ``--items-per-shard`` per shard; tokens =
  images x steps x H*W summed over the hook points written.
- train: ``train_sae`` (DDP on 2 ranks) on the 1-rank store at one hook point for ``--epochs``;
  tokens = steps x batch size. The 2-rank SAE is compared with the 1-rank one (max |difference|).
- paper-shaped SAE step (1 rank): tokens/s of one training step of a 1280 -> 20480, k = 32 SAE, the
  per-rank number the README's 8-GPU extrapolation starts from (on this CPU, not a GPU).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_distributed.py --out results/distributed.json

The machine has 2 cores shared with other jobs: the ratio is bounded by 2 and by the load
(``load_avg_1min_at_start`` in the JSON); on real multi-GPU nodes each rank has its own device.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, environment, log, one_thread, tiny_pipeline_folder  # noqa: E402

one_thread()
sys.path.insert(0, str(ROOT))


def _worker(rank: int, world: int, task: dict) -> None:
    import torch.distributed as tdist

    one_thread()
    from saeuron_core.store import ActivationStore, PromptItem, cache_activations

    if world > 1:
        tdist.init_process_group("gloo", init_method=f"file://{task['init']}", rank=rank, world_size=world)
    t_start = time.time()
    if task["kind"] == "cache":
        from saeuron_core.pipeline import load_pipeline

        pipe = load_pipeline(task["model"])
        pipe.set_progress_bar_config(disable=True)
        items = [PromptItem(**it) for it in task["items"]]
    else:
        from saeuron_core.sae import SaeConfig
        from saeuron_core.sae_train import TrainConfig, train_sae

        store = ActivationStore(task["store"])
        cfg = TrainConfig(
            SaeConfig(expansion_factor=task["expansion_factor"], k=task["k"]),
            batch_size=task["batch_size"],
            epochs=task["epochs"],
            checkpoint_every=10**9,
        )
    if world > 1:
        tdist.barrier()
    t0 = time.time()
    if task["kind"] == "cache":
        store = cache_activations(
            pipe,
            items,
            task["points"],
            task["out"],
            task["steps"],
            task["guidance"],
            items_per_shard=task["items_per_shard"],
        )
        tokens = sum(
            len(store.items) * store.meta["steps"] * d["height"] * d["width"] for d in store.meta["points"].values()
        )
    else:
        metrics = train_sae(store, task["point"], cfg, task["out"])
        tokens = metrics["steps"] * cfg.batch_size
    if world > 1:
        tdist.barrier()
    t1 = time.time()
    if rank == 0:
        Path(task["result"]).write_text(json.dumps({"seconds": t1 - t0, "startup_s": t0 - t_start, "tokens": tokens}))
    if world > 1:
        tdist.destroy_process_group()


def run(world: int, task: dict, tmp: Path) -> dict:
    task = {
        **task,
        "init": str(tmp / f"init-{task['kind']}-{world}"),
        "result": str(tmp / f"result-{task['kind']}-{world}.json"),
    }
    t = time.time()
    mp.spawn(_worker, args=(world, task), nprocs=world, join=True)
    res = json.loads(Path(task["result"]).read_text())
    res.update(
        ranks=world,
        tokens_per_s=round(res["tokens"] / res["seconds"], 1),
        seconds=round(res["seconds"], 2),
        startup_s=round(res["startup_s"], 2),
        wall_s=round(time.time() - t, 2),
    )
    log(
        f"{task['kind']} on {world} rank(s): {res['tokens_per_s']:.0f} tokens/s"
        f" ({res['tokens']} tokens in {res['seconds']} s)"
    )
    return res


def paper_sae_step(batch: int, steps: int) -> dict:
    """tokens/s of the training step of a paper-sized SAE (1280 -> 20480, k 32) on this process."""
    from saeuron_core.sae import SaeConfig, TopKSae

    torch.manual_seed(0)
    sae = TopKSae(SaeConfig(d_in=1280, expansion_factor=16, k=32))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    x = torch.randn(batch, 1280)
    times = []
    for i in range(steps + 1):
        t = time.time()
        res = sae(x)
        opt.zero_grad()
        (res.fvu).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        sae.set_decoder_norm_to_unit_norm()
        if i:  # the first step warms up allocations
            times.append(time.time() - t)
    per_step = sum(times) / len(times)
    return {
        "d_in": 1280,
        "num_latents": 20480,
        "k": 32,
        "batch": batch,
        "steps_timed": steps,
        "seconds_per_step": round(per_step, 3),
        "tokens_per_s": round(batch / per_step, 1),
        "step_seconds": [round(t, 3) for t in times],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        default=None,
        help="pipeline folder (default: the bundled MiniCanvas if built, else a tiny random pipeline)",
    )
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--items-per-shard", type=int, default=4)
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--expansion-factor", type=int, default=16)
    p.add_argument("--k", type=int, default=32)
    p.add_argument(
        "--paper-sae-batch", type=int, default=512, help="tokens per timed step of the paper-sized SAE (0: skip)"
    )
    p.add_argument("--paper-sae-steps", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()

    from saeuron_core.pipeline import load_pipeline, model_info

    model = args.model
    if model is None:
        bundled = ROOT / "assets" / "minicanvas"
        model = (
            str(bundled)
            if (bundled / "unet").is_dir() and any((bundled / "unet").iterdir())
            else str(tiny_pipeline_folder())
        )
    info = model_info(load_pipeline(model), model)
    steps = args.steps or info.default_steps
    points = sorted(set(info.hook_points.values()))
    objects, styles = (info.concepts_of("object") or ["thing"]), (info.concepts_of("style") or ["plain"])
    prompts = [f"An image of {o} in {s} style." for s in styles for o in objects]
    items = [{"prompt": prompts[i % len(prompts)], "seed": i // len(prompts), "labels": {}} for i in range(args.images)]
    tmp = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    cache_task = {
        "kind": "cache",
        "model": model,
        "items": items,
        "points": points,
        "steps": steps,
        "guidance": info.default_guidance,
        "items_per_shard": args.items_per_shard,
    }
    cache = {w: run(w, {**cache_task, "out": str(tmp / f"store-{w}")}, tmp) for w in (1, 2)}
    point = points[-1]
    train_task = {
        "kind": "train",
        "store": str(tmp / "store-1"),
        "point": point,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "expansion_factor": args.expansion_factor,
        "k": args.k,
    }
    train = {w: run(w, {**train_task, "out": str(tmp / f"sae-{w}")}, tmp) for w in (1, 2)}
    from saeuron_core.sae import TopKSae

    one, two = TopKSae.load(tmp / "sae-1" / point), TopKSae.load(tmp / "sae-2" / point)
    max_diff = max((a - b).abs().max().item() for a, b in zip(one.state_dict().values(), two.state_dict().values()))
    result = {
        "benchmark": "bench_distributed",
        "model": model if args.model else ("bundled minicanvas" if "minicanvas" in model else "tiny random pipeline"),
        "cache": {
            "images": args.images,
            "items_per_shard": args.items_per_shard,
            "steps": steps,
            "points": points,
            "1_rank": cache[1],
            "2_ranks": cache[2],
            "ratio_2_over_1": round(cache[2]["tokens_per_s"] / cache[1]["tokens_per_s"], 3),
        },
        "train": {
            "point": point,
            "batch_size": args.batch_size,
            "epochs": args.epochs,
            "expansion_factor": args.expansion_factor,
            "k": args.k,
            "1_rank": train[1],
            "2_ranks": train[2],
            "ratio_2_over_1": round(train[2]["tokens_per_s"] / train[1]["tokens_per_s"], 3),
            "max_abs_weight_difference_2_vs_1": max_diff,
        },
        "environment": environment(),
    }
    if args.paper_sae_batch:
        result["paper_sae_step_1_rank"] = paper_sae_step(args.paper_sae_batch, args.paper_sae_steps)
    result["environment"]["load_avg_1min_at_end"] = round(__import__("os").getloadavg()[0], 2)
    emit(result, args.out)


if __name__ == "__main__":
    main()
