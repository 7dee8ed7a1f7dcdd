"""Seconds per generated image on the bundled model (CPU), at default settings.

.venv/bin/python benchmarks/bench_generate.py [--threads 1 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from saeuron_core.pipeline import generate, load_pipeline, model_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minicanvas")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    t0 = time.time()
    pipe = load_pipeline(args.model)
    info = model_info(pipe, args.model)
    results = {
        "load_seconds": round(time.time() - t0, 2),
        "steps": info.default_steps,
        "guidance": info.default_guidance,
        "runs": [],
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch:
            seeds = list(range(1_000_000, 1_000_000 + batch))
            generate(
                pipe,
                "An image of star in dots style.",
                seeds,
                info.default_steps,
                info.default_guidance,
                batch_size=batch,
            )
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                generate(
                    pipe,
                    "An image of star in dots style.",
                    seeds,
                    info.default_steps,
                    info.default_guidance,
                    batch_size=batch,
                )
                times.append((time.perf_counter() - t) / batch)
            results["runs"].append(
                {
                    "threads": threads,
                    "batch": batch,
                    "median_s_per_image": round(statistics.median(times), 3),
                    "min_s_per_image": round(min(times), 3),
                }
            )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
