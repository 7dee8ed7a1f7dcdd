"""Unlearn panel: concepts and methods (SAeUron, UCE, ESD; tau and gamma for SAeUron); a matrix of
prompts (rows: target, then retained) by columns (before, then each method), each prompt at every
seed, with the judge's verdict and its confidence under every image; UA / IRA / CRA and
kept_on_target per method as percentages with Wilson 95% intervals; CSV and JSON export."""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from saeuron_core.errors import SaeuronError

from ..context import Explorer
from ..formatting import optional_number, percent, sig3
from ..imaging import upscale
from ..limits import check_int
from ..unlearn_change import ChangeGrid, settings_text
from ..unlearn_grid import DEFAULT_GRID_SEEDS, MAX_GRID_SEEDS
from ..unlearn_results import (
    UnlearnGrid,
    change_export,
    change_rows,
    change_summary,
    grid_export,
    metric_cell,
    metric_rows,
    to_csv,
    verdict_rows,
)
from ..zerogpu import gpu
from . import fail, grouped_concepts, ui_errors, validator

CELL_SIDE = 128
"""Shown side of each image in the matrix (integer upscaling of the model's images); the seeds of
a prompt sit side by side in its cell."""
METRIC_LABELS = {
    "UA": "UA: concept gone",
    "IRA": "IRA: same-kind others kept",
    "CRA": "CRA: other kind kept",
    "kept_on_target": "kept: target's other concept kept",
}
"""Short metric labels for the table (the full names: ``unlearn_results.METRIC_NAMES``)."""


@dataclass
class UnlearnPanel:
    concepts: gr.Dropdown
    methods: gr.CheckboxGroup
    defaults: gr.Markdown
    tau: gr.Textbox
    gamma: gr.Textbox
    seed: gr.Number
    seeds: gr.Number
    run_button: gr.Button
    matrix: gr.HTML
    metrics: gr.Dataframe
    exports: gr.File


def layout(ex: Explorer) -> UnlearnPanel:
    concepts_list = ex.audit.concepts()
    first = ex.audit.best_default_concept()
    with gr.Row():
        concepts = gr.Dropdown(
            grouped_concepts(ex.session.bundle, concepts_list),
            value=[first] if first else [],
            multiselect=True,
            label="Concepts to unlearn",
            elem_id="unlearn-concepts",
        )
        methods = gr.CheckboxGroup(
            ex.audit.methods(),
            value=["saeuron"],
            label="Methods (side by side; ESD trains once per concept set, then is cached)",
            elem_id="unlearn-methods",
        )
    with gr.Row():
        tau = gr.Textbox(
            "", label="tau: percentile (empty: defaults, see below)", placeholder="defaults", elem_id="unlearn-tau"
        )
        gamma = gr.Textbox(
            "", label="gamma: multiplier (empty: defaults, see below)", placeholder="defaults", elem_id="unlearn-gamma"
        )
        seed = gr.Number(
            0, precision=0, label="First seed", elem_id="unlearn-seed"
        )  # bounds: checked with a message, not by Gradio
        seeds = gr.Number(
            DEFAULT_GRID_SEEDS, precision=0, label=f"Seeds per prompt (1-{MAX_GRID_SEEDS})", elem_id="unlearn-seeds"
        )
        run_button = gr.Button("Unlearn", variant="primary", elem_id="unlearn")
    defaults = gr.Markdown(defaults_text(ex, [first] if first else []), elem_id="unlearn-defaults")
    matrix = gr.HTML(elem_id="unlearn-matrix")
    metrics = gr.Dataframe(
        interactive=False,
        label="Metrics on this grid: rate (successes/images) [Wilson 95% interval]",
        wrap=True,
        elem_id="unlearn-metrics",
    )
    exports = gr.File(
        label="Export: verdicts and metrics (CSV, JSON)",
        file_count="multiple",
        interactive=False,
        elem_id="unlearn-exports",
    )
    return UnlearnPanel(concepts, methods, defaults, tau, gamma, seed, seeds, run_button, matrix, metrics, exports)


def image_tag(image, alt: str) -> str:
    buffer = io.BytesIO()
    upscale(image, CELL_SIDE).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
        f'style="width:{CELL_SIDE}px;height:{CELL_SIDE}px;image-rendering:pixelated;display:block;margin:auto">'
    )


def verdict_html(
    cell, verdict: tuple[str, str], removed: set[str], confidence: tuple[float, float] = (1.0, 1.0)
) -> str:
    """The judge's (object, style) under an image, each with the judge's confidence (its top
    probability); a removed concept the judge still sees is red."""
    parts = []
    for seen, truth, conf in zip(verdict, (cell.object_name, cell.style), confidence):
        colour = "#c62828" if seen in removed else ("#2e7d32" if seen == truth else "#8d6e00")
        parts.append(
            f'<span style="color:{colour}">{html.escape(seen)}</span>&nbsp;'
            f'<span class="u-conf">{percent(round(conf, 2))}</span>'
        )
    return " / ".join(parts)


def _seed_figure(image, alt: str, verdict: str, seed: int) -> str:
    return f'<figure class="u-seed">{image_tag(image, alt)}<figcaption>seed {seed}<br>{verdict}</figcaption></figure>'


def matrix_html(grids: list[UnlearnGrid]) -> str:
    """Rows: prompts (target, then retained); columns: before, then each method's after; each
    cell holds the prompt's seeds side by side, the judge's verdict and confidence under each."""
    removed = set(grids[0].concepts)
    head = "".join(f"<th>{html.escape(name)}</th>" for name in ["prompt", "before", *(g.method for g in grids)])
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, cell in enumerate(grids[0].cells):
        groups.setdefault((cell.object_name, cell.style, cell.role), []).append(i)
    body = []
    for (object_name, style, role), members in groups.items():
        first = grids[0].cells[members[0]]
        label = f"<b>{html.escape(role)}</b><br>{html.escape(object_name)} in {html.escape(style)}"
        before = "".join(
            _seed_figure(
                grids[0].cells[i].before,
                f"{first.prompt} seed {grids[0].cells[i].seed} before",
                verdict_html(first, grids[0].cells[i].before_verdict, removed, grids[0].cells[i].before_confidence),
                grids[0].cells[i].seed,
            )
            for i in members
        )
        cells = [f'<td class="u-img">{before}</td>']
        for grid in grids:
            after = "".join(
                _seed_figure(
                    grid.cells[i].after,
                    f"{first.prompt} seed {grid.cells[i].seed} {grid.method}",
                    verdict_html(first, grid.cells[i].after_verdict, removed, grid.cells[i].after_confidence),
                    grid.cells[i].seed,
                )
                for i in members
            )
            cells.append(f'<td class="u-img">{after}</td>')
        body.append(f'<tr class="u-{role}"><th scope="row">{label}</th>{"".join(cells)}</tr>')
    legend = (
        removal_html(grids)
        + '<p style="font-size:0.9em">Under each image: its seed and the judge\'s verdict (object / style), '
        "each with the judge's confidence (its probability for that verdict). "
        '<span style="color:#2e7d32">green</span>: as prompted; <span style="color:#c62828">red</span>: '
        'a removed concept is still seen; <span style="color:#8d6e00">amber</span>: something else.</p>'
    )
    style = (
        "<style>#unlearn-table{border-collapse:collapse}"
        "#unlearn-table th,#unlearn-table td{border:1px solid #ddd;padding:4px 6px;text-align:center;font-size:0.85em}"
        "#unlearn-table tr.u-target th[scope=row]{background:#fff3e0}"
        "#unlearn-table tr.u-retained th[scope=row]{background:#e8f5e9}"
        "#unlearn-table td.u-img{white-space:nowrap}"
        "#unlearn-table figure.u-seed{display:inline-block;margin:0 2px;vertical-align:top;white-space:normal;"
        f"width:{CELL_SIDE}px}}#unlearn-table .u-conf{{color:#666;font-size:0.9em}}</style>"
    )
    return _table_html(style, legend, head, body)


def removal_html(grids: list[UnlearnGrid]) -> str:
    """What each SAeUron column removed with: its variant and, per concept, the removal."""
    lines = [
        f"<b>{html.escape(g.method)}</b> (variant {html.escape(str(g.variant))}): "
        + "; ".join(f"{html.escape(c)} {html.escape(settings_text(e))}" for c, e in g.removals().items())
        for g in grids
        if g.interventions
    ]
    return f'<p class="u-removal" style="font-size:0.9em">{"<br>".join(lines)}</p>' if lines else ""


def _table_html(style: str, legend: str, head: str, body: list[str]) -> str:
    """The Unlearn table: its CSS, the legend above it, then the table (scrolls sideways)."""
    return (
        f'{style}{legend}<div style="overflow-x:auto"><table id="unlearn-table">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>"
    )


def change_html(grid: ChangeGrid) -> str:
    """Without a judge: rows = prompts (target, then retained), columns = before and each method,
    with the measured image-level and feature-level change under every image."""
    head = "".join(f"<th>{html.escape(name)}</th>" for name in ["prompt", "before", *grid.methods])
    body = []
    for cell in grid.cells:
        label = f"<b>{html.escape(cell.role)}</b><br>{html.escape(cell.prompt)}"
        cells = [
            f'<td class="u-img">{image_tag(cell.before, cell.prompt + " before")}'
            f'<div class="u-change">features {sig3(cell.feature_before)}</div></td>'
        ]
        for m in grid.methods:
            drop = cell.feature_drop(m)
            drop_text = (
                "n/a (none fired before)" if drop is None else f"{'−' if drop >= 0 else '+'}{percent(abs(drop))}"
            )
            cells.append(
                f'<td class="u-img">{image_tag(cell.after[m], f"{cell.prompt} {m}")}'
                f'<div class="u-change">pixels Δ {sig3(cell.pixel_change(m))}<br>'
                f"features {sig3(cell.feature_after[m])} ({drop_text})</div></td>"
            )
        body.append(f'<tr class="u-{cell.role}"><th scope="row">{label}</th>{"".join(cells)}</tr>')
    params = "; ".join(
        f"{html.escape(c)}: {html.escape(settings_text(entry))} ({html.escape(entry['source'])})"
        for c, entry in grid.params.items()
    )
    selected = ", ".join(f"{html.escape(p)}: {n:.3g} per step" for p, n in grid.selected.items())
    legend = (
        '<p style="font-size:0.9em"><b>No judge for this model: measured change, not verdicts.</b> '
        "Under each image: <i>pixels Δ</i>: mean absolute pixel change from the before image (0–255); "
        "<i>features</i>: summed activation of the removed concept's selected features, "
        "averaged over steps and patches, "
        "at the hook point (block output re-encoded by the SAE), and its change from before.<br>"
        f"SAeUron settings: {params}. Selected features at {selected}.</p>"
    )
    style = (
        "<style>#unlearn-table{border-collapse:collapse}"
        "#unlearn-table th,#unlearn-table td{border:1px solid #ddd;padding:4px 6px;text-align:center;font-size:0.9em}"
        "#unlearn-table tr.u-target th[scope=row]{background:#fff3e0}"
        "#unlearn-table tr.u-retained th[scope=row]{background:#e8f5e9}"
        "#unlearn-table th[scope=row]{max-width:220px}</style>"
    )
    return _table_html(style, legend, head, body)


def change_frame(grid: ChangeGrid) -> pd.DataFrame:
    """Per method and row role: mean pixel change and feature activation before -> after."""
    rows = []
    for r in change_summary(grid):
        drop = "n/a" if r["feature_drop"] is None else percent(r["feature_drop"])
        rows.append(
            {
                "method": r["method"],
                "prompts": f"{r['role']} ({r['images']})",
                "image change: mean |Δ pixel| (0–255)": sig3(r["pixel_change"]),
                "selected features: before → after": f"{sig3(r['feature_before'])} → {sig3(r['feature_after'])}",
                "feature drop": drop,
            }
        )
    return pd.DataFrame(rows)


def metrics_frame(grids: list[UnlearnGrid]) -> pd.DataFrame:
    """One row per (concept, metric); one column per matrix column (before, then each method)."""
    columns = ["before", *(g.method for g in grids)]
    rows = {}
    for r in metric_rows(grids):
        key = (r["concept"], r["metric"])
        rows.setdefault(key, {"concept": r["concept"], "metric": METRIC_LABELS[r["metric"]]})[r["column"]] = (
            metric_cell(r["successes"], r["images"])
        )
    return pd.DataFrame(list(rows.values()), columns=["concept", "metric", *columns])


def export_files(grids) -> list[str]:
    folder = Path(tempfile.mkdtemp(prefix="saeuron-unlearn-"))
    if isinstance(grids, ChangeGrid):
        stem = "unlearn_" + "+".join(grids.concepts) + f"_seed{grids.seed}"
        files = {
            f"{stem}_change.csv": to_csv(change_rows(grids)),
            f"{stem}.json": json.dumps(change_export(grids), indent=1),
        }
        for name, text in files.items():
            (folder / name).write_text(text)
        return [str(folder / name) for name in files]
    seeds = grids[0].seeds or (grids[0].seed,)
    stem = (
        "unlearn_"
        + "+".join(grids[0].concepts)
        + (f"_seed{seeds[0]}" if len(seeds) == 1 else f"_seeds{seeds[0]}-{seeds[-1]}")
    )
    files = {
        f"{stem}_verdicts.csv": to_csv(verdict_rows(grids)),
        f"{stem}_metrics.csv": to_csv(metric_rows(grids)),
        f"{stem}.json": json.dumps(grid_export(grids), indent=1),
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    return [str(folder / name) for name in files]


def defaults_text(ex: Explorer, concepts) -> str:
    """What removes each concept while tau / gamma are empty (the default variant's removal:
    SAeUron's scaling with the table's tau / gamma, or counterfactual rerouting), and from where."""
    rows = []
    for c in concepts or []:
        try:
            entry = ex.audit.default_removal(c)
            rows.append(f"{c}: {settings_text(entry)} — from {entry['source']}")
        except SaeuronError as e:  # a concept without defaults is shown, not fatal
            rows.append(f"{c}: {e}")
    if not rows:
        return ""
    judge = (
        ""
        if ex.audit.judged
        else "\n\nNo judge for this model: the grid shows image-level and feature-level change "
        "instead of UA / IRA / CRA."
    )
    variant = ex.session.bundle.variant()
    return (
        f"Defaults (used while tau and gamma are empty; removal variant {variant}): "
        + "; ".join(rows)
        + ". Typing tau and gamma applies SAeUron's scaling with them (variant paper)."
        + judge
    )


def wire(ex: Explorer, p: UnlearnPanel) -> None:
    def show_defaults(concepts):
        return defaults_text(ex, concepts)

    @gpu
    @ui_errors
    def run(concepts, methods, tau, gamma, seed, seeds, progress=gr.Progress()):
        progress(0.0, desc="checking the request")  # the bar from the first second, whatever follows
        seeds = DEFAULT_GRID_SEEDS if seeds is None else seeds
        grids = ex.audit.compare(
            concepts,
            methods,
            0 if seed is None else seed,
            tau,
            gamma,
            progress=lambda f, text: progress(f, desc=text),
            seeds=seeds,
        )
        if isinstance(grids, ChangeGrid):
            return (
                change_html(grids),
                gr.update(
                    value=change_frame(grids),
                    label="Measured change on this grid "
                    "(no judge: image-level and feature-level change, not UA / IRA / CRA)",
                ),
                export_files(grids),
            )
        return matrix_html(grids), metrics_frame(grids), export_files(grids)

    def check_tau(values):
        tau = optional_number("tau", values[2])
        if tau is not None and not 0 < tau < 100:
            raise SaeuronError(f"tau is a percentile in (0, 100), got {tau:g}")
        if tau is None and optional_number("gamma", values[3]) is not None:
            raise SaeuronError("give tau too, or leave both empty (defaults table)")

    def check_gamma(values):
        gamma = optional_number("gamma", values[3])
        if gamma is None and optional_number("tau", values[2]) is not None:
            raise SaeuronError("give gamma too, or leave both empty (defaults table)")

    def check_seed(values):
        check_int("seed", 0 if values[4] is None else values[4], 0, ex.session.limits.max_seed)

    def check_seeds(values):
        check_int("seeds per prompt", DEFAULT_GRID_SEEDS if values[5] is None else values[5], 1, MAX_GRID_SEEDS)

    check = validator(
        {
            0: lambda v: v[0] or fail("choose at least one concept to unlearn"),
            1: lambda v: v[1] or fail("choose at least one method"),
            2: check_tau,
            3: check_gamma,
            4: check_seed,
            5: check_seeds,
        }
    )
    p.concepts.change(ui_errors(show_defaults), p.concepts, p.defaults, api_name="unlearn_defaults")
    p.run_button.click(
        run,
        [p.concepts, p.methods, p.tau, p.gamma, p.seed, p.seeds],
        [p.matrix, p.metrics, p.exports],
        api_name="unlearn_grid",
        concurrency_id="unet",
        validator=check,
    )
