"""The GPU check behind scripts/gpu_check.sh, every stage on CUDA at SD1.5 layout: an
SD1.5-architecture folder with random weights (diffusers save_pretrained) -> `saeuron prepare` at
512 px in float16 (generate, cache, train-sae, stats: the SAE stages run on the model's device)
-> SAE training throughput, ours beside sparsify's trainer on the same GPU and the same tokens
(benchmarks/bench_sae_training.py at the paper's size: 16 x 1280 latents, k 32, batch 4096) ->
training and statistics on CUDA against the same on the CPU (a few steps, one shard) ->
statistics of a paper-size SAE (size on disk, peak GPU memory) -> `saeuron unlearn` -> the
explorer session from the run, generating with an ablation -> the hook-overhead benchmark at
512 px float16; one JSON summary on stdout (and --out). Goal: under 8 minutes on one GPU.

The prepared SAEs are kept small (expansion 4, 1 epoch): random weights carry no concepts, so
the check measures the GPU path, not SAE quality.
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
SD15 = dict(
    latent_size=64,
    unet_channels=(320, 640, 1280, 1280),
    vae_channels=(128, 256, 512, 512),
    text_hidden=768,
    text_layers=12,
)
# --smoke: the same stages on the CPU with a small SD-architecture model at 64 px (checks the script)
SMOKE = dict(latent_size=32, unet_channels=(32, 32, 64, 64), vae_channels=(16, 16), text_hidden=32, text_layers=1)
# seeds 4: 32 prompts, 80k tokens per 16x16 hook point at 10 steps (20 batches of 4096)
RUN = {
    "device": "cuda",
    "dtype": "float16",
    "size": 512,
    "model": SD15,
    "seeds": 4,
    "expansion": 16,
    "throughput_steps": 100,
    "batch": 4096,
}


def sync() -> None:
    import torch

    if RUN["device"] == "cuda":
        torch.cuda.synchronize()


def run_benchmark(script: str, options: dict, out: Path) -> dict:
    """Run ``benchmarks/<script>.py --option value ... --out out`` with this checkout on PYTHONPATH and
    return the JSON it wrote; a failed run raises with the last line of its stderr."""
    argv = [str(part) for pair in {**options, "--out": out}.items() for part in pair]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *argv], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(f"{script} exited {proc.returncode}: {lines[-1] if lines else ''}")
    return json.loads(out.read_text())


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
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "unet_params_M": round(params / 1e6, 1),
        "folder": str(folder),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in RUN["model"].items()},
    }


def run_prepare(model: Path, run: Path, steps: int) -> dict:
    from saeuron_core.cli import main as saeuron

    concepts = run.parent / "concepts.csv"
    combos = [(o, s, seed) for o in OBJECTS for s in STYLES for seed in range(RUN["seeds"])]
    rows = ["prompt,seed,object,style"] + [f"An image of {o} in {s} style.,{seed},{o},{s}" for o, s, seed in combos]
    concepts.write_text("\n".join(rows) + "\n")
    t0 = time.perf_counter()
    code = saeuron(
        [
            "--threads",
            str(min(8, os.cpu_count() or 1)),
            "prepare",
            "--model",
            str(model),
            "--concepts",
            str(concepts),
            "--device",
            RUN["device"],
            "--dtype",
            RUN["dtype"],
            "--height",
            str(RUN["size"]),
            "--width",
            str(RUN["size"]),
            "--steps",
            str(steps),
            "--expansion-factor",
            "4",
            "--k",
            "32",
            "--epochs",
            "1",
            "--top-m",
            "2",
            "--out",
            str(run),
        ]
    )
    if code != 0:
        raise RuntimeError(f"saeuron prepare exited {code}")
    spec = json.loads((run / "run.json").read_text())
    metrics = {
        p: json.loads((run / "sae" / ".train" / p / "metrics.json").read_text())
        for p in dict.fromkeys(spec["hook_points"].values())
    }
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "prompts": len(rows) - 1,
        "steps": steps,
        "hook_points": spec["hook_points"],
        "sae": "expansion 4, k 32, 1 epoch",
        "sae_training": {
            p: {k: m.get(k) for k in ("device", "sparse_ops", "tokens", "seconds_this_run", "fvu")}
            for p, m in metrics.items()
        },
    }


def style_point(run: Path) -> str:
    return json.loads((run / "run.json").read_text())["hook_points"]["style"]


def training_throughput(run: Path, out: Path) -> dict:
    """Ours vs sparsify's trainer on the same device and the same tokens of the run's store."""
    steps = RUN["throughput_steps"]
    options = {
        "--store": run / "store",
        "--point": style_point(run),
        "--device": RUN["device"],
        "--expansion": RUN["expansion"],
        "--k": 32,
        "--batch-size": RUN["batch"],
        "--steps": steps,
        "--epochs": 50,
        "--heldout": RUN["batch"],
    }
    t0 = time.perf_counter()
    r = run_benchmark("bench_sae_training", options, out)

    def side(s: str) -> dict:
        timing = {k: r[s][k] for k in ("tokens_per_s_steady", "ms_per_step_median")}
        return timing | {"heldout_fvu": r[s]["heldout"]["fvu"]}

    return {
        "seconds": round(time.perf_counter() - t0, 1),
        "config": r["config"],
        "tokens_each": r["tokens_each"],
        "sparse_ops": r["sparse_ops"],
        "tf32": r["tf32"],
        "ours": side("ours"),
        "sparsify": side("sparsify"),
        "throughput_ratio_ours_over_sparsify": r["throughput_ratio_ours_over_sparsify"],
        "goal": "ratio >= 1.2 at equal FVU (held-out tokens also trained on in later epochs: a small store)",
    }


def device_vs_cpu(run: Path, work: Path) -> dict:
    """The same few training steps and the same one-shard statistics on the device and on the CPU."""
    import torch

    from saeuron_core.sae import SaeConfig, TopKSae
    from saeuron_core.sae_train import TrainConfig, train_sae
    from saeuron_core.stats import compute_stats
    from saeuron_core.store import ActivationStore

    store, point = ActivationStore(run / "store"), style_point(run)
    out = {}
    saes = {}
    for device in (RUN["device"], "cpu"):
        cfg = TrainConfig(
            SaeConfig(expansion_factor=4, k=32),
            batch_size=RUN["batch"] // 4,
            epochs=1,
            checkpoint_every=10**9,
            device=device,
            tf32=False,
        )
        small = _FirstBatches(store, 5)
        t0 = time.perf_counter()
        train_sae(small, point, cfg, work / f"train_{device}")
        out[f"train_seconds_{device}"] = round(time.perf_counter() - t0, 2)
        saes[device] = TopKSae.load(work / f"train_{device}" / point)
    out["train_max_abs_diff_W_dec"] = float((saes["cpu"].W_dec - saes[RUN["device"]].W_dec).abs().max())
    out["train_max_abs_diff_encoder"] = float(
        (saes["cpu"].encoder.weight - saes[RUN["device"]].encoder.weight).abs().max()
    )
    stats = {}
    for device in (RUN["device"], "cpu"):
        t0 = time.perf_counter()
        stats[device] = compute_stats(store, point, saes["cpu"], top_m=4, shards=store.completed[:1], device=device)
        out[f"stats_seconds_{device}"] = round(time.perf_counter() - t0, 2)
    a, b = stats["cpu"], stats[RUN["device"]]
    out["stats_equal"] = {
        name: bool(torch.equal(getattr(a, name), getattr(b, name)))
        for name in ("frequency", "histogram", "example_item", "example_step", "example_pos")
    }
    out["stats_max_abs_diff"] = {
        name: float((getattr(a, name) - getattr(b, name)).abs().max()) for name in ("concept_sums", "example_value")
    }
    return out


class _FirstBatches:
    """The run's store, limited to its first ``n`` batches (a few steps, not an epoch)."""

    def __init__(self, store, n: int):
        self._store, self._n = store, n

    def __getattr__(self, name):
        return getattr(self._store, name)

    def iter_token_batches(self, *args, **kwargs):
        for i, x in enumerate(self._store.iter_token_batches(*args, **kwargs)):
            if i >= self._n:
                return
            yield x


def paper_size_stats(run: Path, work: Path) -> dict:
    """Statistics of a random paper-size SAE (16 x channels latents, k 32) over the whole store:
    seconds, peak device memory during the pass, bytes on disk (goals: <= 2 GB, <= 50 MB)."""
    import torch

    from saeuron_core.sae import SaeConfig, TopKSae
    from saeuron_core.stats import compute_stats
    from saeuron_core.store import ActivationStore

    store, point = ActivationStore(run / "store"), style_point(run)
    channels = store.meta["points"][point]["channels"]
    torch.manual_seed(0)
    sae = TopKSae(SaeConfig(d_in=channels, expansion_factor=RUN["expansion"], k=32))
    cuda = RUN["device"] == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    stats = compute_stats(store, point, sae, top_m=8, device=RUN["device"])
    sync()
    seconds = time.perf_counter() - t0
    stats.save(work / "paper_stats")
    size = sum(f.stat().st_size for f in (work / "paper_stats").iterdir())
    out = {
        "seconds": round(seconds, 1),
        "num_latents": sae.num_latents,
        "tokens": store.token_count(point),
        "megabytes_on_disk": round(size / 1e6, 1),
        "goal": "<= 50 MB on disk, <= 2 GB device memory",
    }
    if cuda:
        out["peak_device_memory_GiB"] = round((torch.cuda.max_memory_allocated() - base) / 2**30, 2)
    return out


def unlearn(model: Path, run: Path, steps: int, out: Path) -> dict:
    from saeuron_core.cli import main as saeuron

    t0 = time.perf_counter()
    code = saeuron(
        [
            "unlearn",
            "--model",
            str(model),
            "--sae",
            str(run / "sae"),
            "--stats",
            str(run / "stats"),
            "--concept",
            "dots",
            "--tau",
            "99.9",
            "--gamma",
            "-1",
            "--prompt",
            "An image of star in dots style.",
            "--device",
            RUN["device"],
            "--dtype",
            RUN["dtype"],
            "--height",
            str(RUN["size"]),
            "--width",
            str(RUN["size"]),
            "--steps",
            str(steps),
            "--out",
            str(out),
        ]
    )
    if code != 0:
        raise RuntimeError(f"saeuron unlearn exited {code}")
    return {"seconds": round(time.perf_counter() - t0, 1), "image": str(out), "bytes": out.stat().st_size}


def generate_with_ablation(run: Path, steps: int) -> dict:
    import numpy as np

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
    recipe = type(recipe)(
        recipe.prompt, recipe.seed, steps, recipe.guidance, (), recipe.model, recipe.sae, recipe.stats
    )
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
    options = {
        "--model": model,
        "--sae": run / "sae",
        "--stats": run / "stats",
        "--concept": "dots",
        "--tau": 99.9,
        "--gamma": -1,
        "--steps": steps,
        "--repeats": 3,
        "--micro-reps": 3,
        "--device": RUN["device"],
        "--dtype": RUN["dtype"],
        "--height": RUN["size"],
        "--width": RUN["size"],
    }
    t0 = time.perf_counter()
    result = run_benchmark("bench_hook_overhead", options, out)
    keep = (
        "device",
        "dtype",
        "size",
        "steps",
        "median_seconds",
        "ratio_sparse",
        "ratio_dense",
        "ratio_sparse_median_of_rounds",
        "ratio_estimated_from_microbench",
        "hook_call_microbench",
        "unet_ms_per_step_plain",
    )
    return {
        "seconds": round(time.perf_counter() - t0, 1),
        **{k: result[k] for k in keep if k in result},
        "max_abs_diff_dense_vs_sparse": result.get("check", {}).get("max_abs_diff_dense_vs_sparse"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--prepare-steps", type=int, default=10, help="denoising steps of the cached prompts")
    ap.add_argument("--steps", type=int, default=25, help="denoising steps of the generations and the benchmark")
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help=(
            "run the stages on the CPU with a small model at 64 px, 8 prompts (checks this script without a GPU;"
            " use --prepare-steps 2 --steps 2)"
        ),
    )
    args = ap.parse_args()

    import torch

    if args.smoke:
        RUN.update(
            device="cpu", dtype="float32", size=64, model=SMOKE, seeds=1, expansion=4, throughput_steps=10, batch=128
        )
    if not torch.cuda.is_available() and not args.smoke:
        summary = skipped(f"no CUDA device (torch {torch.__version__}, cuda {torch.version.cuda})")
    else:
        work = Path(args.work or tempfile.mkdtemp(prefix="saeuron_gpu_check_"))
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        summary = {
            "status": "ok",
            "gpu": torch.cuda.get_device_name(0) if RUN["device"] == "cuda" else "none (--smoke on the CPU)",
            "device": RUN["device"],
            "dtype": RUN["dtype"],
            "size": RUN["size"],
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "work": str(work),
            "goal": "total_seconds < 480",
        }
        stages = {}
        # Each stage reports its own failure in one line and the later ones still run (a lent GPU is
        # minutes long: one failure must not cost the other numbers); without the prepared run
        # the later stages have nothing to work on, so they are skipped.
        plan = [
            ("build", build_folder, work / "sd15-random"),
            ("prepare", run_prepare, work / "sd15-random", work / "run", args.prepare_steps),
            ("sae_training_vs_sparsify", training_throughput, work / "run", work / "bench_sae_training.json"),
            ("device_vs_cpu", device_vs_cpu, work / "run", work),
            ("paper_size_stats", paper_size_stats, work / "run", work),
            ("unlearn", unlearn, work / "sd15-random", work / "run", args.steps, work / "unlearn.png"),
            ("generate_with_ablation", generate_with_ablation, work / "run", args.steps),
            ("hook_overhead", hook_overhead, work / "sd15-random", work / "run", args.steps, work / "bench_hook.json"),
        ]
        for name, fn, *fn_args in plan:
            if any(stages.get(first, {}).get("status") == "failed" for first in ("build", "prepare")):
                stages[name] = skipped("the model or the prepared run is missing (see the failed stage)")
                continue
            t_stage = time.perf_counter()
            try:
                stages[name] = fn(*fn_args)
            except Exception as e:  # the stage says why, in one line
                text = str(e).strip()
                stages[name] = {
                    "status": "failed",
                    "error": f"{type(e).__name__}: {text.splitlines()[0] if text else ''}",
                }
            if isinstance(stages[name], dict):
                stages[name].setdefault("stage_seconds", round(time.perf_counter() - t_stage, 1))
            print(f"[gpu_check] {name}: {json.dumps(stages[name])[:300]}", file=sys.stderr, flush=True)
        failed = [name for name, result in stages.items() if result.get("status") == "failed"]
        if failed:
            summary["status"] = "failed"
            summary["error"] = f"failed stages: {', '.join(failed)}"
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
