"""Pictures for the UI: heatmaps of activation maps and of image differences, patch crops."""

from __future__ import annotations

import numpy as np
from PIL import Image

# anchor colours of a dark-to-bright heat colour map (black, purple, red, orange, pale yellow)
HEAT_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] colours of ``values`` in [0, 1]."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0, 1) * (len(HEAT_ANCHORS) - 1)
    low = np.floor(v).astype(int).clip(0, len(HEAT_ANCHORS) - 2)
    frac = (v - low)[..., None]
    return (HEAT_ANCHORS[low] * (1 - frac) + HEAT_ANCHORS[low + 1] * frac + 0.5).astype(np.uint8)


def upscale_factor(side: int, min_side: int) -> int:
    """The integer factor that ``upscale`` enlarges an image of shorter side ``side`` by."""
    return max(1, -(-min_side // side))


def upscale(image: np.ndarray, min_side: int = 192) -> Image.Image:
    """A PIL image enlarged by an integer factor (nearest neighbour) to at least ``min_side``."""
    pil = Image.fromarray(image)
    factor = upscale_factor(min(pil.size), min_side)
    return pil.resize((pil.width * factor, pil.height * factor), Image.NEAREST)


def overlay(image: np.ndarray, act_map: np.ndarray, scale: float, alpha: float = 0.6) -> np.ndarray:
    """``image`` [H, W, 3] with an [h, w] activation map (divided by ``scale``) blended over it."""
    height, width = image.shape[:2]
    norm = np.clip(act_map.astype(np.float32) / max(scale, 1e-12), 0, 1)
    resized = np.asarray(Image.fromarray(norm).resize((width, height), Image.BILINEAR))
    weight = (alpha * resized)[..., None]
    return (image * (1 - weight) + heat_colors(resized) * weight + 0.5).astype(np.uint8)


def crop_around(image: np.ndarray, row: int, col: int, grid: tuple[int, int], radius: int = 1) -> np.ndarray:
    """The pixels of tokens (row +- radius, col +- radius) of an image cut into a ``grid`` of tokens."""
    height, width = image.shape[:2]
    rows, cols = grid
    top, bottom = max(row - radius, 0) * height // rows, min(row + radius + 1, rows) * height // rows
    left, right = max(col - radius, 0) * width // cols, min(col + radius + 1, cols) * width // cols
    return image[top:bottom, left:right]


def difference_heatmap(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, float]:
    """Heat colours of the per-pixel mean absolute difference (scaled to its max) and that max in [0, 1]."""
    diff = np.abs(before.astype(np.float32) - after.astype(np.float32)).mean(-1) / 255.0
    peak = float(diff.max())
    return heat_colors(diff / peak if peak > 0 else diff), peak


def token_at(x: float, y: float, image_size: tuple[int, int], grid: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the token under pixel (x, y) of an image of ``image_size`` (width, height)."""
    width, height = image_size
    rows, cols = grid
    row = min(max(int(y * rows / height), 0), rows - 1)
    col = min(max(int(x * cols / width), 0), cols - 1)
    return row, col


def tokens_from_mask(mask: np.ndarray, grid: tuple[int, int]) -> tuple[int, ...]:
    """Token indices (row * cols + col) of a ``grid`` whose cells a painted [H, W] mask touches."""
    rows, cols = grid
    painted = Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255)
    cells = np.asarray(painted.resize((cols, rows), Image.BOX)) > 0
    return tuple(int(i) for i in np.flatnonzero(cells))
