"""Wall time of ``saeuron evaluate`` for one method, beside plain generation of the same images.

Issue 18's speed goal: one method, both domains, 6 held-out seeds, in <= 25 min on 2 idle cores.
This runs the real command (``--processes`` copies sharing one work folder, as the README shows)
in a fresh work folder, counts the images it generated, then times plain generation (no edit,
the same batch size) of that many images of the benchmark's prompts on the same number of
processes, so the overhead of the method, the judge and the attack is visible.

    .venv/bin/python benchmarks/bench_evaluate.py --seeds 6 --processes 2 --out results/bench_evaluate.json
    .venv/bin/python benchmarks/bench_evaluate.py --seeds 1 --attack-prompts 0   # a quick check of the script
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, emit, environment, one_thread


def run_evaluate(args, work: Path, out: Path) -> float:
    cmd = [
        sys.executable, "-m", "saeuron_core", "evaluate", "--methods", args.method, "--domain", args.domain,
        "--seeds", str(args.seeds), "--attack-prompts", str(args.attack_prompts), "--work", str(work),
        "--out", str(out), "--device", args.device,
    ] + [f for c in args.concept for f in ("--concept", c)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    procs = [
        subprocess.Popen(_out_of(cmd, f"{out}.{i}") if i else cmd, env=env, stdout=subprocess.DEVNULL)
        for i in range(args.processes)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"saeuron evaluate failed (exit codes {codes})")
    return time.time() - t0


def _out_of(cmd: list[str], out: str) -> list[str]:
    """``cmd`` writing its reports to ``out`` (each process its own; the work folder is shared)."""
    i = cmd.index("--out")
    return cmd[: i + 1] + [out] + cmd[i + 2 :]


def count_images(work: Path) -> int:
    """Images in the work folder's finished image sets (each set is one .npz of uint8 images)."""
    import numpy as np

    total = 0
    for path in work.rglob("*.npz"):
        with np.load(path) as data:
            total += sum(int(data[k].shape[0]) for k in data.files if data[k].ndim == 4)
    return total


def plain_seconds(n_images: int, processes: int, device: str) -> float:
    """Wall time of ``n_images`` plain generations split over ``processes`` one-thread processes."""
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from saeuron_core import minicanvas as mc\n"
        "from saeuron_core.pipeline import generate_jobs, load_pipeline, model_info\n"
        "pipe = load_pipeline('minicanvas', device=sys.argv[2]); info = model_info(pipe, 'minicanvas')\n"
        "n = int(sys.argv[1]); pairs = mc.all_pairs()\n"
        "jobs = [(mc.prompt(*pairs[i % len(pairs)]), 1_000_000 + i) for i in range(n)]\n"
        "generate_jobs(pipe, jobs, info.default_steps, info.default_guidance, batch_size=24, output_type='np')\n"
    )
    share = [n_images // processes + (i < n_images % processes) for i in range(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.time()
    procs = [subprocess.Popen([sys.executable, "-c", code, str(k), device], env=env, cwd=ROOT) for k in share if k]
    if any(p.wait() for p in procs):
        raise SystemExit("plain generation failed")
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="saeuron")
    ap.add_argument("--domain", default="both")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--attack-prompts", type=int, default=6)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where evaluate and plain generation run (saeuron's --device)")
    ap.add_argument("--concept", action="append", default=[], help="only these concepts (a quick check)")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    args = ap.parse_args()
    one_thread()
    with tempfile.TemporaryDirectory() as tmp:
        work, out = Path(tmp) / "work", Path(tmp) / "out"
        evaluate = run_evaluate(args, work, out)
        images = count_images(work)
    plain = plain_seconds(images, args.processes, args.device)
    goal_run = (args.domain, args.seeds, args.concept, args.attack_prompts) == ("both", 6, [], 6)
    emit(
        {
            "benchmark": "evaluate",
            "method": args.method,
            "domain": args.domain,
            "seeds": args.seeds,
            "concepts": args.concept or "all",
            "attack_prompts": args.attack_prompts,
            "processes": args.processes,
            "device": args.device,
            "images_generated": images,
            "evaluate_minutes": round(evaluate / 60, 2),
            "plain_generation_minutes": round(plain / 60, 2),
            "overhead": round(evaluate / plain, 2) if plain else None,
            "goal_minutes": 25,
            # the goal is about one configuration: both domains, 6 seeds, every concept, the default attack
            "meets_goal": evaluate / 60 <= 25 if goal_run else None,
            "environment": environment(),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
