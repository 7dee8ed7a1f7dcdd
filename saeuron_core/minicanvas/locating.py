"""MiniCanvas prompts and judge for ``saeuron locate`` (the general procedure is ``locate.py``)."""

from __future__ import annotations

from ..locate import SwapCase
from . import dataset as mc


def swap_cases(kinds=("object", "style"), n_pairs: int = 16, bases=None) -> list[SwapCase]:
    """Per kind, ``n_pairs`` (object, style) prompts (spread over the vocabulary), each with the
    concept word of that kind swapped for the next one in the vocabulary; every prompt at its
    own seed per base seed. Seeds come from the sweep split (locating chooses hook points, a
    design choice that must not see evaluation seeds)."""
    bases = list(bases) if bases is not None else mc.split_seeds("sweep", 1)
    pairs = mc.all_pairs()
    step = max(1, len(pairs) // n_pairs)
    chosen = [pairs[(i * step + i // len(mc.STYLES)) % len(pairs)] for i in range(min(n_pairs, len(pairs)))]
    cases = []
    for kind in kinds:
        vocab = mc.OBJECTS if kind == "object" else mc.STYLES
        for o, s in chosen:
            right = o if kind == "object" else s
            other = vocab[(vocab.index(right) + 1) % len(vocab)]
            wrong_pair = (other, s) if kind == "object" else (o, other)
            text = mc.prompt(o, s)
            for seed in mc.prompt_seeds(bases, text):
                cases.append(SwapCase(kind, text, mc.prompt(*wrong_pair), right, seed))
    return cases


def judge_shows(judge):
    """``shows`` for ``locate``: does the judge see each image's label in its kind?"""

    def shows(images, labels, kind):
        verdict = judge.classify(images)[kind]
        return [v == label for v, label in zip(verdict, labels)]

    return shows
