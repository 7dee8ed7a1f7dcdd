"""HTML views of images with activation maps. The feature card's top examples: for each example
the raw image and the heatmap overlay side by side, the peak token's box drawn on both, and an
untruncated caption (activation, step, token, prompt, seed); one colour bar in activation units
for all of them.

Images travel inline at their stored size (a 64-pixel thumbnail is about 2 kB) and the browser
enlarges them, so a card is a few tens of kB and needs no files served. The heat layer is a
separate RGBA image at the token grid's resolution whose opacity is the CSS variable
``--heat-opacity`` (set by the opacity slider in the browser, no round trip).

Also: where a feature fires in a generated image at each step, and before / after / difference
for several seeds."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image

from .features import Patch
from .formatting import sig3
from .imaging import HEAT_ANCHORS, heat_colors

SIDE = 168
"""Displayed side of each image, CSS pixels."""
DEFAULT_OPACITY = 0.7
BOX_COLOUR = "#00e5ff"
HEAT_STYLE = (
    f'style="position:absolute;left:0;top:0;width:100%;height:100%;opacity:var(--heat-opacity, {DEFAULT_OPACITY})"'
)
"""The heatmap layer over its image; its opacity follows the card's slider (a CSS variable)."""


def png_data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def heat_layer(activation_map: np.ndarray, scale: float) -> np.ndarray:
    """uint8 [rows, cols, 4]: heat colours of ``activation_map / scale``, transparent where it is 0."""
    norm = np.clip(activation_map.astype(np.float32) / max(scale, 1e-12), 0, 1)
    alpha = (np.sqrt(norm) * 255 + 0.5).astype(np.uint8)  # weak activations stay visible but faint
    return np.concatenate([heat_colors(norm), alpha[..., None]], axis=-1)


def colour_bar(scale: float, box: bool = True) -> str:
    stops = ", ".join(
        f"rgb({r},{g},{b}) {100 * i / (len(HEAT_ANCHORS) - 1):.0f}%"
        for i, (r, g, b) in enumerate(HEAT_ANCHORS.astype(int))
    )
    return (
        f'<div class="colour-bar" style="display:flex;align-items:center;gap:8px;margin:4px 0 10px;font-size:13px">'
        f'<span>0</span><div style="width:240px;height:14px;border:1px solid #888;'
        f'background:linear-gradient(to right, {stops})"></div>'
        f'<span>{sig3(scale)}</span><span style="color:#666">'
        f"activation (top of the scale: the strongest {'example' if box else 'step'})"
        + (f'; <span style="border:2px solid {BOX_COLOUR};padding:0 4px">box</span> = the peak token' if box else "")
        + "</span></div>"
    )


def _framed(layers: str, box: tuple[float, float, float, float]) -> str:
    left, top, width, height = box
    return (
        f'<div style="position:relative;width:{SIDE}px;height:{SIDE}px;flex:none">{layers}'
        f'<div class="peak-box" style="position:absolute;left:{left:.2f}%;top:{top:.2f}%;'
        f"width:{width:.2f}%;height:{height:.2f}%;"
        f'border:2px solid {BOX_COLOUR};box-sizing:border-box;pointer-events:none"></div></div>'
    )


def patch_html(index: int, patch: Patch, timesteps: list[int] | None = None) -> str:
    rows, cols = patch.heatmap.shape
    box = (100 * patch.col / cols, 100 * patch.row / rows, 100 / cols, 100 / rows)
    raw = png_data_uri(patch.raw)
    img = 'style="width:100%;height:100%;image-rendering:pixelated;display:block"'
    heat = png_data_uri(heat_layer(patch.heatmap, patch.scale))
    raw_view = _framed(f'<img class="raw" src="{raw}" alt="raw image" {img}>', box)
    overlay_view = _framed(
        f'<img src="{raw}" alt="" {img}><img class="heat" src="{heat}" alt="activation map" {HEAT_STYLE}>',
        box,
    )
    note = " (no stored image: grey)" if patch.placeholder else ""
    caption = (
        f"<b>#{index + 1}</b> · activation <b>{sig3(patch.value)}</b> · "
        f"step {patch.step} (timestep {patch.timestep}) · "
        f"token ({patch.row}, {patch.col}) · seed {patch.seed}{note}<br>{html.escape(patch.prompt)}"
    )
    return (
        f'<figure class="example" style="margin:0;width:{2 * SIDE + 6}px">'
        f'<div style="display:flex;gap:6px">{raw_view}{overlay_view}</div>'
        '<figcaption style="font-size:12px;line-height:1.35;white-space:normal;overflow-wrap:anywhere;margin-top:3px">'
        f"{caption}</figcaption></figure>"
    )


def examples_html(patches: list[Patch]) -> str:
    """The card's examples: a colour bar, then raw | overlay pairs with captions."""
    if not patches:
        return '<p class="no-examples">No stored examples: this feature never fired in the statistics.</p>'
    cards = "".join(patch_html(i, p) for i, p in enumerate(patches))
    return (
        f'<div class="feature-examples">{colour_bar(patches[0].scale)}'
        f'<div style="display:flex;flex-wrap:wrap;gap:14px">{cards}</div></div>'
    )


def steps_html(found) -> str:
    """``editing.FeatureInImage``: the feature's map over the image at each step, one colour bar."""
    scale = float(found.maps.max())
    raw = png_data_uri(found.image)
    img = 'style="width:100%;height:100%;image-rendering:pixelated;display:block"'
    cells = []
    for step, amap in enumerate(found.maps):
        heat = png_data_uri(heat_layer(amap, scale))
        layers = (
            f'<img src="{raw}" alt="" {img}><img class="heat" src="{heat}" alt="activation map, step {step}" '
            f"{HEAT_STYLE}>"
        )
        view = f'<div style="position:relative;width:{SIDE}px;height:{SIDE}px">{layers}</div>'
        cells.append(
            '<figure class="step-map" style="margin:0"><figcaption style="font-size:12px">'
            f"step {step} (timestep {found.timesteps[step]}) · max {sig3(float(amap.max()))}"
            f"</figcaption>{view}</figure>"
        )
    how = "" if found.chosen else " (no feature given: the image's most active one)"
    head = (
        f'<p style="margin:0 0 4px"><b>Feature {found.feature}</b> at <code>{html.escape(found.point)}</code>{how}</p>'
    )
    bar = (
        colour_bar(scale, box=False)
        if scale > 0
        else '<p class="never-fires">This feature does not fire in this image at any step.</p>'
    )
    cells_html = f'<div style="display:flex;flex-wrap:wrap;gap:10px">{"".join(cells)}</div>'
    return f'<div class="feature-in-image">{head}{bar}{cells_html}</div>'


def seeds_html(results) -> str:
    """``editing.EditResult``s of several seeds: a row per seed, before | after | difference."""
    img = f'style="width:{SIDE}px;height:{SIDE}px;image-rendering:pixelated;display:block"'
    head = "<tr><th>seed</th><th>before</th><th>after</th><th>difference</th><th>largest change</th></tr>"
    rows = "".join(
        f'<tr class="seed-row"><th>{r.recipe.seed}</th>'
        + "".join(
            f'<td><img src="{png_data_uri(a)}" alt="{what}, seed {r.recipe.seed}" {img}></td>'
            for what, a in (("before", r.before), ("after", r.after), ("difference", r.difference))
        )
        + f"<td>{r.max_difference:.1%}</td></tr>"
        for r in results
    )
    return f'<table class="seeds" style="border-collapse:collapse"><thead>{head}</thead><tbody>{rows}</tbody></table>'
