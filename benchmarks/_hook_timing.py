"""Timing and comparison helpers of the hook-overhead benchmark (bench_hook_overhead.py).

- ``interleaved``: the arms run in alternating order every round, so load drift hits all alike;
- ``summarize``: medians and hooked / plain ratios from those rounds;
- ``microbench`` / ``hook_microbench``: each arm's edit fn alone on captured block outputs, and
  ``estimated_ratio`` from it (far less noisy than end-to-end ratios on a shared machine);
- ``diffs``: how far the arms' outputs are apart (sparse vs plain, dense vs sparse).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from _common import log
from _dense_unlearn import DenseUnlearn

from saeuron_core.hooks import Step
from saeuron_core.interventions import apply_interventions


def sync() -> None:
    """Wait for queued GPU work, so that a wall-clock interval covers the work it times."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved(runners: dict, repeats: int, warmup: int) -> tuple[dict, dict]:
    """Run each arm ``warmup`` times (untimed, outputs kept) then ``repeats`` timed rounds,
    alternating the arm order every round."""
    outputs = {}
    for w in range(warmup):
        for arm, run in runners.items():
            log(f"warmup {w + 1}/{warmup}: {arm}")
            outputs[arm] = run()
    times = {arm: [] for arm in runners}
    arms = list(runners)
    for r in range(repeats):
        order = arms if r % 2 == 0 else arms[::-1]
        for arm in order:
            sync()
            t0 = time.perf_counter()
            out = runners[arm]()
            sync()
            times[arm].append(time.perf_counter() - t0)
            outputs.setdefault(arm, out)
        log("round %d/%d: %s" % (r + 1, repeats, ", ".join(f"{a} {times[a][-1]:.2f}s" for a in arms)))
    return times, outputs


def summarize(times: dict) -> dict:
    plain = times["plain"]
    out = {
        "seconds": {a: [round(t, 4) for t in ts] for a, ts in times.items()},
        "median_seconds": {a: round(statistics.median(ts), 4) for a, ts in times.items()},
    }
    for arm in times:
        if arm == "plain":
            continue
        per_round = [h / p for h, p in zip(times[arm], plain)]
        out[f"ratio_{arm}"] = round(statistics.median(times[arm]) / statistics.median(plain), 4)
        out[f"ratio_{arm}_median_of_rounds"] = round(statistics.median(per_round), 4)
        out[f"ratio_{arm}_min_over_min"] = round(min(times[arm]) / min(plain), 4)
    return out


def hook_microbench(editors: dict, maps: dict, timesteps: list, reps: int) -> dict:
    """Seconds per hook call of each arm's edit fn alone, on the block outputs captured from this
    model (every step, both CFG halves): the hook's cost without the U-Net's noise around it."""
    out = {}
    for arm, by_point in editors.items():
        per_step = []
        for t, timestep in enumerate(timesteps):
            step = Step(timestep, t)
            total = 0.0
            for point, fn in by_point.items():
                x = maps[point][t]
                fn(x, step)  # warm
                samples = []
                for _ in range(reps):
                    sync()
                    t0 = time.perf_counter()
                    fn(x, step)
                    sync()
                    samples.append(time.perf_counter() - t0)
                total += statistics.median(samples)
            per_step.append(total)
        out[arm] = {
            "ms_per_step_median": round(1000 * statistics.median(per_step), 3),
            "ms_per_step_max": round(1000 * max(per_step), 3),
        }
    return out


def as_array(output) -> np.ndarray:
    if isinstance(output, torch.Tensor):
        return output.detach().float().cpu().numpy()
    if (
        isinstance(output, (list, tuple))
        and output
        and hasattr(output[0], "size")
        and not isinstance(output[0], torch.Tensor)
    ):
        return np.stack([np.asarray(im, dtype=np.float32) for im in output])  # PIL images, 0..255
    return np.stack([np.asarray(o, dtype=np.float32) for o in output])


def diffs(outputs: dict) -> dict:
    a = {k: as_array(v) for k, v in outputs.items()}
    return {
        "max_abs_diff_sparse_vs_plain": float(np.abs(a["sparse"] - a["plain"]).max()),
        "max_abs_diff_dense_vs_sparse": float(np.abs(a["dense"] - a["sparse"]).max()),
    }


def microbench(unet, saes: dict, interventions: list, stats_by_point: dict, rec, reps: int) -> dict:
    device = next(iter(saes.values())).device
    maps = {iv.point: rec.stacked(iv.point).to(device) for iv in interventions}
    with torch.inference_mode():
        with apply_interventions(unet, saes, interventions, stats=stats_by_point) as editors:
            sparse_fns = dict(editors)
        dense_fns = {iv.point: DenseUnlearn(saes[iv.point], iv, stats_by_point[iv.point]) for iv in interventions}
        return hook_microbench({"sparse": sparse_fns, "dense": dense_fns}, maps, rec.timesteps, reps)


def estimated_ratio(micro: dict, plain_ms_per_step: float) -> dict:
    """1 + (hook ms per step) / (plain ms per step): the ratio with the end-to-end noise removed
    (it leaves out per-call setup and any effect of the hook on the U-Net's own speed)."""
    return {arm: round(1 + m["ms_per_step_median"] / plain_ms_per_step, 4) for arm, m in micro.items()}
