"""Unlearn panel: concepts and methods (SAeUron, UCE, ESD; tau and gamma for SAeUron); target and
retained prompts before and after each method side by side, the judge's verdicts and UA / IRA /
CRA of that grid per method."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from saeuron_core.errors import SaeuronError

from ..context import Explorer
from ..imaging import upscale
from ..zerogpu import gpu
from . import served, ui_errors

VERDICT_COLUMNS = ["role", "prompt", "method", "judged before", "judged after"]
METRIC_COLUMNS = ["concept", "method", "UA before", "UA after", "IRA before", "IRA after", "CRA before", "CRA after", "set-up s"]


@dataclass
class UnlearnPanel:
    concepts: gr.Dropdown
    methods: gr.CheckboxGroup
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
        methods = gr.CheckboxGroup(ex.audit.methods(), value=["saeuron"], label="Methods (side by side; ESD trains once per concept set, then is cached)")
        tau = gr.Number(None, label="tau (percentile; empty: defaults table)")
        gamma = gr.Number(None, label="gamma (empty: defaults table)")
        seed = gr.Number(0, precision=0, minimum=0, label="Seed")
        run_button = gr.Button("Unlearn", variant="primary")
    defaults = gr.Markdown()
    grid = gr.Gallery(label="Per prompt: before, then each method's after", columns=4, height=420, format="png")
    with gr.Row():
        verdicts = gr.Dataframe(headers=VERDICT_COLUMNS, interactive=False, label="Judge verdicts (object, style)")
        metrics = gr.Dataframe(headers=METRIC_COLUMNS, interactive=False, label="Metrics on this grid")
    return UnlearnPanel(concepts, methods, defaults, tau, gamma, seed, run_button, grid, verdicts, metrics)


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
    def run(concepts, methods, tau, gamma, seed, progress=gr.Progress()):
        grids = ex.audit.compare(concepts, methods, int(seed or 0), tau, gamma, progress=lambda f, text: progress(f, desc=text))
        images, verdict_rows = [], []
        for i, cell in enumerate(grids[0].cells):
            images.append((served(upscale(cell.before, 128)), f"{cell.role} before: {cell.prompt} → {' / '.join(cell.before_verdict)}"))
            for grid in grids:
                after = grid.cells[i]
                images.append((served(upscale(after.after, 128)), f"{grid.method} → {' / '.join(after.after_verdict)}"))
                verdict_rows.append([cell.role, cell.prompt, grid.method, " / ".join(cell.before_verdict), " / ".join(after.after_verdict)])
        verdicts = pd.DataFrame(verdict_rows, columns=VERDICT_COLUMNS)
        metrics = pd.DataFrame(
            [[c, g.method, *(v for m in ("UA", "IRA", "CRA") for v in (g.metrics_before[c][m], g.metrics_after[c][m])), round(g.setup_seconds, 2)] for g in grids for c in g.concepts],
            columns=METRIC_COLUMNS,
        )
        return gr.Gallery(images, columns=1 + len(grids)), verdicts, metrics

    p.concepts.change(show_defaults, p.concepts, p.defaults, api_name="unlearn_defaults")
    p.run_button.click(run, [p.concepts, p.methods, p.tau, p.gamma, p.seed], [p.grid, p.verdicts, p.metrics], api_name="unlearn_grid", concurrency_id="unet")
