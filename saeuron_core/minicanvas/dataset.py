"""MiniCanvas: a deterministic synthetic concept dataset, a miniature of UnlearnCanvas.

Every image combines one OBJECT (a shape) with one STYLE (how the shape is painted: palette and
texture) on a lightly tinted background, with random position, scale, rotation, pattern phase
and background jitter. Everything about an image is decided by ``(object, style, seed)``:
rendering the same triple twice gives the same bytes.

Seeds are split into disjoint ranges (``SPLITS``) so that training, sweeping hyperparameters and
evaluation never share an image or a generation seed.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from ..errors import SaeuronError
from ..intervals import derive_seed
from ..prompts import concept_prompt
from ..store import PromptItem

OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
STYLES: tuple[str, ...] = (
    "solid",
    "stripes",
    "dots",
    "checkerboard",
    "gradient",
    "outline",
    "rings",
    "mosaic",
)

#: Disjoint seed ranges. Images used to train the model and judge come from "train"; the
#: hyperparameter sweep of unlearning uses "sweep"; every reported number uses "heldout".
SPLITS: dict[str, range] = {
    "train": range(0, 1_000_000),
    "heldout": range(1_000_000, 2_000_000),
    "sweep": range(2_000_000, 3_000_000),
}

IMAGE_SIZE = 64
_SUPERSAMPLE = 2


def prompt(object_name: str, style: str | None = None) -> str:
    """The paper's prompt for MiniCanvas's own concepts: "An image of {object} in {style} style."
    or "An image of {object}."."""
    check_object(object_name)
    if style is not None:
        check_style(style)
    return concept_prompt(object_name, style)


def check_object(name: str) -> str:
    if name not in OBJECTS:
        raise SaeuronError(f"unknown object {name!r}; known objects: {', '.join(OBJECTS)}")
    return name


def check_style(name: str) -> str:
    if name not in STYLES:
        raise SaeuronError(f"unknown style {name!r}; known styles: {', '.join(STYLES)}")
    return name


def concept_kind(name: str) -> str:
    """'object' or 'style' for a MiniCanvas concept name; a clear error otherwise."""
    if name in OBJECTS:
        return "object"
    if name in STYLES:
        return "style"
    raise SaeuronError(f"unknown concept {name!r}; objects: {', '.join(OBJECTS)}; styles: {', '.join(STYLES)}")


def split_seeds(split: str, count: int, offset: int = 0) -> list[int]:
    """The first ``count`` seeds of a split (after ``offset``)."""
    if split not in SPLITS:
        raise SaeuronError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    seeds = SPLITS[split]
    if offset + count > len(seeds):
        raise SaeuronError(f"split {split!r} holds {len(seeds)} seeds; asked for {offset + count}")
    return list(seeds[offset : offset + count])


def prompt_seeds(bases, text: str) -> list[int]:
    """The seeds of prompt ``text``: one per base seed, derived from (base, text) and kept inside
    the base's split. Every prompt gets its own noise; every method gets the same noise."""
    bases = list(bases)
    if not bases:
        raise SaeuronError("no seeds: give at least one base seed")
    return [derive_seed(b, text, SPLITS[split_of(b)]) for b in bases]


def split_of(seed: int) -> str:
    for name, seeds in SPLITS.items():
        if seed in seeds:
            return name
    raise SaeuronError(f"seed {seed} is outside every split ({SPLITS})")


@dataclass(frozen=True)
class Sample:
    """One rendered MiniCanvas image and its labels."""

    image: np.ndarray  # [H, W, 3] uint8
    object_name: str
    style: str
    seed: int

    @property
    def prompt(self) -> str:
        return prompt(self.object_name, self.style)


# --------------------------------------------------------------------------- shapes
def _polygon_mask(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over a grid."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        x0, y0 = poly[i]
        x1, y1 = poly[(i + 1) % n]
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _star_polygon(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_TRIANGLE = np.array([[0.0, 1.0], [-0.95, -0.72], [0.95, -0.72]])
_STAR = _star_polygon()
_HEART_T = np.linspace(0, 2 * np.pi, 96, endpoint=False)
_HEART = np.stack(
    [
        16 * np.sin(_HEART_T) ** 3,
        13 * np.cos(_HEART_T) - 5 * np.cos(2 * _HEART_T) - 2 * np.cos(3 * _HEART_T) - np.cos(4 * _HEART_T),
    ],
    axis=1,
) / 16.5 + np.array([0.0, 0.1])


def shape_mask(object_name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape in its own frame; (u, v) in about [-1, 1], v pointing up."""
    if object_name == "circle":
        return u * u + v * v <= 0.92**2
    if object_name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.78
    if object_name == "triangle":
        return _polygon_mask(u, v, _TRIANGLE)
    if object_name == "star":
        return _polygon_mask(u, v, _STAR)
    if object_name == "cross":
        arm, length = 0.32, 0.95
        return ((np.abs(u) <= arm) & (np.abs(v) <= length)) | ((np.abs(u) <= length) & (np.abs(v) <= arm))
    if object_name == "heart":
        return _polygon_mask(u, v, _HEART)
    raise SaeuronError(f"unknown object {object_name!r}")


# --------------------------------------------------------------------------- styles
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float64)


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dx * dx + dy * dy <= radius * radius:
                out &= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return out


def _paint_style(
    style: str,
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    background: np.ndarray,
    centre: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Colour [H, W, 3] in [0, 1] and the mask where it applies. x, y are pixel coordinates."""
    h, w = x.shape
    j = rng.uniform(-1, 1, size=8)  # jitter shared by all styles, so every style draws the same
    if style == "solid":
        colour = _hsv(0.0 + 0.03 * j[0], 0.8 + 0.1 * j[1], 0.82 + 0.1 * j[2])
        return np.broadcast_to(colour, (h, w, 3)).copy(), mask
    if style == "stripes":
        angle = np.deg2rad(45 + 15 * j[0])
        period = 9.0 + 1.5 * j[1]
        phase = rng.uniform(0, period)
        t = (x * np.cos(angle) + y * np.sin(angle) + phase) % period
        a = _hsv(0.62 + 0.02 * j[2], 0.85, 0.45 + 0.1 * j[3])
        b = _hsv(0.6, 0.3, 0.86)
        return np.where((t < period / 2)[..., None], a, b), mask
    if style == "dots":
        period = 10.0 + 1.0 * j[0]
        radius = 2.8 + 0.5 * j[1]
        ox, oy = rng.uniform(0, period, size=2)
        dx = (x + ox) % period - period / 2
        dy = (y + oy) % period - period / 2
        dot = dx * dx + dy * dy <= radius * radius
        field = _hsv(0.14 + 0.02 * j[2], 0.85, 0.95)
        ink = _hsv(0.0, 0.0, 0.1 + 0.05 * j[3])
        return np.where(dot[..., None], ink, field), mask
    if style == "checkerboard":
        cell = 8.0 + 1.0 * j[0]
        angle = np.deg2rad(10 * j[1])
        ox, oy = rng.uniform(0, 2 * cell, size=2)
        xr = x * np.cos(angle) - y * np.sin(angle) + ox
        yr = x * np.sin(angle) + y * np.cos(angle) + oy
        check = (np.floor(xr / cell) + np.floor(yr / cell)) % 2 == 0
        dark = _hsv(0.0, 0.0, 0.08 + 0.05 * j[2])
        light = _hsv(0.0, 0.0, 0.72 + 0.05 * j[3])
        return np.where(check[..., None], dark, light), mask
    if style == "gradient":
        angle = np.deg2rad(90 + 30 * j[0])
        t = x * np.cos(angle) + y * np.sin(angle)
        inside = t[mask] if mask.any() else t.ravel()
        t = np.clip((t - inside.min()) / max(np.ptp(inside), 1e-6), 0, 1)[..., None]
        start = _hsv(0.78 + 0.03 * j[1], 0.8, 0.75)
        end = _hsv(0.09 + 0.03 * j[2], 0.9, 1.0)
        return start * (1 - t) + end * t, mask
    if style == "outline":
        thickness = int(round((3.5 + 0.8 * j[0]) * _SUPERSAMPLE))
        ring = mask & ~_erode(mask, thickness)
        colour = _hsv(0.36 + 0.03 * j[1], 0.75, 0.35 + 0.08 * j[2])
        return np.broadcast_to(colour, (h, w, 3)).copy(), ring
    if style == "rings":
        period = 8.0 + 1.0 * j[0]
        phase = rng.uniform(0, period)
        r = np.hypot(x - centre[0], y - centre[1])
        band = (r + phase) % period < period / 2
        a = _hsv(0.5 + 0.02 * j[1], 0.85, 0.6 + 0.1 * j[2])
        b = _hsv(0.5, 0.3, 0.88)
        return np.where(band[..., None], a, b), mask
    if style == "mosaic":
        cell = 8.0 + 1.0 * j[0]
        ox, oy = rng.uniform(0, cell, size=2)
        cols = int(np.ceil((w + 2 * cell) / cell)) + 1
        rows = int(np.ceil((h + 2 * cell) / cell)) + 1
        hues = rng.uniform(0, 1, size=(rows, cols))
        tiles = np.stack([_hsv(hh, 0.85, 0.9) for hh in hues.ravel()], axis=0).reshape(rows, cols, 3)
        ci = np.floor((x + ox) / cell).astype(int) % cols
        ri = np.floor((y + oy) / cell).astype(int) % rows
        colour = tiles[ri, ci]
        # thin grout lines between tiles make the texture unmistakable
        grout = (((x + ox) % cell) < 1.0 * _SUPERSAMPLE) | (((y + oy) % cell) < 1.0 * _SUPERSAMPLE)
        return np.where(grout[..., None], 0.25, colour), mask
    raise SaeuronError(f"unknown style {style!r}")


def render(object_name: str, style: str, seed: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render one image: [size, size, 3] uint8. Deterministic in (object, style, seed, size)."""
    check_object(object_name)
    check_style(style)
    if size < 16:
        raise SaeuronError(f"image size must be at least 16 pixels, got {size}")
    rng = np.random.default_rng([seed, OBJECTS.index(object_name), STYLES.index(style), size])
    s = size * _SUPERSAMPLE
    y, x = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    # Pattern periods are in output pixels; work in supersampled pixels.
    xp, yp = x / _SUPERSAMPLE * (IMAGE_SIZE / size), y / _SUPERSAMPLE * (IMAGE_SIZE / size)

    # Background: a light random tint with a soft brightness gradient and faint noise.
    tint = _hsv(rng.uniform(0, 1), rng.uniform(0.03, 0.2), rng.uniform(0.86, 1.0))
    g_angle = rng.uniform(0, 2 * np.pi)
    ramp = ((x * np.cos(g_angle) + y * np.sin(g_angle)) / s - 0.5) * rng.uniform(0, 0.12)
    background = np.clip(tint[None, None, :] + ramp[..., None], 0, 1)

    # Object placement: the shape spans 55-80% of the image, centre within +-12%.
    half = s / 2
    radius = rng.uniform(0.55, 0.80) * half
    cx = half + rng.uniform(-0.12, 0.12) * s
    cy = half + rng.uniform(-0.12, 0.12) * s
    rot = np.deg2rad(rng.uniform(-25, 25))
    dx, dy = (x - cx) / radius, (cy - y) / radius  # v points up
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = -dx * np.sin(rot) + dy * np.cos(rot)
    mask = shape_mask(object_name, u, v)

    colour, paint_mask = _paint_style(style, xp, yp, mask, background, (cx / _SUPERSAMPLE, cy / _SUPERSAMPLE), rng)
    img = np.where(paint_mask[..., None], colour, background)
    img = img.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(1, 3))
    img = img + rng.normal(0, rng.uniform(0.0, 0.015), size=img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_sample(object_name: str, style: str, seed: int, size: int = IMAGE_SIZE) -> Sample:
    return Sample(render(object_name, style, seed, size), object_name, style, seed)


def all_pairs() -> list[tuple[str, str]]:
    """Every (object, style) pair in a fixed order."""
    return [(o, s) for o in OBJECTS for s in STYLES]


def render_batch(pairs: list[tuple[str, str]], seeds: list[int], size: int = IMAGE_SIZE) -> np.ndarray:
    """[N, size, size, 3] uint8 for matching lists of pairs and seeds."""
    if len(pairs) != len(seeds):
        raise SaeuronError(f"{len(pairs)} pairs but {len(seeds)} seeds")
    return np.stack([render(o, s, seed, size) for (o, s), seed in zip(pairs, seeds)])


def prompt_items(seeds_per_pair: int, split: str = "train", unstyled: bool = True) -> list[PromptItem]:
    """Every (object, style) prompt (and every unstyled prompt) at ``seeds_per_pair`` seeds."""
    seeds = split_seeds(split, seeds_per_pair)
    items = [PromptItem(prompt(o, s), seed, {"object": o, "style": s}) for o, s in all_pairs() for seed in seeds]
    if unstyled:
        items += [PromptItem(prompt(o), seed, {"object": o}) for o in OBJECTS for seed in seeds]
    return items
