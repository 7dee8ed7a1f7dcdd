"""Plotly figures of the panels' data (no Gradio here either)."""

from __future__ import annotations

import plotly.graph_objects as go

from .features import FeatureCard, RankedFeature

_LAYOUT = dict(margin=dict(l=40, r=10, t=40, b=40), height=280, template="plotly_white")


def scores_chart(ranked: list[RankedFeature], title: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=[str(r.feature) for r in ranked], y=[r.score for r in ranked], hovertext=[r.top_concept for r in ranked]))
    fig.update_layout(title=title, xaxis_title="feature", yaxis_title="score", xaxis_type="category", **_LAYOUT)
    return fig


def selection_chart(timesteps: list[int], counts: list[int], percentile: float) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(range(len(counts))), y=counts, hovertext=[f"timestep {t}" for t in timesteps]))
    fig.update_layout(title=f"features above the {percentile:g} percentile, per step", xaxis_title="step", yaxis_title="selected", **_LAYOUT)
    return fig


def activation_sparkline(card: FeatureCard) -> go.Figure:
    fig = go.Figure([go.Scatter(x=list(range(len(card.timesteps))), y=values, mode="lines+markers", name=name) for name, values in card.activation_by_step.items()])
    if card.step is not None:
        fig.add_vline(x=card.step, line_dash="dot")
    fig.update_layout(title=f"feature {card.feature}: mean activation over denoising steps", xaxis_title="step", **_LAYOUT)
    return fig


def activation_histogram(card: FeatureCard) -> go.Figure:
    edges = card.histogram_edges
    labels = [f"{edges[i]:.3g}-{edges[i + 1]:.3g}" for i in range(len(card.histogram_counts))]
    fig = go.Figure(go.Bar(x=labels, y=card.histogram_counts))
    fig.update_layout(title="activation histogram (nonzero values, log bins)", xaxis_title="activation", yaxis_title="tokens", **_LAYOUT)
    return fig


def concept_bars(card: FeatureCard) -> go.Figure:
    names = list(card.concept_means)
    fig = go.Figure(go.Bar(x=names, y=[card.concept_means[n] for n in names]))
    where = "all steps" if card.step is None else f"step {card.step}"
    fig.update_layout(title=f"mean activation per concept ({where})", xaxis_tickangle=-45, **_LAYOUT)
    return fig

