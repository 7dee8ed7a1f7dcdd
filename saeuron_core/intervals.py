"""Uncertainty of benchmark numbers: pure functions, no model, reusable by any report.

- ``wilson``: the Wilson score interval of a binomial proportion (k successes of n), which
  stays inside [0, 1] and behaves at k = 0 or k = n, unlike the normal approximation. It is
  the one Wilson interval of the project (library, benchmark reports and explorer panels).
- ``paired_bootstrap``: a percentile bootstrap interval of the mean difference between two
  methods scored on the same units (concepts), resampling units with replacement, so that
  what both methods share (the concept's difficulty, its seeds) cancels.
- ``derive_seed``: one generation seed per (base seed, prompt), inside a seed range, so that
  every prompt gets its own initial noise and every method sees the same noise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .errors import SaeuronError

Z95 = 1.959963984540054
"""The two-sided 95% standard-normal quantile."""


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (lo, hi) of the proportion k / n; (0, 1) when n == 0.

    The interval is the set of proportions p that the score test does not reject at level z.
    An empty sample rejects nothing, so the honest interval at n = 0 is all of [0, 1]; it is
    finite (valid JSON, drawable as an error bar) and cannot be mistaken for evidence. The rate
    itself, k / n, stays undefined: reports show it as "no data" (see ``Rate.value``).
    """
    if n < 0 or k < 0 or k > n:
        raise SaeuronError(f"a proportion needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # the ends are exact (k = 0 gives lo = 0, k = n gives hi = 1 in exact arithmetic; floating
    # point leaves ~1e-17 there, which would put the bound on the wrong side of the rate)
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson 95% interval."""

    k: int
    """Successes."""
    n: int
    """Trials."""

    @property
    def value(self) -> float:
        """k / n; nan when n == 0 (no trials: no rate, and the interval is all of [0, 1])."""
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.k, self.n)

    def as_dict(self) -> dict:
        lo, hi = self.interval
        return {"value": self.value, "k": self.k, "n": self.n, "lo": lo, "hi": hi}


def paired_bootstrap(a, b, n_resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> dict:
    """Mean of a - b over paired units and its percentile bootstrap interval.

    ``a[i]`` and ``b[i]`` are two methods' scores on unit i (e.g. a concept). Units are drawn
    with replacement ``n_resamples`` times (fixed ``seed``: the interval is reproducible).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise SaeuronError(f"paired scores need two equal-length lists, got shapes {a.shape} and {b.shape}")
    if len(a) == 0:
        raise SaeuronError("paired bootstrap of no units")
    if not 0 < level < 1:
        raise SaeuronError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise SaeuronError(f"n_resamples must be >= 1, got {n_resamples}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_resamples, len(d)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {
        "mean": float(d.mean()),
        "lo": float(lo),
        "hi": float(hi),
        "units": len(d),
        "resamples": n_resamples,
        "level": level,
    }


def derive_seed(base: int, prompt: str, seeds: range) -> int:
    """The seed of ``prompt`` for base seed ``base``: a hash of both, mapped into ``seeds``.

    Deterministic (no process state: hashlib, not ``hash``), different for different prompts
    and bases except for rare hash collisions, and independent of which method generates, so
    methods compared on the same (base, prompt) stay paired.
    """
    if not isinstance(base, int) or isinstance(base, bool):
        raise SaeuronError(f"base seed must be an integer, got {base!r}")
    if len(seeds) == 0:
        raise SaeuronError("empty seed range")
    digest = hashlib.blake2b(f"{base}\x00{prompt}".encode(), digest_size=8).digest()
    return seeds.start + int.from_bytes(digest, "little") % len(seeds) * seeds.step
