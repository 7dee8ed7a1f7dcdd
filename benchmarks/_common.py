"""Helpers shared by the benchmark scripts (not a benchmark itself).

- one torch thread, set before any work (the project's CPUs are shared; see tests/conftest.py);
- a tiny random SD-architecture pipeline folder (the one tests/conftest.py builds) for validation;
- synthetic concept statistics for a random SAE, calibrated on real codes so that the latents an
  ``Unlearn`` selects actually fire on the benchmark's tokens;
- JSON output to stdout and, optionally, to a file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def one_thread() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    torch.set_num_threads(1)


def environment() -> dict:
    import diffusers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min_at_start": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def emit(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def _conftest():
    spec = importlib.util.spec_from_file_location("_saeuron_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_pipeline_folder(sample_size: int = 8, folder: str | Path | None = None) -> Path:
    """tests/conftest.py's ``make_tiny_pipeline`` saved as a pipeline folder, with a ``saeuron.json``
    naming the recipe's default hook points (the tiny U-Net has ``up_blocks.1.attentions.{0,1}``,
    not SD1.5's ``.1``/``.2``)."""
    from saeuron_core.minicanvas.model import DEFAULT_HOOKS

    folder = Path(folder or tempfile.mkdtemp(prefix="bench_tiny_pipe_"))
    pipe = _conftest().make_tiny_pipeline(sample_size)
    pipe.save_pretrained(folder)
    info = {
        "name": "tiny-random",
        "image_size": sample_size * pipe.vae_scale_factor,
        "hook_points": dict(DEFAULT_HOOKS),
        "default_steps": 10,
        "default_guidance": 6.0,
    }
    (folder / "saeuron.json").write_text(json.dumps(info))
    return folder


def calibrated_means(
    mean_codes: torch.Tensor, n_concepts: int, target: int, boosted_per_step: int, seed: int, boost: float = 5.0
) -> torch.Tensor:
    """Synthetic per-concept means [n_concepts, T, n] from real spatially averaged codes [T, n].

    Every concept gets the real means times a random factor in [0.5, 1.5]; concept ``target``
    additionally gets ``boosted_per_step`` of the most active latents of each step multiplied by
    ``boost``, so that scoring selects latents that really fire on the benchmark's tokens (a
    random selection of 1-3 out of 20480 latents would almost never fire, and the benchmark
    would only time the encode).
    """
    gen = torch.Generator().manual_seed(seed)
    n_steps, n = mean_codes.shape
    floor = mean_codes[mean_codes > 0].min().item() * 0.01 if (mean_codes > 0).any() else 1e-6
    base = mean_codes.clamp(min=floor)
    means = base[None] * (0.5 + torch.rand(n_concepts, n_steps, n, generator=gen))
    for t in range(n_steps):
        pool = mean_codes[t].topk(min(4 * boosted_per_step, n)).indices
        chosen = pool[torch.randperm(len(pool), generator=gen)[:boosted_per_step]]
        means[target, t, chosen] *= boost
    return means


def synthetic_feature_stats(
    means: torch.Tensor,
    concepts: list[str],
    kinds: list[str],
    timesteps: list[int],
    height: int,
    width: int,
    images_per_concept: int = 10,
):
    """A ``FeatureStats`` holding ``means`` (and minimal placeholders for the explorer-only fields)."""
    from saeuron_core.stats import HIST_EDGES, FeatureStats

    n_concepts, _, n = means.shape
    counts = torch.full((n_concepts,), float(images_per_concept))
    return FeatureStats(
        concepts=tuple(concepts),
        concept_kinds=tuple(kinds),
        timesteps=tuple(int(t) for t in timesteps),
        items=[],
        height=height,
        width=width,
        guidance=0.0,  # no images behind synthetic statistics
        bin_edges=HIST_EDGES.clone(),
        concept_sums=means * counts[:, None, None],
        concept_counts=counts,
        frequency=torch.zeros(n),
        histogram=torch.zeros(n, len(HIST_EDGES) - 1, dtype=torch.long),
        example_value=torch.zeros(n, 1),
        example_item=torch.full((n, 1), -1, dtype=torch.int32),
        example_step=torch.zeros(n, 1, dtype=torch.int32),
        example_pos=torch.zeros(n, 1, dtype=torch.int32),
        example_map=torch.zeros(n, 1, height * width, dtype=torch.uint8),
    )


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
