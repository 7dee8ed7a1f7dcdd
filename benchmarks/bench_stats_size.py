"""Feature statistics at the paper's size: bytes on disk per hook point and peak memory of
``saeuron stats``, plus the feature card's first-open time on real statistics.

Paper size: an SAE of 20480 latents (k = 32) on a 1280-channel block with a 16 x 16 map (SD1.5
``up_blocks.1`` at 512 px), 50 steps. Each phase runs in its own child process and reports that
process's peak RSS (``ru_maxrss``):

- ``real_path``: ``compute_stats`` itself (shard read a slice at a time, the paper-size SAE
  encoding in bounded calls, the streaming accumulator) on a synthetic on-disk store of
  ``--real-images`` images (random fp16 activations: the SAE's real encoder, a few images only
  because encoding 1280 -> 20480 is slow on CPU);
- ``synthetic_codes``: the same accumulator (``StatsBuilder``) fed synthetic top-k codes for
  ``--images`` images x 50 steps with ``--concepts`` concepts, then thumbnails of every image
  among the examples (smooth synthetic 512 px images, stored at 128 px), saved: the file
  size per hook point, by tensor.

The concept table ``concept_sums [C, T, n]`` is float32 and grows with concepts x steps
(4.1 MB per concept at 50 steps x 20480 latents); the output says how many concepts fit the
goal alongside the rest. Goal (issue 11 item 7): <= 50 MB per hook point, <= 2 GB peak.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_stats_size.py --out results/stats_size.json
    # also time first opens of feature cards on built statistics (bundled model):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_stats_size.py --card-stats assets/stats --out ...
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, environment, log, one_thread  # noqa: E402

sys.path.insert(0, str(ROOT))  # this checkout's packages, not an installed copy

one_thread()

import torch  # noqa: E402

GOAL_BYTES, GOAL_PEAK_MB = 50e6, 2048


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_codes(m: int, hw: int, n: int, k: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k codes [m, hw, k]: distinct ids per token (one per band of n / k latents, skewed to
    the band's start so some latents are popular), exponential values."""
    band = n // k
    offset = (torch.rand(m, hw, k, generator=gen) ** 3 * band).long()
    idx = offset + torch.arange(k) * band
    vals = torch.empty(m, hw, k).exponential_(generator=gen)
    return vals, idx


def smooth_image(seed: int, side: int = 512):
    """A PIL image of smooth random colour fields (compresses like a generated picture, unlike noise)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
    return Image.fromarray(small).resize((side, side), Image.BICUBIC)


def phase_synthetic(a) -> dict:
    from saeuron_core.stats import StatsBuilder

    n, hw, steps = a.latents, a.grid * a.grid, a.steps
    items = [
        {"prompt": f"prompt {i}", "seed": i, "labels": {"concept": f"c{i % a.concepts}"} if a.concepts else {}}
        for i in range(a.images)
    ]
    builder = StatsBuilder(
        n,
        a.grid,
        a.grid,
        steps,
        [[i % a.concepts] if a.concepts else [] for i in range(a.images)],
        a.concepts,
        list(range(a.images)),
        a.top_m,
    )
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    per_call = 64
    maps = [(i, s) for i in range(a.images) for s in range(steps)]
    for j in range(0, len(maps), per_call):
        chunk = maps[j : j + per_call]
        vals, idx = synthetic_codes(len(chunk), hw, n, a.k, gen)
        builder.add(vals, idx, torch.tensor([c[0] for c in chunk]), torch.tensor([c[1] for c in chunk]))
    accumulate_s = time.perf_counter() - t
    stats = builder.finish(
        concepts=tuple(f"c{i}" for i in range(a.concepts)),
        concept_kinds=("concept",) * a.concepts,
        timesteps=tuple(range(999, 0, -(999 // steps)))[:steps],
        items=items,
        guidance=7.5,
        distinct="image",
        concept_counts=builder.membership.sum(0),
    )
    del builder
    needed = stats.needed_items()
    t = time.perf_counter()
    stats.set_thumbnails({i: smooth_image(i) for i in needed}, a.thumb_side)
    thumbs_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        stats.save(tmp)
        files = {f.name: f.stat().st_size for f in Path(tmp).iterdir()}
    tensors = {
        name: getattr(stats, name).numel() * getattr(stats, name).element_size()
        for name in (
            "concept_sums",
            "example_map",
            "example_value",
            "example_item",
            "example_step",
            "example_pos",
            "histogram",
            "frequency",
            "thumb_data",
            "thumb_offset",
            "thumb_item",
        )
    }
    total = sum(files.values())
    per_concept = steps * n * 4
    rest = total - tensors["concept_sums"]
    return {
        "images": a.images,
        "maps": len(maps),
        "concepts": a.concepts,
        "thumbnails": len(needed),
        "thumbnail_mean_bytes": round(tensors["thumb_data"] / max(len(needed), 1)),
        "accumulate_s": round(accumulate_s, 1),
        "thumbnails_encode_s": round(thumbs_s, 1),
        "bytes_per_point": total,
        "files": files,
        "tensor_bytes": dict(sorted(tensors.items(), key=lambda kv: -kv[1])),
        "concept_table_bytes_per_concept": per_concept,
        "bytes_without_concept_table": rest,
        "concepts_that_fit_the_goal": max(0, int((GOAL_BYTES - rest) // per_concept)),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def phase_real(a) -> dict:
    from saeuron_core.io import save_safetensors, write_json
    from saeuron_core.sae import SaeConfig, TopKSae
    from saeuron_core.stats import compute_stats
    from saeuron_core.store import ActivationStore

    hw, steps, point = a.grid * a.grid, a.steps, "up_blocks.1.attentions.1"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        items = [{"prompt": f"prompt {i}", "seed": i, "labels": {"style": f"s{i % 2}"}} for i in range(a.real_images)]
        meta = {
            "model": "",
            "hook_points": [point],
            "points": {point: {"channels": a.channels, "height": a.grid, "width": a.grid}},
            "items": items,
            "steps": steps,
            "guidance": 7.5,
            "items_per_shard": a.real_images,
            "dtype": "float16",
            "completed_shards": [0],
            "timesteps": list(range(steps)),
        }
        write_json(root / "store.json", meta)
        gen = torch.Generator().manual_seed(0)
        acts = torch.randn(a.real_images * steps, hw, a.channels, generator=gen).half()
        save_safetensors(
            {
                "acts": acts,
                "item": torch.arange(a.real_images).repeat_interleave(steps),
                "step": torch.arange(steps).repeat(a.real_images),
                "timestep": torch.arange(steps).repeat(a.real_images),
            },
            ActivationStore(root).shard_path(point, 0),
        )
        del acts
        before = peak_rss_mb()
        torch.manual_seed(0)
        sae = TopKSae(SaeConfig(d_in=a.channels, num_latents=a.latents, k=a.k))
        t = time.perf_counter()
        stats = compute_stats(ActivationStore(root), point, sae, top_m=a.top_m)
        seconds = time.perf_counter() - t
    return {
        "images": a.real_images,
        "tokens": a.real_images * steps * hw,
        "compute_stats_s": round(seconds, 1),
        "examples_filled": int((stats.example_item >= 0).sum()),
        "peak_rss_mb_before_stats (store written in this process)": round(before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def phase_card(a) -> dict:
    """First opens of feature cards on built statistics (bundled model: scores warmed by one ranking)."""
    from explorer.context import Explorer
    from explorer.session import ExplorerSession

    session = ExplorerSession.open("minicanvas", None, a.card_stats, None, None, threads=1)
    calls = {"n": 0}
    original = session.plain_images

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    session.plain_images = counting
    features = Explorer.build(session).features
    out = {}
    for point in session.points:
        t = time.perf_counter()
        features.card(point, 0)
        cold_process = time.perf_counter() - t
        stats = session.bundle.stats[point]
        order = stats.example_value[:, 0].argsort(descending=True).tolist()
        chosen = order[1 : 1 + a.card_repeats]
        times = []
        for feature in chosen:  # each opened for the first time
            t = time.perf_counter()
            card = features.card(point, feature)
            times.append(1000 * (time.perf_counter() - t))
            assert card.patches and not any(p.placeholder for p in card.patches)
        times.sort()
        out[point] = {
            "first_card_of_the_process_ms (scores computed)": round(1000 * cold_process, 1),
            "first_open_ms": {"median": round(times[len(times) // 2], 1), "max": round(times[-1], 1), "n": len(times)},
            "stats_mb": round(sum(f.stat().st_size for f in (Path(a.card_stats) / point).iterdir()) / 1e6, 2),
        }
    out["pipeline_calls"] = calls["n"]
    return out


PHASES = {"synthetic_codes": phase_synthetic, "real_path": phase_real, "card": phase_card}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latents", type=int, default=20480)
    ap.add_argument("--channels", type=int, default=1280)
    ap.add_argument("--grid", type=int, default=16, help="map side in tokens (SD1.5 up_blocks.1 at 512 px: 16)")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--images", type=int, default=400, help="synthetic_codes: images (x steps maps)")
    ap.add_argument("--concepts", type=int, default=4, help="synthetic_codes: concepts (0 = a plain prompt list)")
    ap.add_argument("--top-m", type=int, default=8)
    ap.add_argument("--thumb-side", type=int, default=128)
    ap.add_argument("--real-images", type=int, default=2, help="real_path: images in the on-disk store")
    ap.add_argument("--card-stats", default=None, help="also time feature cards on these statistics (bundled model)")
    ap.add_argument("--card-repeats", type=int, default=20)
    ap.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.phase:  # child process
        print(json.dumps(PHASES[a.phase](a)))
        return
    result = {
        "environment": environment(),
        "assumed": {k: getattr(a, k) for k in ("latents", "channels", "grid", "k", "steps", "top_m", "thumb_side")},
    }
    phases = ["synthetic_codes", "real_path"] + (["card"] if a.card_stats else [])
    for phase in phases:
        log(f"phase {phase}")
        argv = [sys.executable, __file__, *sys.argv[1:], "--phase", phase]  # a child prints its JSON and ignores --out
        done = subprocess.run(
            argv, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        )
        if done.returncode:
            raise SystemExit(f"phase {phase} failed:\n{done.stderr[-3000:]}")
        result[phase] = json.loads(done.stdout.strip().splitlines()[-1])
    syn, real = result["synthetic_codes"], result["real_path"]
    result["goal"] = {
        "bytes_per_point_max": int(GOAL_BYTES),
        "peak_rss_mb_max": GOAL_PEAK_MB,
        "size_met": syn["bytes_per_point"] <= GOAL_BYTES,
        "peak_met": max(syn["peak_rss_mb"], real["peak_rss_mb"]) <= GOAL_PEAK_MB,
    }
    emit(result, a.out)


if __name__ == "__main__":
    main()
