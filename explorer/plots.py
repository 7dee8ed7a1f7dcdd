"""Figures of the panels' data, as plotly JSON (no Gradio here either). Every chart has axis
titles, a title that fits (top margin sized for it) and ticks that can be read.

Figures are plain dicts in plotly's JSON schema (``Figure``), not ``plotly.graph_objects``:
building and validating graph objects with a template took 90-400 ms per chart on this machine,
more than a whole feature card may take; plotly.js draws the same JSON."""

from __future__ import annotations

import json
import textwrap

from .features import FeatureCard, RankedFeature
from .formatting import sig3


class Figure(dict):
    """A plotly figure as JSON data: {"data": [traces], "layout": {...}}. ``to_json`` is what
    Gradio's ``gr.Plot`` calls on a plotly figure."""

    def __init__(self, data: list[dict], layout: dict):
        super().__init__(
            data=data,
            layout={**_LAYOUT, **layout, "title": {"text": layout.get("title", ""), "x": 0.02, "font": {"size": 14}}},
        )

    def to_json(self) -> str:
        return json.dumps(self)

    @property
    def title(self) -> str:
        return self["layout"]["title"]["text"]


_LAYOUT = dict(margin=dict(l=60, r=20, t=60, b=60), height=300, paper_bgcolor="white", plot_bgcolor="white")
_GRID = dict(gridcolor="#e5e5e5", zerolinecolor="#bbbbbb")


def _axis(title: str, **kw) -> dict:
    return {"title": {"text": title}, **_GRID, **kw}


def scores_chart(ranked: list[RankedFeature], title: str) -> Figure:
    bars = {
        "type": "bar",
        "x": [str(r.feature) for r in ranked],
        "y": [r.score for r in ranked],
        "hovertext": [f"{r.label or r.top_concept}" for r in ranked],
    }
    return Figure(
        [bars],
        dict(
            title=title,
            xaxis=_axis("feature id (best first)", type="category"),
            yaxis=_axis("importance score", tickformat=".3g"),
        ),
    )


def selection_chart(timesteps: list[int], chosen: list[list[int]], percentile: float, concept: str) -> Figure:
    """Which features the threshold selects at each step (the count per step is fixed by the
    percentile; which features they are is what changes)."""
    features = sorted({f for ids in chosen for f in ids})
    z = [[1 if f in set(ids) else 0 for ids in chosen] for f in features]
    heat = {
        "type": "heatmap",
        "z": z,
        "x": list(range(len(chosen))),
        "y": [str(f) for f in features],
        "colorscale": [[0, "#f5f5f5"], [1, "#1f77b4"]],
        "showscale": False,
        "xgap": 1,
        "ygap": 1,
        "hovertemplate": "step %{x}<br>feature %{y}<extra></extra>",
    }
    per_step = len(chosen[0]) if chosen else 0
    return Figure(
        [heat],
        dict(
            title=f"{concept}: {per_step} features per step above the {percentile:g} percentile; "
            f"{len(features)} distinct",
            xaxis=_axis("step"),
            yaxis=_axis("feature id", type="category"),
            height=max(300, 120 + 14 * len(features)),
        ),
    )


def activation_sparkline(card: FeatureCard) -> Figure:
    lines = [
        {"type": "scatter", "x": list(range(len(card.timesteps))), "y": values, "mode": "lines+markers", "name": name}
        for name, values in card.activation_by_step.items()
    ]
    layout = dict(
        title=f"Feature {card.feature}: mean activation per step",
        xaxis=_axis("denoising step"),
        yaxis=_axis("mean activation", tickformat=".3g"),
        legend={"orientation": "h", "y": -0.45},
        margin=dict(l=60, r=20, t=60, b=90),
    )
    if card.step is not None:
        layout["shapes"] = [
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": card.step,
                "x1": card.step,
                "y0": 0,
                "y1": 1,
                "line": {"dash": "dot", "color": "#555"},
            }
        ]
        layout["annotations"] = [
            {
                "xref": "x",
                "yref": "paper",
                "x": card.step,
                "y": 1,
                "text": f"step {card.step}",
                "showarrow": False,
                "yanchor": "bottom",
            }
        ]
    return Figure(lines, layout)


def activation_histogram(card: FeatureCard) -> Figure:
    edges = card.histogram_edges
    n = len(card.histogram_counts)
    centres = [(edges[i] * edges[i + 1]) ** 0.5 if edges[i] > 0 else edges[i + 1] / 2 for i in range(n)]
    bars = {
        "type": "bar",
        "x": centres,
        "y": card.histogram_counts,
        "hovertext": [f"{sig3(edges[i])} to {sig3(edges[i + 1])}" for i in range(n)],
        "width": [edges[i + 1] - edges[i] for i in range(n)],
    }
    return Figure(
        [bars],
        dict(
            title=f"Feature {card.feature}: nonzero activations, all steps",
            xaxis=_axis("activation (log scale)", type="log", tickformat=".2g"),
            yaxis=_axis("tokens"),
        ),
    )


def concept_bars(card: FeatureCard) -> Figure:
    names = sorted(card.concept_means, key=lambda n: -card.concept_means[n])
    where = "all steps" if card.step is None else f"step {card.step}"
    bars = {"type": "bar", "x": names, "y": [card.concept_means[n] for n in names]}
    return Figure(
        [bars],
        dict(
            title=f"Feature {card.feature}: mean activation per concept, {where}",
            xaxis=_axis("concept", tickangle=-45),
            yaxis=_axis("mean activation", tickformat=".3g"),
        ),
    )


def concept_map_chart(cmap, hook_points: dict | None = None) -> Figure:
    """``concept_map.ConceptMap`` as a block x kind heatmap, values written in the cells; the
    SAEs' hook points (by kind) are marked with a box."""
    text = [["" if v != v else sig3(v) for v in row] for row in cmap.values]
    z = [[None if v != v else v for v in row] for row in cmap.values]
    heat = {
        "type": "heatmap",
        "z": z,
        "x": list(cmap.kinds),
        "y": list(cmap.blocks),
        "text": text,
        "texttemplate": "%{text}",
        "colorscale": "Viridis",
        "colorbar": {"title": {"text": "<br>".join(textwrap.wrap(cmap.short_metric, 18)), "side": "right"}},
        "hovertemplate": "%{y}<br>%{x}: %{z:.3g}<extra></extra>",
    }
    shapes = []
    for kind, point in (hook_points or {}).items():
        if kind in cmap.kinds and point in cmap.blocks:
            x, y = cmap.kinds.index(kind), cmap.blocks.index(point)
            shapes.append(
                {
                    "type": "rect",
                    "xref": "x",
                    "yref": "y",
                    "x0": x - 0.5,
                    "x1": x + 0.5,
                    "y0": y - 0.5,
                    "y1": y + 0.5,
                    "line": {"color": "#ff3030", "width": 3},
                }
            )
    title = (
        "Where each concept kind enters the U-Net<br>"
        f"<sub>{cmap.short_metric} per block (red box: the SAE's hook point)</sub>"
    )
    return Figure(
        [heat],
        dict(
            title=title,
            xaxis=_axis("concept kind", type="category"),
            yaxis=_axis("block", type="category", autorange="reversed"),
            shapes=shapes,
            height=max(320, 140 + 36 * len(cmap.blocks)),
            margin=dict(l=220, r=20, t=80, b=60),
        ),
    )
