"""Unlearn panel: concepts, tau and gamma; target and retained prompts before and after, the
judge's verdicts and UA / IRA / CRA of that grid."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from saeuron_core.errors import SaeuronError

from ..context import Explorer
from ..imaging import upscale
from ..zerogpu import gpu
from . import served, ui_errors

VERDICT_COLUMNS = ["role", "prompt", "judged before", "judged after"]
METRIC_COLUMNS = ["concept", "UA before", "UA after", "IRA before", "IRA after", "CRA before", "CRA after"]


@dataclass
class UnlearnPanel:
    concepts: gr.Dropdown
    defaults: gr.Markdown
    tau: gr.Number
    gamma: gr.Number
    seed: gr.Number
    run_button: gr.Button
    grid: gr.Gallery
    verdicts: gr.Dataframe
    metrics: gr.Dataframe


def layout(ex: Explorer) -> UnlearnPanel:
    with gr.Row():
        concepts = gr.Dropdown(ex.audit.concepts(), multiselect=True, label="Concepts to unlearn")
        tau = gr.Number(None, label="tau (percentile; empty: defaults table)")
        gamma = gr.Number(None, label="gamma (empty: defaults table)")
        seed = gr.Number(0, precision=0, minimum=0, label="Seed")
        run_button = gr.Button("Unlearn", variant="primary")
    defaults = gr.Markdown()
    grid = gr.Gallery(label="Before | after, per prompt", columns=4, height=420, format="png")
    with gr.Row():
        verdicts = gr.Dataframe(headers=VERDICT_COLUMNS, interactive=False, label="Judge verdicts (object, style)")
        metrics = gr.Dataframe(headers=METRIC_COLUMNS, interactive=False, label="Metrics on this grid")
    return UnlearnPanel(concepts, defaults, tau, gamma, seed, run_button, grid, verdicts, metrics)


def wire(ex: Explorer, p: UnlearnPanel) -> None:
    @ui_errors
    def show_defaults(concepts):
        rows = []
        for c in concepts or []:
            try:
                tau, gamma = ex.audit.defaults(c)
                rows.append(f"{c}: tau {tau:g}, gamma {gamma:g}")
            except SaeuronError as e:  # a concept without defaults is shown, not fatal
                rows.append(f"{c}: {e}")
        return "Defaults: " + "; ".join(rows) if rows else ""

    @gpu
    @ui_errors
    def run(concepts, tau, gamma, seed):
        grid = ex.audit.run(concepts, tau, gamma, int(seed or 0))
        images = []
        for cell in grid.cells:
            images.append((served(upscale(cell.before, 128)), f"{cell.role} before: {cell.prompt} → {' / '.join(cell.before_verdict)}"))
            images.append((served(upscale(cell.after, 128)), f"{cell.role} after → {' / '.join(cell.after_verdict)}"))
        verdicts = pd.DataFrame([[c.role, c.prompt, " / ".join(c.before_verdict), " / ".join(c.after_verdict)] for c in grid.cells], columns=VERDICT_COLUMNS)
        metrics = pd.DataFrame(
            [[c, *(grid_value for m in ("UA", "IRA", "CRA") for grid_value in (grid.metrics_before[c][m], grid.metrics_after[c][m]))] for c in grid.concepts],
            columns=METRIC_COLUMNS,
        )
        return images, verdicts, metrics

    p.concepts.change(show_defaults, p.concepts, p.defaults, api_name="unlearn_defaults")
    p.run_button.click(run, [p.concepts, p.tau, p.gamma, p.seed], [p.grid, p.verdicts, p.metrics], api_name="unlearn_grid", concurrency_id="unet")
