"""Concept map panel: the block x concept kind table (e.g. from ``saeuron locate``) as a heatmap,
the SAEs' hook points marked. Static: drawn once when the app is built."""

from __future__ import annotations

import html

import gradio as gr

from .. import plots
from ..context import Explorer
from ..formatting import sig3


def layout(ex: Explorer) -> None:
    cmap = ex.session.concept_map
    strongest = "; ".join(
        f"{kind}: strongest at `{cmap.strongest_block(kind)}` ({sig3(max(r[i] for r in cmap.values if r[i] == r[i]))})"
        for i, kind in enumerate(cmap.kinds)
        if any(r[i] == r[i] for r in cmap.values)
    )
    gr.Markdown(
        f"{html.escape(cmap.metric) or 'Values'} for {len(cmap.blocks)} blocks x {len(cmap.kinds)} concept kinds, "
        f"from `{cmap.source}`. {strongest}.",
        elem_id="concept-map-note",
    )
    gr.Plot(
        plots.concept_map_chart(cmap, ex.session.bundle.point_of_kind), label="Concept map", elem_id="concept-map-plot"
    )
