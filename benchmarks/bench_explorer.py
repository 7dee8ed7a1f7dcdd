"""Explorer performance on CPU: cold start to the first served page, feature card server time,
generation with interventions, peak memory of the app process.

    .venv/bin/python benchmarks/bench_explorer.py [--model minicanvas] [--sae DIR] [--stats DIR]
        [--defaults FILE] [--judge DIR] [--repeats 5] [--out results.json]

Issue targets on the bundled model: cold start to first page < 8 s, feature card < 300 ms on
first open, ranking < 300 ms, an image with interventions < 2 s at default settings. The load
average is recorded beside each served number (the machine is shared). The app runs as
``python -m explorer.app`` in a child process (cold start, end-to-end latency through
gradio_client, peak RSS); server-side times are measured in this process on the same logic
objects the app calls.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, emit, environment, one_thread  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def source_args(args) -> list[str]:
    pairs = [
        ("--model", args.model),
        ("--sae", args.sae),
        ("--stats", args.stats),
        ("--defaults", args.defaults),
        ("--judge", args.judge),
    ]
    return [x for flag, value in pairs if value for x in (flag, value)]


def wait_for_page(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with {process.returncode}:\n{process.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200 and b"gradio" in response.read().lower():
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no page at {url} after {timeout} s")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"median_ms": round(1000 * statistics.median(times), 1), "max_ms": round(1000 * max(times), 1)}


def served(args) -> dict:
    """Cold start, client round trips and peak RSS of the app in a child process."""
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "explorer.app", "--port", str(port), "--threads", "1", *source_args(args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        load_before = os.getloadavg()[0]
        wait_for_page(url, process)
        cold = time.perf_counter() - start
        load_after = os.getloadavg()[0]
        client = Client(url, verbose=False)
        table, *_ = client.predict("(none)", args.point, "all", 99.0, api_name="/rank_features")
        ids = [row[0] for row in table["data"]]
        feature = ids[0]
        t = time.perf_counter()
        client.predict(args.point, str(feature), "(none)", "all", api_name="/feature_card")
        card_first = time.perf_counter() - t
        unopened = ids[1:]
        card_unopened = timed(
            lambda: client.predict(args.point, str(unopened.pop()), "(none)", "all", api_name="/feature_card"),
            args.repeats,
        )
        card = timed(
            lambda: client.predict(args.point, str(feature), "(none)", "all", api_name="/feature_card"), args.repeats
        )
        ranking = timed(
            lambda: client.predict("(none)", args.point, "all", 99.0, api_name="/rank_features"), args.repeats
        )
        round_trip = timed(lambda: client.predict(api_name="/clear_interventions"), args.repeats)
        # the add endpoints return (interventions JSON, confirmation note)
        ablation = client.predict("[]", args.point, str(feature), 4.0, 4.0, 0, "", None, api_name="/add_ablation")[0]
        prompt = args.prompt
        seeds = iter(range(10_000, 10_000 + 10 * args.repeats))
        generation = timed(
            lambda: client.predict(prompt, next(seeds), args.steps, args.guidance, ablation, api_name="/generate"),
            args.repeats,
        )
        return {
            "cold_start_to_first_page_s": round(cold, 2),
            "load_avg_1min_during_cold_start": [round(load_before, 2), round(load_after, 2)],
            "client_feature_card_first_ms": round(1000 * card_first, 1),
            "client_feature_card_first_open_other_features": card_unopened,
            "client_feature_card_warm": card,
            "client_rank_features": ranking,
            "client_round_trip_of_an_empty_event (gradio queue floor)": round_trip,
            "client_generate_with_ablation_new_seed": generation,
            "peak_rss_mb": round(peak_rss_mb(process.pid), 1),
        }
    finally:
        process.terminate()
        process.wait(timeout=30)


def in_process(args) -> dict:
    """Server-side times of the logic the events call."""
    from dataclasses import replace

    from explorer import cardview, plots
    from explorer.context import Explorer
    from explorer.session import ExplorerSession
    from saeuron_core.interventions import ScaleFeatures

    session = ExplorerSession.open(args.model, args.sae, args.stats, args.defaults, args.judge, threads=1)
    ex = Explorer.build(session)
    ranked = ex.features.rank(args.point, None, None, limit=2 * args.repeats + 1)
    ranking = timed(
        lambda: ex.features.rank(args.point, "dots" if "dots" in ex.features.concepts(args.point) else None, None),
        args.repeats,
    )

    def card(feature, generate_images=True):
        c = ex.features.card(args.point, feature, None, generate_images=generate_images)
        cardview.examples_html(c.patches)
        [f.to_json() for f in (plots.activation_sparkline(c), plots.activation_histogram(c), plots.concept_bars(c))]

    t = time.perf_counter()
    card(ranked[0].feature)
    first = time.perf_counter() - t
    unopened = [r.feature for r in ranked[1:]]
    quick = timed(lambda: card(unopened.pop(), generate_images=False), args.repeats)
    cold = timed(lambda: card(unopened.pop()), args.repeats)
    warm = timed(lambda: card(ranked[0].feature), args.repeats)
    base = replace(session.default_recipe(args.prompt), steps=args.steps, guidance=args.guidance)
    ablate = (ScaleFeatures((ranked[0].feature,), 0.0, None, args.point),)
    seeds = iter(range(20_000, 20_000 + 10 * args.repeats))
    edited_only = timed(lambda: session.render(replace(base, seed=next(seeds), interventions=ablate)), args.repeats)
    with_before = timed(lambda: ex.editor.generate(replace(base, seed=next(seeds), interventions=ablate)), args.repeats)
    plain = timed(lambda: session.render(replace(base, seed=next(seeds))), args.repeats)
    return {
        "rank_features": ranking,
        "feature_card_first_ms (images generated)": round(1000 * first, 1),
        "feature_card_first_response_unopened_features (cached images only)": quick,
        "feature_card_unopened_features (images generated)": cold,
        "feature_card_cached_images": warm,
        "image_with_ablation": edited_only,
        "before_after_pair_with_ablation": with_before,
        "image_without_interventions": plain,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minicanvas")
    ap.add_argument("--sae")
    ap.add_argument("--stats")
    ap.add_argument("--defaults")
    ap.add_argument("--judge")
    ap.add_argument("--point", help="hook point (default: the model's style hook point)")
    ap.add_argument("--prompt", default="An image of star in dots style.")
    ap.add_argument("--steps", type=int, help="default: the model's")
    ap.add_argument("--guidance", type=float, help="default: the model's")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    one_thread()
    from saeuron_core.pipeline import load_pipeline, model_info

    info = model_info(load_pipeline(args.model), args.model)
    args.point = args.point or info.hook_points.get("style") or next(iter(info.hook_points.values()))
    args.steps = args.steps or info.default_steps
    args.guidance = info.default_guidance if args.guidance is None else args.guidance
    result = {
        "environment": environment(),
        "model": args.model,
        "point": args.point,
        "steps": args.steps,
        "guidance": args.guidance,
    }
    result["server_side"] = in_process(args)
    result["served"] = served(args)
    emit(result, args.out)


if __name__ == "__main__":
    main()
