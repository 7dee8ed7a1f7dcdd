"""Features panel: ranked features for a concept / hook point / step, selection counts, the UMAP
map, and the feature card with buttons that add the feature as an intervention."""

from __future__ import annotations

import json
from dataclasses import dataclass

import gradio as gr
import numpy as np
import pandas as pd

from saeuron_core.errors import SaeuronError
from saeuron_core.interventions import ScaleFeatures, Steer, StepWindow

from .. import plots
from ..context import Explorer
from ..imaging import tokens_from_mask
from ..recipes import intervention_from_dict, intervention_to_dict
from ..zerogpu import gpu
from . import served, ui_errors

NO_CONCEPT = "(none)"
RANK_COLUMNS = ["feature", "score", "frequency", "top concept"]


@dataclass
class FeaturesPanel:
    concept: gr.Dropdown
    point: gr.Dropdown
    all_steps: gr.Checkbox
    step: gr.Slider
    rank_button: gr.Button
    ranked: gr.Dataframe
    scores: gr.Plot
    percentile: gr.Slider
    counts: gr.Plot
    map_colour: gr.Radio
    map_button: gr.Button
    feature_map: gr.ScatterPlot
    feature: gr.Number
    open_button: gr.Button
    summary: gr.Markdown
    patches: gr.Gallery
    sparkline: gr.Plot
    histogram: gr.Plot
    concept_bars: gr.Plot
    strength: gr.Number
    window_start: gr.Number
    window_stop: gr.Number
    ablate_button: gr.Button
    scale_button: gr.Button
    steer_button: gr.Button
    steer_mask: gr.ImageEditor


def layout(ex: Explorer) -> FeaturesPanel:
    point = ex.session.points[0]
    n_steps = len(ex.features.timesteps(point))
    with gr.Row():
        concept = gr.Dropdown([NO_CONCEPT, *ex.features.concepts(point)], value=NO_CONCEPT, label="Concept", elem_id="concept")
        point_box = gr.Dropdown(ex.session.points, value=point, label="Hook point")
        all_steps = gr.Checkbox(True, label="All steps")
        step = gr.Slider(0, n_steps - 1, value=0, step=1, label="Step (0 = first denoising step)")
        rank_button = gr.Button("Rank features", variant="primary", elem_id="rank")
    with gr.Row():
        ranked = gr.Dataframe(headers=RANK_COLUMNS, interactive=False, label="Features by importance score (select a row to open it)", elem_id="ranked")
        scores = gr.Plot(label="Scores")
    with gr.Row():
        percentile = gr.Slider(50, 99.999, value=99.0, step=0.001, label="Percentile tau (needs a concept)")
        counts = gr.Plot(label="Selected features per step")
    with gr.Accordion("Map of decoder directions (UMAP)", open=False):
        with gr.Row():
            map_colour = gr.Radio(["top concept", "score"], value="top concept", label="Colour by")
            map_button = gr.Button("Show map")
        feature_map = gr.ScatterPlot(x="x", y="y", color="colour", tooltip=["feature", "top concept", "score"], label="Select a region to open its best-scoring feature", height=420)
    gr.Markdown("### Feature card")
    with gr.Row():
        feature = gr.Number(value=None, precision=0, label="Feature id", elem_id="feature-id")
        open_button = gr.Button("Open feature", elem_id="open-feature")
    summary = gr.Markdown()
    patches = gr.Gallery(label="Top-activating patches", columns=4, height=320, format="png", elem_id="patches")
    with gr.Row():
        sparkline = gr.Plot(label="Activation over steps")
        histogram = gr.Plot(label="Histogram")
        concept_bars = gr.Plot(label="Per concept")
    with gr.Row():
        strength = gr.Number(value=0.0, label="Strength (scale factor or steering strength)")
        window_start = gr.Number(value=0, precision=0, minimum=0, label="From step")
        window_stop = gr.Number(value=0, precision=0, minimum=0, label="Until step, exclusive (0: to the last)")
        ablate_button = gr.Button("Add as ablation", elem_id="add-ablation")
        scale_button = gr.Button("Add as scaling")
        steer_button = gr.Button("Add as steering")
    steer_mask = gr.ImageEditor(
        label="Steering mask: paint where to steer (empty canvas: everywhere)", type="numpy", image_mode="RGBA", sources=(), transforms=(),
        layers=False, canvas_size=(256, 256), fixed_canvas=True, brush=gr.Brush(colors=["#ff3030"], default_size=32), height=300,
    )
    return FeaturesPanel(concept, point_box, all_steps, step, rank_button, ranked, scores, percentile, counts, map_colour, map_button, feature_map, feature, open_button, summary, patches, sparkline, histogram, concept_bars, strength, window_start, window_stop, ablate_button, scale_button, steer_button, steer_mask)


def wire(ex: Explorer, p: FeaturesPanel, interventions: gr.Code, demo: gr.Blocks | None = None) -> None:
    def chosen(concept, all_steps, step):
        return (None if concept in (None, NO_CONCEPT) else concept), (None if all_steps else int(step))

    @ui_errors
    def rank(concept, point, all_steps, step, percentile):
        concept, step = chosen(concept, all_steps, step)
        rows = ex.features.rank(point, concept, step)
        table = pd.DataFrame([[r.feature, r.score, r.frequency, r.top_concept] for r in rows], columns=RANK_COLUMNS)
        title = f"scores for {concept or 'each feature’s top concept'} ({'all steps' if step is None else f'step {step}'})"
        return table, plots.scores_chart(rows[:30], title), selection(concept, point, percentile)

    def selection(concept, point, percentile):
        if concept is None:
            return None
        counts = ex.features.selection_counts(point, concept, percentile)
        return plots.selection_chart(ex.features.timesteps(point), counts, percentile)

    @ui_errors
    def counts(concept, point, all_steps, step, percentile):
        return selection(chosen(concept, all_steps, step)[0], point, percentile)

    @gpu
    @ui_errors
    def open_card(point, feature, concept, all_steps, step):
        """The card at once with the images already cached, then, if some were missing, with all."""
        if feature is None:
            raise SaeuronError("enter a feature id (or select a row of the table)")
        concept, step = chosen(concept, all_steps, step)
        card = ex.features.card(point, int(feature), step, concept, generate_images=False)
        yield card_outputs_of(card)
        if any(pt.placeholder for pt in card.patches):
            yield card_outputs_of(ex.features.card(point, int(feature), step, concept))

    def card_outputs_of(card):
        where = "all steps" if card.step is None else f"step {card.step} (timestep {card.timesteps[card.step]})"
        text = f"**Feature {card.feature}** at `{card.point}`, {where}: active on {card.frequency:.2%} of tokens; top concept **{card.top_concept}**."
        if any(pt.placeholder for pt in card.patches):
            text += " Regenerating the top images…"
        gallery = [(served(pt.image), f"{pt.value:.3g} · {pt.prompt} · seed {pt.seed} · step {pt.step} · token ({pt.row},{pt.col})") for pt in card.patches]
        gallery += [(served(pt.crop), f"crop {pt.value:.3g}") for pt in card.patches]
        return text, gallery, plots.activation_sparkline(card), plots.activation_histogram(card), plots.concept_bars(card)

    def pick_row(table, evt: gr.SelectData):
        return int(table.iloc[evt.index[0], 0])

    @ui_errors
    def show_map(point, colour):
        fmap = ex.features.feature_map(point)
        frame = pd.DataFrame({"x": fmap.xy[:, 0], "y": fmap.xy[:, 1], "feature": range(len(fmap.top_concept)), "top concept": fmap.top_concept, "score": fmap.top_score})
        frame["colour"] = frame["top concept"] if colour == "top concept" else pd.cut(frame["score"], 5).astype(str)
        return frame

    @ui_errors
    def pick_from_map(point, evt: gr.SelectData):
        fmap = ex.features.feature_map(point)
        low, high = sorted(evt.index[:2])
        inside = [i for i, x in enumerate(fmap.xy[:, 0]) if low <= x <= high]
        if not inside:
            raise SaeuronError("no feature in the selected region")
        return max(inside, key=lambda i: fmap.top_score[i])

    def adder(kind):
        @ui_errors
        def add(current, point, feature, strength, start, stop, painting):
            if feature is None:
                raise SaeuronError("open a feature first")
            window = StepWindow(int(start or 0), int(stop) if stop else None)
            window = None if window == StepWindow() else window
            if kind == "steer":
                new = Steer((int(feature),), float(strength), steering_tokens(painting, ex.features.stats(point)), window, point)
            else:
                new = ScaleFeatures((int(feature),), 0.0 if kind == "ablate" else float(strength), window, point)
            return append_intervention(current, new)

        return add

    ranking_inputs = [p.concept, p.point, p.all_steps, p.step, p.percentile]
    ranking_outputs = [p.ranked, p.scores, p.counts]
    card_inputs = [p.point, p.feature, p.concept, p.all_steps, p.step]
    card_outputs = [p.summary, p.patches, p.sparkline, p.histogram, p.concept_bars]
    p.rank_button.click(rank, ranking_inputs, ranking_outputs, api_name="rank_features")
    if demo is not None:  # a visitor lands on a ranked table, not an empty one
        demo.load(rank, ranking_inputs, ranking_outputs, api_visibility="private")
    p.concept.change(rank, ranking_inputs, ranking_outputs, api_visibility="private")
    p.point.change(rank, ranking_inputs, ranking_outputs, api_visibility="private")
    p.percentile.release(counts, ranking_inputs, p.counts, api_name="selection_counts")
    p.open_button.click(open_card, card_inputs, card_outputs, api_name="feature_card")
    p.ranked.select(pick_row, p.ranked, p.feature, api_visibility="private").then(open_card, card_inputs, card_outputs, api_visibility="private")
    for trigger in (p.step.release, p.all_steps.change):
        trigger(rank, ranking_inputs, ranking_outputs, api_visibility="private").then(open_card, card_inputs, card_outputs, api_visibility="private")
    p.map_button.click(show_map, [p.point, p.map_colour], p.feature_map, api_name="feature_map")
    p.feature_map.select(pick_from_map, p.point, p.feature, api_visibility="private").then(open_card, card_inputs, card_outputs, api_visibility="private")
    add_inputs = [interventions, p.point, p.feature, p.strength, p.window_start, p.window_stop, p.steer_mask]
    p.ablate_button.click(adder("ablate"), add_inputs, interventions, api_name="add_ablation")
    p.scale_button.click(adder("scale"), add_inputs, interventions, api_name="add_scaling")
    p.steer_button.click(adder("steer"), add_inputs, interventions, api_name="add_steering")


def steering_tokens(painting, stats) -> tuple[int, ...] | None:
    """The tokens painted on the mask canvas (None: nothing painted, steer everywhere)."""
    layers = (painting or {}).get("layers") or []
    painted = [layer[..., 3] for layer in layers if layer is not None and layer.ndim == 3 and layer.shape[2] == 4]
    if not painted or not any(a.any() for a in painted):
        return None
    return tokens_from_mask(np.maximum.reduce(painted), (stats.height, stats.width))


def parse_interventions(text: str) -> list:
    """The interventions in the editable JSON list."""
    try:
        data = json.loads(text or "[]")
    except json.JSONDecodeError as e:
        raise SaeuronError(f"the interventions are not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise SaeuronError("the interventions must be a JSON list")
    return [intervention_from_dict(d) for d in data]


def format_interventions(interventions) -> str:
    return json.dumps([intervention_to_dict(iv) for iv in interventions], indent=1)


def append_intervention(current: str, new) -> str:
    return format_interventions([*parse_interventions(current), new])
