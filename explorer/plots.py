"""Plotly figures of the panels' data (no Gradio here either). Every chart has axis titles, a
title that fits (top margin sized for it) and ticks that can be read."""

from __future__ import annotations

import plotly.graph_objects as go

from .features import FeatureCard, RankedFeature
from .formatting import sig3

_LAYOUT = dict(margin=dict(l=60, r=20, t=60, b=60), height=300, template="plotly_white", title_font_size=14, title_x=0.02)


def scores_chart(ranked: list[RankedFeature], title: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=[str(r.feature) for r in ranked], y=[r.score for r in ranked], hovertext=[f"top concept: {r.top_concept}" for r in ranked]))
    fig.update_layout(title=title, xaxis_title="feature id (best first)", yaxis_title="importance score", xaxis_type="category", yaxis_tickformat=".3g", **_LAYOUT)
    return fig


def selection_chart(timesteps: list[int], chosen: list[list[int]], percentile: float, concept: str) -> go.Figure:
    """Which features the threshold selects at each step (the count per step is fixed by the
    percentile; which features they are is what changes)."""
    features = sorted({f for ids in chosen for f in ids})
    z = [[1 if f in set(ids) else 0 for ids in chosen] for f in features]
    fig = go.Figure(go.Heatmap(z=z, x=list(range(len(chosen))), y=[str(f) for f in features], colorscale=[[0, "#f5f5f5"], [1, "#1f77b4"]], showscale=False, xgap=1, ygap=1,
                               hovertemplate="step %{x}<br>feature %{y}<extra></extra>"))
    per_step = len(chosen[0]) if chosen else 0
    fig.update_layout(title=f"{concept}: {per_step} features per step above the {percentile:g} percentile; {len(features)} distinct", xaxis_title="step", yaxis_title="feature id", yaxis_type="category", **_LAYOUT)
    fig.update_layout(height=max(300, 120 + 14 * len(features)))
    return fig


def activation_sparkline(card: FeatureCard) -> go.Figure:
    fig = go.Figure([go.Scatter(x=list(range(len(card.timesteps))), y=values, mode="lines+markers", name=name) for name, values in card.activation_by_step.items()])
    if card.step is not None:
        fig.add_vline(x=card.step, line_dash="dot", annotation_text=f"step {card.step}")
    fig.update_layout(title=f"Feature {card.feature}: mean activation per step", xaxis_title="denoising step", yaxis_title="mean activation", yaxis_tickformat=".3g",
                      legend=dict(orientation="h", y=-0.3), **_LAYOUT)
    return fig


def activation_histogram(card: FeatureCard) -> go.Figure:
    edges = card.histogram_edges
    centres = [(edges[i] * edges[i + 1]) ** 0.5 if edges[i] > 0 else edges[i + 1] / 2 for i in range(len(card.histogram_counts))]
    labels = [f"{sig3(edges[i])} to {sig3(edges[i + 1])}" for i in range(len(card.histogram_counts))]
    fig = go.Figure(go.Bar(x=centres, y=card.histogram_counts, hovertext=labels, width=[edges[i + 1] - edges[i] for i in range(len(card.histogram_counts))]))
    fig.update_layout(title=f"Feature {card.feature}: nonzero activations, all steps", xaxis_title="activation (log scale)", yaxis_title="tokens", xaxis_type="log", xaxis_tickformat=".2g", **_LAYOUT)
    return fig


def concept_bars(card: FeatureCard) -> go.Figure:
    names = sorted(card.concept_means, key=lambda n: -card.concept_means[n])
    fig = go.Figure(go.Bar(x=names, y=[card.concept_means[n] for n in names]))
    where = "all steps" if card.step is None else f"step {card.step}"
    fig.update_layout(title=f"Feature {card.feature}: mean activation per concept, {where}", xaxis_title="concept", yaxis_title="mean activation", yaxis_tickformat=".3g", xaxis_tickangle=-45, **_LAYOUT)
    return fig
