"""``saeuron-explorer``: the Gradio app. This module only lays out the panels and launches."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from saeuron_core.errors import SaeuronError  # noqa: E402

from .context import Explorer  # noqa: E402
from .panels import concept_map, feature_edits, features, generate, recipe, unlearn  # noqa: E402
from .session import ExplorerSession  # noqa: E402

TITLE = "SAeUron Explorer"


def build_app(
    session: ExplorerSession, map_cache_dir=None, concurrency: int = 8, precompute_maps: bool = True
) -> gr.Blocks:
    """The Blocks app for a loaded session. U-Net access is serialised inside the session, so
    events may run concurrently (``concurrency`` per event). ``precompute_maps``: warm up now in
    a background thread (a deferred pipeline, then the UMAPs; they hold no U-Net lock and the map
    view says when they are ready); otherwise call ``demo.explorer.warm_up()`` once serving."""
    ex = Explorer.build(session, map_cache_dir)
    if precompute_maps:
        ex.warm_up()
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# {TITLE}\nModel `{session.sources.model}` · "
            f"SAEs at {', '.join(f'`{p}`' for p in session.points)} · "
            f"judge: {'yes' if session.judge else 'none'}"
        )
        with gr.Tabs():
            with gr.Tab("Features", id="features"):
                features_panel = features.layout(ex)
            with gr.Tab("Generate", id="generate"):
                generate_panel = generate.layout(ex)
            with gr.Tab("Unlearn", id="unlearn"):
                unlearn_panel = unlearn.layout(ex)
            with gr.Tab("Recipe", id="recipe"):
                recipe_panel = recipe.layout(ex)
            if session.concept_map is not None:  # only when a concept map was found
                with gr.Tab("Concept map", id="concept-map"):
                    concept_map.layout(ex)
        features.wire(ex, features_panel, demo)
        feature_edits.wire(ex, features_panel, generate_panel.interventions)
        generate.wire(ex, generate_panel, recipe_panel.outputs, features_panel.steer_mask)
        unlearn.wire(ex, unlearn_panel)
        recipe.wire(ex, recipe_panel, generate_panel, demo)
    demo.queue(default_concurrency_limit=concurrency)
    demo.explorer = ex  # for warm_up after launch
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="saeuron-explorer", description="Inspect SAE features of a diffusion model and edit its generation live."
    )
    parser.add_argument(
        "--model", default="minicanvas", help="'minicanvas' (bundled), a diffusers pipeline folder or a hub id"
    )
    parser.add_argument("--sae", default=None, help="SAE folder, one subfolder per hook point (default: bundled)")
    parser.add_argument("--stats", default=None, help="feature statistics folder (default: bundled)")
    parser.add_argument("--defaults", default=None, help="unlearning defaults table (default: bundled)")
    parser.add_argument("--judge", default=None, help="judge folder (default: bundled, for the bundled model)")
    parser.add_argument(
        "--run",
        default=None,
        help="a folder written by `saeuron prepare`: model, size, SAEs, statistics and routing in one flag",
    )
    parser.add_argument(
        "--preset",
        default=None,
        choices=["paper"],
        help="tau/gamma: the paper's settings (styles 99.999 / -1, objects from its Table 4 where names match)",
    )
    parser.add_argument(
        "--device", default="auto", help="auto (CUDA when present, else MPS, else CPU), cpu, cuda, cuda:N or mps"
    )
    parser.add_argument(
        "--dtype", default="auto", help="auto (float16 on CUDA, float32 elsewhere), float32, float16 or bfloat16"
    )
    parser.add_argument(
        "--height", type=int, default=None, help="image height in pixels (default: the model's or the run's)"
    )
    parser.add_argument(
        "--width", type=int, default=None, help="image width in pixels (default: the model's or the run's)"
    )
    parser.add_argument(
        "--concept-map",
        default=None,
        help="concept map JSON (block x concept kind); default: the model folder's, if any",
    )
    parser.add_argument(
        "--erasure-cache",
        default=None,
        help="folder for ESD / UCE weight edits (default $SAEURON_CACHE or ~/.cache/saeuron/erasures)",
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return parser.parse_args(argv)


def open_session(args: argparse.Namespace) -> ExplorerSession:
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))  # UMAP's worker threads
    torch.set_num_threads(args.threads)
    from saeuron_core.baselines.methods import default_cache_dir

    from .zerogpu import place_on_gpu

    zero_gpu = bool(os.environ.get("SPACES_ZERO_GPU"))
    # ZeroGPU: load on the CPU; each GPU-decorated call moves the session to CUDA
    device = "cpu" if zero_gpu else args.device
    # the first page is served before the pipeline loads (it loads in the background)
    session = ExplorerSession.open(
        args.model,
        args.sae,
        args.stats,
        args.defaults,
        args.judge,
        device=device,
        threads=args.threads,
        erasure_cache=args.erasure_cache or default_cache_dir(),
        dtype=args.dtype,
        height=args.height,
        width=args.width,
        run=args.run,
        preset=args.preset,
        defer_pipeline=not zero_gpu,
        concept_map=args.concept_map,
    )
    if zero_gpu:
        place_on_gpu(session)
    return session


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        session = open_session(args)
    except SaeuronError as e:
        print(f"saeuron-explorer: error: {e}", file=sys.stderr)
        return 2
    # serve the first page first: the pipeline (diffusers) and the UMAPs load once it is up
    demo = build_app(session, precompute_maps=False)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=True)
    demo.explorer.warm_up()
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
