"""Judging generated images: the measurements every benchmark number is built from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import minicanvas as mc
from .pipeline import generate


@dataclass(frozen=True)
class JudgedImage:
    object_name: str
    style: str | None
    seed: int
    predicted_object: str
    predicted_style: str


def judge_generated(pipe, judge, pairs, seeds, steps: int, guidance: float, batch_size: int = 24):
    """Generate every (object, style) pair at every seed and judge each image.

    ``style`` may be None for the unstyled prompt. Returns (records, uint8 images [N, H, W, 3]).
    """
    prompts = [mc.prompt(o, s) for o, s in pairs]
    images = generate(pipe, prompts, list(seeds), steps, guidance, batch_size=batch_size, output_type="np")
    arr = (np.clip(np.stack(images), 0, 1) * 255 + 0.5).astype(np.uint8)
    verdict = judge.classify(arr)
    records, i = [], 0
    for o, s in pairs:
        for seed in seeds:
            records.append(JudgedImage(o, s, seed, verdict["object"][i], verdict["style"][i]))
            i += 1
    return records, arr


def accuracy(records, kind: str, where=lambda r: True) -> float:
    """Fraction of records (filtered by ``where``) whose ``kind`` ('object'/'style') was judged right."""
    chosen = [r for r in records if where(r)]
    if not chosen:
        return float("nan")
    if kind == "object":
        return sum(r.predicted_object == r.object_name for r in chosen) / len(chosen)
    return sum(r.predicted_style == r.style for r in chosen) / len(chosen)


def accuracy_table(records) -> dict:
    """Overall and per-concept judge accuracy of generated (object, style) images."""
    styled = [r for r in records if r.style is not None]
    return {
        "style": accuracy(styled, "style"),
        "object": accuracy(styled, "object"),
        "per_style": {s: accuracy(styled, "style", lambda r, s=s: r.style == s) for s in mc.STYLES},
        "per_object": {o: accuracy(styled, "object", lambda r, o=o: r.object_name == o) for o in mc.OBJECTS},
        "images": len(styled),
    }
