"""Judging generated images: the measurements every benchmark number is built from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..intervals import Rate
from ..pipeline import generate, generate_jobs
from . import dataset as mc

UNRECOGNISABLE_CONFIDENCE = 0.5
"""An image is "unrecognisable" when the judge's top probability is below this on both heads:
neither an object nor a style stands out (a smear counts as a removal in UA; this shows it)."""


@dataclass(frozen=True)
class JudgedImage:
    object_name: str
    style: str | None
    seed: int
    predicted_object: str
    predicted_style: str
    object_confidence: float = 1.0
    """The judge's top object probability."""
    style_confidence: float = 1.0

    @property
    def unrecognisable(self) -> bool:
        return max(self.object_confidence, self.style_confidence) < UNRECOGNISABLE_CONFIDENCE


def judge_generated(pipe, judge, pairs, seeds, steps: int, guidance: float, batch_size: int = 24):
    """Generate every (object, style) pair at every seed and judge each image.

    ``style`` may be None for the unstyled prompt. Returns (records, uint8 images [N, H, W, 3]).
    """
    prompts = [mc.prompt(o, s) for o, s in pairs]
    images = generate(pipe, prompts, list(seeds), steps, guidance, batch_size=batch_size, output_type="np")
    arr = to_uint8(images)
    return judge_images(judge, arr, pairs, seeds)[0], arr


def to_uint8(images) -> np.ndarray:
    """Float images in [0, 1] (diffusers' "np" output) -> uint8 [N, H, W, 3]."""
    return (np.clip(np.stack(images), 0, 1) * 255 + 0.5).astype(np.uint8)


def judge_images(judge, images: np.ndarray, pairs, seeds):
    """Records for images laid out pair-major ([p0s0, p0s1, ..., p1s0, ...]) and their judge features."""
    return judge_jobs(judge, images, [(o, s, seed) for o, s in pairs for seed in seeds])


def judge_jobs(judge, images: np.ndarray, jobs):
    """Records for images of (object, style, seed) jobs, in order, and their judge features."""
    verdict = judge.classify(images)
    records = [
        JudgedImage(
            o,
            s,
            seed,
            verdict["object"][i],
            verdict["style"][i],
            float(verdict["object_conf"][i]),
            float(verdict["style_conf"][i]),
        )
        for i, (o, s, seed) in enumerate(jobs)
    ]
    return records, verdict["features"]


def decorrelated_jobs(pairs, bases) -> list[tuple[str, str | None, int]]:
    """(object, style, seed) jobs, pair-major: each pair at its own seeds derived from ``bases``
    (``dataset.prompt_seeds``), the same seeds whatever method generates them."""
    return [(o, s, seed) for o, s in pairs for seed in mc.prompt_seeds(bases, mc.prompt(o, s))]


def judge_decorrelated(pipe, judge, pairs, bases, steps: int, guidance: float, batch_size: int = 24):
    """Generate and judge every pair at its derived seeds: (records, judge features, uint8 images)."""
    jobs = decorrelated_jobs(pairs, bases)
    images = to_uint8(
        generate_jobs(
            pipe,
            [(mc.prompt(o, s), seed) for o, s, seed in jobs],
            steps,
            guidance,
            batch_size=batch_size,
            output_type="np",
        )
    )
    records, feats = judge_jobs(judge, images, jobs)
    return records, feats, images


def shows_concept(judge, images: np.ndarray, concept: str) -> list[bool]:
    """Per image: does the judge see ``concept`` (in its own kind)?"""
    return [v == concept for v in judge.classify(images)[mc.concept_kind(concept)]]


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


def removal_pairs(concept: str, retain_per_concept: int | None = None) -> tuple[list, list]:
    """(target pairs, in-domain retain pairs) for removing a MiniCanvas concept.

    Target: every pair that shows the concept. Retain: pairs of the other concepts of the same
    kind; ``retain_per_concept`` keeps only that many partners per other concept (rotating, so
    every partner appears) to make sweeps cheaper.
    """
    kind = mc.concept_kind(concept)
    pairs = mc.all_pairs()
    target = [(o, s) for o, s in pairs if concept in (o, s)]
    others = [c for c in (mc.STYLES if kind == "style" else mc.OBJECTS) if c != concept]
    partners = mc.OBJECTS if kind == "style" else mc.STYLES
    retain = []
    for i, other in enumerate(others):
        chosen = (
            partners
            if retain_per_concept is None
            else [partners[(i + j) % len(partners)] for j in range(retain_per_concept)]
        )
        retain += [(p, other) if kind == "style" else (other, p) for p in chosen]
    return target, retain


def removal_metrics(records, concept: str) -> dict[str, float]:
    """UA, IRA and CRA (METHOD section 6) for removing ``concept``, from judged images.

    UA: 1 - judge accuracy on the removed concept's images (its own kind); IRA: accuracy of the
    same kind on the other concepts' images; CRA: accuracy of the other kind on all images.
    """
    return {name: rate.value for name, rate in removal_counts(records, concept).items() if name in ("UA", "IRA", "CRA")}


def removal_counts(records, concept: str) -> dict[str, Rate]:
    """The counts behind ``removal_metrics`` (for intervals), plus ``unrecognisable``: the share
    of the removed concept's images that the judge cannot place at all, and ``kept_on_target``:
    the share of the removed concept's own images (those whose prompt names a concept of the
    other kind) on which the judge still sees that other concept. UA alone cannot tell "the
    dots are gone from the star" from "the star is gone too"; this can."""
    kind = mc.concept_kind(concept)
    other_kind = "object" if kind == "style" else "style"

    def shows(r):
        return (r.style if kind == "style" else r.object_name) == concept

    def right(r, k):
        return r.predicted_object == r.object_name if k == "object" else r.predicted_style == r.style

    target = [r for r in records if shows(r)]
    retain = [r for r in records if not shows(r) and (r.style is not None or kind == "object")]
    cross = [r for r in records if other_kind == "object" or r.style is not None]
    paired = [r for r in target if other_kind == "object" or r.style is not None]
    return {
        "UA": Rate(sum(not right(r, kind) for r in target), len(target)),
        "IRA": Rate(sum(right(r, kind) for r in retain), len(retain)),
        "CRA": Rate(sum(right(r, other_kind) for r in cross), len(cross)),
        "unrecognisable": Rate(sum(r.unrecognisable for r in target), len(target)),
        "kept_on_target": Rate(sum(right(r, other_kind) for r in paired), len(paired)),
    }
