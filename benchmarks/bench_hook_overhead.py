"""Overhead of the SAeUron unlearning hook: hooked generation time / plain generation time.

Three arms run in ONE process on the same pipeline, prompt and seeds, interleaved (plain, sparse,
dense, then dense, sparse, plain, ...) so that load drift hits every arm alike; the ratio is
median(hooked) / median(plain), with the median of per-round ratios beside it.

- ``plain``:  no hook.
- ``sparse``: ours, ``saeuron_core.unlearning.generate_with`` (one ``Unlearn`` per hook point,
  from ``SaeBundle.unlearn``): encode, edit the few selected latents, add
  ``(z' - z) @ W_dec[selected]`` to the tokens where an edit fired.
- ``dense``:  the reference form, as an edit fn through ``saeuron_core.hooks.edit_block_output``:
  encode, scatter to a dense code z [N, n_latents], fully decode both the original and the
  edited code (``z @ W_dec + b_dec``) and add the error term x - x_hat (correct sign). Same
  selection and same edit as ``sparse``; only the decode differs.

Bundled model (needs assets/minicanvas, assets/sae, assets/stats, assets/unlearn_defaults.json)::

    .venv/bin/python benchmarks/bench_hook_overhead.py --model minicanvas --repeats 7 --out bench_hook_minicanvas.json

Any pipeline folder with trained SAEs and statistics::

    .venv/bin/python benchmarks/bench_hook_overhead.py --model PIPE_DIR --sae SAE_DIR --stats STATS_DIR \\
        --concept dots --tau 99.9 --gamma -1

Without trained assets (random SAE, d_in of the block, expansion 16, and synthetic statistics
over fake concepts, calibrated on the model's own codes; labelled "synthetic" in the output)::

    .venv/bin/python benchmarks/bench_hook_overhead.py --model tiny --synthetic-sae --steps 4 --repeats 2

SD1.5 scale (random-weight ``UNet2DConditionModel()`` with cross_attention_dim 768, random
text embeddings, 32x32 latents = 256 px, DDIM + CFG batch 2, U-Net called directly, no VAE;
random TopK SAE d_in 1280, 20480 latents, k 32; ~6 s per CFG U-Net forward on one thread)::

    .venv/bin/python benchmarks/bench_hook_overhead.py --sd15 --steps 3 --repeats 3 --out bench_hook_sd15.json

Besides the end-to-end ratios, ``hook_call_microbench`` times each arm's edit fn alone on the
block outputs captured from the same model (every step), and ``ratio_estimated_from_microbench``
= 1 + hook ms / plain ms per step: far less noisy on a shared machine.

Goals (issue): ratio <= 1.15 on the bundled model, <= 1.04 at SD1.5 scale.
"""

from __future__ import annotations

import argparse
import atexit
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    calibrated_means,
    emit,
    environment,
    log,
    one_thread,
    synthetic_feature_stats,
    tiny_pipeline_folder,
)

one_thread()

import torch  # noqa: E402
from _dense_unlearn import dense_hooks  # noqa: E402
from _hook_timing import diffs, estimated_ratio, interleaved, microbench, summarize  # noqa: E402

from saeuron_core.errors import SaeuronError  # noqa: E402
from saeuron_core.hooks import capture_activations, to_tokens  # noqa: E402
from saeuron_core.interventions import Unlearn, apply_interventions  # noqa: E402
from saeuron_core.sae import SaeConfig, TopKSae  # noqa: E402
from saeuron_core.scoring import ConceptStats  # noqa: E402


# --------------------------------------------------------------------------- pipeline mode
def run_pipeline(args) -> dict:
    from saeuron_core import minicanvas as mc
    from saeuron_core.pipeline import generate, load_pipeline, model_info
    from saeuron_core.unlearning import SaeBundle, generate_with

    spec = args.model
    if spec == "tiny":
        tmp = tempfile.TemporaryDirectory(prefix="bench_tiny_pipe_")
        atexit.register(tmp.cleanup)
        spec = str(tiny_pipeline_folder(folder=tmp.name))
        log(f"tiny random pipeline written to {spec}")
    pipe = load_pipeline(spec, args.device, args.dtype, args.height, args.width)
    info = model_info(pipe, args.model)
    steps = args.steps or info.default_steps
    guidance = args.guidance if args.guidance is not None else info.default_guidance
    seeds = list(range(args.seed, args.seed + args.batch))
    from saeuron_core.device import dtype_name
    from saeuron_core.pipeline import image_size

    result = {
        "mode": "pipeline",
        "model": args.model,
        "steps": steps,
        "guidance": guidance,
        "images_per_run": args.batch,
        "output_type": args.output_type,
        "device": str(pipe.device),
        "dtype": dtype_name(pipe.unet.dtype),
        "size": list(image_size(pipe)),
    }

    if args.synthetic_sae:
        concept = args.concept or "style_0"
        prompt = args.prompt or mc.prompt("star", "dots")
        points = sorted(set(info.hook_points.values()))
        log(f"calibration run (capturing {', '.join(points)})")
        with capture_activations(pipe.unet, points, halves="both") as rec:
            generate(pipe, prompt, seeds, steps, guidance, output_type="latent", batch_size=args.batch)
        torch.manual_seed(args.seed)
        kinds = sorted(info.hook_points)
        concepts = [f"{kind}_{i}" for kind in kinds for i in range(args.fake_concepts)]
        concept_kinds = [c.rsplit("_", 1)[0] for c in concepts]
        if concept not in concepts:
            raise SystemExit(f"--concept with --synthetic-sae must be one of {concepts}")
        saes, stats = {}, {}
        for point in points:
            acts = rec.stacked(point)  # [T, B, C, H, W]
            _, _, channels, height, width = acts.shape
            sae = TopKSae(SaeConfig(d_in=channels, expansion_factor=16, k=args.k), device=pipe.device)
            mean_codes = _mean_codes(sae, acts)
            means = calibrated_means(mean_codes, len(concepts), concepts.index(concept), args.boost_latents, args.seed)
            saes[point], stats[point] = (
                sae,
                synthetic_feature_stats(means, concepts, concept_kinds, rec.timesteps, height, width),
            )
        bundle = SaeBundle(saes, stats, dict(info.hook_points), {})
        n = next(iter(saes.values())).num_latents
        tau = args.tau if args.tau is not None else round(100 * (1 - 2 / n), 4)
        gamma = args.gamma if args.gamma is not None else -1.0
        result["synthetic"] = {
            "note": (
                "SYNTHETIC: random TopK SAE (expansion 16) and fake concept statistics calibrated on this model's"
                " codes; timings only, no unlearning meaning"
            ),
            "fake_concepts": concepts,
            "boosted_latents_per_step": args.boost_latents,
        }
    else:
        bundle = SaeBundle.load(info, args.sae, args.stats, args.defaults, device=pipe.device)
        concept = args.concept or _first_concept(bundle, "style")
        tau, gamma = args.tau, args.gamma
        if args.prompt:
            prompt = args.prompt
        elif concept in mc.STYLES:
            prompt = mc.prompt("star", concept)
        elif concept in mc.OBJECTS:
            prompt = mc.prompt(concept, "dots")
        else:
            raise SystemExit("give --prompt for a concept outside MiniCanvas")
        result["synthetic"] = False
        points = sorted(set(info.hook_points.values()))
        log(f"capture run for the per-call microbenchmark ({', '.join(points)})")
        with capture_activations(pipe.unet, points, halves="both") as rec:
            generate(pipe, prompt, seeds, steps, guidance, output_type="latent", batch_size=args.batch)
    interventions = bundle.unlearn([concept], tau=tau, gamma=gamma)
    stats_by_point = bundle.concept_stats(interventions)
    result.update(
        concept=concept,
        prompt=prompt,
        interventions=[
            {"point": iv.point, "concepts": list(iv.concepts), "tau": iv.tau, "gamma": iv.gamma} for iv in interventions
        ],
        sae={p: {"d_in": s.d_in, "num_latents": s.num_latents, "k": s.cfg.k} for p, s in bundle.saes.items()},
    )
    dense_editors: list = []

    def plain():
        return generate(pipe, prompt, seeds, steps, guidance, output_type=args.output_type, batch_size=args.batch)

    def sparse():
        return generate_with(
            pipe,
            bundle,
            interventions,
            prompt,
            seeds,
            steps,
            guidance,
            output_type=args.output_type,
            batch_size=args.batch,
        )

    def dense():
        dense_editors.clear()
        with dense_hooks(pipe.unet, bundle.saes, interventions, stats_by_point, dense_editors):
            return generate(pipe, prompt, seeds, steps, guidance, output_type=args.output_type, batch_size=args.batch)

    with torch.inference_mode():
        times, outputs = interleaved({"plain": plain, "sparse": sparse, "dense": dense}, args.repeats, args.warmup)
    result.update(summarize(times))
    result["check"] = {**diffs(outputs), "edit_activity": [e.summary() for e in dense_editors]}
    result["hook_call_microbench"] = microbench(
        pipe.unet, bundle.saes, interventions, stats_by_point, rec, args.micro_reps
    )
    result["unet_ms_per_step_plain"] = round(1000 * statistics.median(times["plain"]) / steps, 3)
    result["ratio_estimated_from_microbench"] = estimated_ratio(
        result["hook_call_microbench"], result["unet_ms_per_step_plain"]
    )
    result["goal"] = "ratio_sparse <= 1.15 on the bundled model"
    return result


def _first_concept(bundle, kind: str) -> str:
    point = bundle.point_of_kind[kind]
    return bundle.stats[point].concept_stats(kind).concepts[0]


@torch.inference_mode()
def _mean_codes(sae: TopKSae, acts: torch.Tensor) -> torch.Tensor:
    """[T, n] spatially averaged codes, averaged over the batch, of captured maps [T, B, C, H, W]."""
    out = []
    for maps in acts:
        tokens = to_tokens(maps.float()).reshape(-1, maps.shape[1])
        top_acts, top_indices = sae.encode(tokens)
        dense = torch.zeros(sae.num_latents, device=sae.device).index_add_(
            0, top_indices.reshape(-1), top_acts.reshape(-1)
        )
        out.append((dense / tokens.shape[0]).cpu())
    return torch.stack(out)


# --------------------------------------------------------------------------- SD1.5 mode
def run_sd15(args) -> dict:
    from diffusers import UNet2DConditionModel

    from saeuron_core.minicanvas.model import make_schedulers

    steps = args.steps or 3
    guidance = args.guidance if args.guidance is not None else 9.0
    points = args.points or ["up_blocks.1.attentions.2"]
    log("building a random SD1.5-architecture U-Net (UNet2DConditionModel(), cross_attention_dim=768)")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=args.latent).eval().requires_grad_(False)
    build_s = time.perf_counter() - t0
    _, scheduler = make_schedulers()
    gen = torch.Generator().manual_seed(args.seed)
    latents0 = torch.randn(args.batch, 4, args.latent, args.latent, generator=gen)
    # random "text embeddings": [uncond x B, cond x B], SD's 77 tokens x 768
    text = torch.randn(2 * args.batch, 77, 768, generator=gen)

    def denoise():
        scheduler.set_timesteps(steps)
        lat = latents0.clone()
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([lat, lat]), t)
            eps = unet(model_in, t, encoder_hidden_states=text, return_dict=False)[0]
            uncond, cond = eps.chunk(2)
            lat = scheduler.step(uncond + guidance * (cond - uncond), t, lat).prev_sample
        return lat

    log(f"calibration run: {steps} step(s), capturing {', '.join(points)} (also the plain arm's warmup)")
    t0 = time.perf_counter()
    with torch.inference_mode(), capture_activations(unet, points, halves="both") as rec:
        denoise()
    calib_s = time.perf_counter() - t0
    concepts = [f"concept_{i}" for i in range(args.fake_concepts)]
    saes, stats, interventions = {}, {}, []
    torch.manual_seed(args.seed)
    for point in points:
        acts = rec.stacked(point)
        _, _, channels, height, width = acts.shape
        sae = TopKSae(SaeConfig(d_in=channels, num_latents=args.num_latents, k=args.k)).requires_grad_(False)
        means = calibrated_means(_mean_codes(sae, acts), len(concepts), 0, args.boost_latents, args.seed)
        saes[point] = sae
        stats[point] = ConceptStats(
            means=means,
            counts=torch.full((len(concepts),), 10.0),
            concepts=tuple(concepts),
            timesteps=tuple(rec.timesteps),
        )
        interventions.append(
            Unlearn(
                ("concept_0",),
                tau=args.tau if args.tau is not None else 99.99,
                gamma=args.gamma if args.gamma is not None else -1.0,
                point=point,
            )
        )
        hw = (height, width)
    dense_editors: list = []

    def plain():
        return denoise()

    def sparse():
        with apply_interventions(unet, saes, interventions, stats=stats):
            return denoise()

    def dense():
        dense_editors.clear()
        with dense_hooks(unet, saes, interventions, stats, dense_editors):
            return denoise()

    with torch.inference_mode():
        runners = {"plain": plain, "sparse": sparse, "dense": dense}
        # the calibration run already warmed up the plain arm; warm the hooked arms once
        warm = {a: r for a, r in runners.items() if a != "plain"} if args.warmup else {}
        outputs = {}
        for arm, run in warm.items():
            log(f"warmup: {arm}")
            outputs[arm] = run()
        times, timed_outputs = interleaved(runners, args.repeats, 0)
        for arm, out in timed_outputs.items():
            outputs.setdefault(arm, out)
    result = {
        "mode": "sd15",
        "note": (
            "random-weight SD1.5-architecture U-Net called directly in a DDIM + CFG loop (no text encoder, no VAE"
            " decode): the ratio is over U-Net time only, i.e. an upper bound on the overhead of a full pipeline call"
        ),
        "synthetic": (
            "SYNTHETIC: random U-Net, random text embeddings, random TopK SAE, fake concept statistics calibrated"
            " on the SAE's codes of this run"
        ),
        "unet_params_millions": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
        "unet_build_seconds": round(build_s, 1),
        "calibration_run_seconds": round(calib_s, 2),
        "latent": args.latent,
        "image_px": args.latent * 8,
        "hook_map": list(hw),
        "images_per_run": args.batch,
        "cfg_batch": 2 * args.batch,
        "steps": steps,
        "guidance": guidance,
        "points": points,
        "sae": {"d_in": channels, "num_latents": args.num_latents, "k": args.k},
        "interventions": [
            {"point": iv.point, "concepts": list(iv.concepts), "tau": iv.tau, "gamma": iv.gamma} for iv in interventions
        ],
    }
    result.update(summarize(times))
    result["seconds_per_cfg_unet_forward_plain"] = round(statistics.median(times["plain"]) / steps, 3)
    result["hook_call_microbench"] = microbench(unet, saes, interventions, stats, rec, args.micro_reps)
    result["ratio_estimated_from_microbench"] = estimated_ratio(
        result["hook_call_microbench"], 1000 * result["seconds_per_cfg_unet_forward_plain"]
    )
    result["check"] = {**diffs(outputs), "edit_activity": [e.summary() for e in dense_editors]}
    result["goal"] = "ratio_sparse <= 1.04 at SD1.5 scale"
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model",
        default="minicanvas",
        help="'minicanvas', a pipeline folder, a hub id, or 'tiny' (a random tiny pipeline, for validation)",
    )
    ap.add_argument("--sae", default=None, help="SAE root (one subfolder per hook point); default assets/sae")
    ap.add_argument("--stats", default=None, help="statistics root; default assets/stats")
    ap.add_argument("--defaults", default=None, help="unlearn defaults json; default assets/unlearn_defaults.json")
    ap.add_argument(
        "--synthetic-sae", action="store_true", help="random SAE + synthetic statistics instead of --sae/--stats"
    )
    ap.add_argument(
        "--concept", default=None, help="concept to unlearn (default: the first style; 'style_0' with --synthetic-sae)"
    )
    ap.add_argument("--tau", type=float, default=None)
    ap.add_argument("--gamma", type=float, default=None)
    ap.add_argument("--prompt", default=None)
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's; 3 with --sd15)")
    ap.add_argument("--guidance", type=float, default=None)
    ap.add_argument("--batch", type=int, default=1, help="images per generation call")
    ap.add_argument("--seed", type=int, default=1_000_000)
    ap.add_argument(
        "--output-type",
        default="pil",
        choices=["pil", "latent"],
        help="pipeline mode: 'pil' includes the VAE decode (what a user waits for)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per arm (default 7; 3 with --sd15)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per arm first")
    ap.add_argument("--k", type=int, default=32, help="k of the synthetic / SD1.5 SAE")
    ap.add_argument("--fake-concepts", type=int, default=4, help="synthetic concepts (per kind in pipeline mode)")
    ap.add_argument(
        "--boost-latents",
        type=int,
        default=2,
        help="synthetic stats: latents per step made specific to the target concept",
    )
    ap.add_argument("--sd15", action="store_true", help="SD1.5-scale U-Net with random weights")
    ap.add_argument("--latent", type=int, default=32, help="--sd15: latent side (32 = 256 px, 64 = 512 px)")
    ap.add_argument("--points", nargs="+", default=None, help="--sd15: hook points (default up_blocks.1.attentions.2)")
    ap.add_argument("--num-latents", type=int, default=20480, help="--sd15: SAE width")
    ap.add_argument("--micro-reps", type=int, default=5, help="calls per step in the per-hook-call microbenchmark")
    ap.add_argument("--device", default="cpu", help="pipeline mode: cpu, cuda, cuda:N, mps or auto")
    ap.add_argument("--dtype", default="float32", help="pipeline mode: float32, float16, bfloat16 or auto")
    ap.add_argument("--height", type=int, default=None, help="pipeline mode: image height (default: the model's)")
    ap.add_argument("--width", type=int, default=None, help="pipeline mode: image width (default: the model's)")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    args = ap.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.sd15 else 7
    if args.repeats < 1 or args.batch < 1:
        raise SystemExit("--repeats and --batch must be >= 1")
    env = environment()
    t0 = time.perf_counter()
    try:
        result = run_sd15(args) if args.sd15 else run_pipeline(args)
    except SaeuronError as e:
        raise SystemExit(f"error: {e}") from None
    result["environment"] = env
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    emit(result, args.out)


if __name__ == "__main__":
    main()
