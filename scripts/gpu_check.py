"""The GPU check behind scripts/gpu_check.sh: an SD1.5-architecture folder with random weights
(diffusers save_pretrained) -> `saeuron prepare` at 512 px in float16 on CUDA -> the explorer
session from the run, generating with an ablation -> the hook-overhead benchmark at 512 px
float16; one JSON summary on stdout (and --out). Goal: under 8 minutes on one datacenter GPU.

SAE training and statistics run on the CPU (as in the library); the SAEs are kept small
(expansion 4, 1 epoch) so the check measures the GPU path, not SAE quality: random weights
carry no concepts.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OBJECTS = ("star", "heart", "circle", "square")
STYLES = ("dots", "solid")
SD15 = dict(latent_size=64, unet_channels=(320, 640, 1280, 1280), vae_channels=(128, 256, 512, 512), text_hidden=768, text_layers=12)
# --smoke: the same stages on the CPU with a small SD-architecture model at 64 px (checks the script)
SMOKE = dict(latent_size=32, unet_channels=(32, 32, 64, 64), vae_channels=(16, 16), text_hidden=32, text_layers=1)
RUN = {"device": "cuda", "dtype": "float16", "size": 512, "model": SD15}


def sync() -> None:
    import torch

    if RUN["device"] == "cuda":
        torch.cuda.synchronize()


def skipped(reason: str) -> dict:
    return {"status": "skipped", "reason": reason}


def build_folder(folder: Path) -> dict:
    import torch

    spec = importlib.util.spec_from_file_location("_saeuron_conftest", ROOT / "tests" / "conftest.py")
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    t0 = time.perf_counter()
    pipe = conftest.make_sd_architecture_pipeline(**RUN["model"])
    pipe.to(torch.float16 if RUN["device"] == "cuda" else torch.float32).save_pretrained(folder)
    params = sum(p.numel() for p in pipe.unet.parameters())
    return {"seconds": round(time.perf_counter() - t0, 1), "unet_params_M": round(params / 1e6, 1), "folder": str(folder), "config": {k: list(v) if isinstance(v, tuple) else v for k, v in RUN["model"].items()}}


def run_prepare(model: Path, run: Path, steps: int) -> dict:
    from saeuron_core.cli import main as saeuron

    concepts = run.parent / "concepts.csv"
    rows = ["prompt,seed,object,style"] + [f"An image of {o} in {s} style.,{i},{o},{s}" for i, (o, s) in enumerate((o, s) for o in OBJECTS for s in STYLES)]
    concepts.write_text("\n".join(rows) + "\n")
    t0 = time.perf_counter()
    code = saeuron(["--threads", str(min(8, os.cpu_count() or 1)), "prepare", "--model", str(model), "--concepts", str(concepts), "--device", RUN["device"], "--dtype", RUN["dtype"],
                    "--height", str(RUN["size"]), "--width", str(RUN["size"]), "--steps", str(steps), "--expansion-factor", "4", "--k", "32", "--epochs", "1", "--top-m", "2", "--out", str(run)])
    if code != 0:
        raise RuntimeError(f"saeuron prepare exited {code}")
    spec = json.loads((run / "run.json").read_text())
    return {"seconds": round(time.perf_counter() - t0, 1), "prompts": len(rows) - 1, "steps": steps, "hook_points": spec["hook_points"], "sae": "expansion 4, k 32, 1 epoch (CPU)"}


def generate_with_ablation(run: Path, steps: int) -> dict:
    import numpy as np
    import torch

    from explorer.context import Explorer
    from explorer.session import ExplorerSession
    from saeuron_core.interventions import ScaleFeatures

    t0 = time.perf_counter()
    session = ExplorerSession.open(run=run, device=RUN["device"], dtype=RUN["dtype"], threads=4)
    load_s = time.perf_counter() - t0
    ex = Explorer.build(session, run / "maps")
    point = session.info.hook_points["style"]
    ranked = ex.features.rank(point, concept="dots", limit=8)
    recipe = session.default_recipe("An image of star in dots style.")
    recipe = type(recipe)(recipe.prompt, recipe.seed, steps, recipe.guidance, (), recipe.model, recipe.sae, recipe.stats)
    timings = {}
    images = {}
    for name, ivs in (("plain", ()), ("ablated", (ScaleFeatures(tuple(r.feature for r in ranked), 0.0, point=point),))):
        sync()
        t = time.perf_counter()
        images[name] = session.render(recipe.with_interventions(ivs))
        sync()
        timings[name] = round(time.perf_counter() - t, 2)
    diff = np.abs(images["plain"].astype(np.int16) - images["ablated"].astype(np.int16))
    return {
        "load_seconds": round(load_s, 1),
        "device": str(session.pipe.device),
        "dtype": str(session.pipe.unet.dtype),
        "image_shape": list(images["plain"].shape),
        "steps": steps,
        "seconds": timings,
        "ablated_features": [r.feature for r in ranked],
        "pixels_changed_fraction": round(float((diff.max(-1) > 0).mean()), 4),
        "mean_abs_pixel_change": round(float(diff.mean()), 3),
    }


def hook_overhead(model: Path, run: Path, steps: int, out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_hook_overhead.py"), "--model", str(model), "--sae", str(run / "sae"), "--stats", str(run / "stats"),
           "--concept", "dots", "--tau", "99.9", "--gamma", "-1", "--steps", str(steps), "--repeats", "3", "--micro-reps", "3",
           "--device", RUN["device"], "--dtype", RUN["dtype"], "--height", str(RUN["size"]), "--width", str(RUN["size"]), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_hook_overhead exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    result = json.loads(out.read_text())
    keep = ("device", "dtype", "size", "steps", "median_seconds", "ratio_sparse", "ratio_dense", "ratio_sparse_median_of_rounds", "ratio_estimated_from_microbench", "hook_call_microbench", "unet_ms_per_step_plain")
    return {"seconds": round(time.perf_counter() - t0, 1), **{k: result[k] for k in keep if k in result}, "max_abs_diff_dense_vs_sparse": result.get("check", {}).get("max_abs_diff_dense_vs_sparse")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--prepare-steps", type=int, default=10, help="denoising steps of the cached prompts")
    ap.add_argument("--steps", type=int, default=25, help="denoising steps of the generations and the benchmark")
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    ap.add_argument("--smoke", action="store_true", help="run the stages on the CPU with a small model at 64 px (checks this script without a GPU)")
    args = ap.parse_args()

    import torch

    if args.smoke:
        RUN.update(device="cpu", dtype="float32", size=64, model=SMOKE)
    if not torch.cuda.is_available() and not args.smoke:
        summary = skipped(f"no CUDA device (torch {torch.__version__}, cuda {torch.version.cuda})")
    else:
        work = Path(args.work or tempfile.mkdtemp(prefix="saeuron_gpu_check_"))
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        summary = {"status": "ok", "gpu": torch.cuda.get_device_name(0) if RUN["device"] == "cuda" else "none (--smoke on the CPU)", "device": RUN["device"], "dtype": RUN["dtype"], "size": RUN["size"], "torch": torch.__version__, "cuda": torch.version.cuda, "work": str(work), "goal": "total_seconds < 480"}
        stages = {}
        try:
            stages["build"] = build_folder(work / "sd15-random")
            stages["prepare"] = run_prepare(work / "sd15-random", work / "run", args.prepare_steps)
            stages["generate_with_ablation"] = generate_with_ablation(work / "run", args.steps)
            stages["hook_overhead"] = hook_overhead(work / "sd15-random", work / "run", args.steps, work / "bench_hook.json")
        except Exception as e:  # the summary says which stage failed and why, in one line
            summary["status"] = "failed"
            summary["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        summary["stages"] = stages
        if RUN["device"] == "cuda":
            summary["peak_gpu_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if summary["status"] in ("ok", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
