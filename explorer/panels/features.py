"""Features panel: ranked features for a concept / hook point / step, selection counts, the UMAP
map, and the feature card with buttons that add the feature as an intervention (those buttons'
events and checks are in ``feature_edits``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

import gradio as gr
import pandas as pd

from saeuron_core.errors import SaeuronError
from saeuron_core.unlearning import ADD_STRENGTH

from .. import cardview, plots
from .. import feature_map as feature_map_view
from ..context import Explorer
from ..formatting import optional_int, optional_number, percent, sig3
from ..zerogpu import gpu
from . import ADD_STRENGTH_LABEL, grouped_concepts, page_url, ui_errors, validator

NO_CONCEPT = "(none)"
ALL_STEPS = "all"
RANK_COLUMNS = ["feature", "score", "active on", "top concept", "label"]
DEFAULT_STEER = 4.0
"""Default steering strength in units of the feature's typical top activation: on the bundled
model 4x moved pixels by up to 40% (mean 2%) where 0.5x moved them by 5%."""
DEFAULT_SCALE = 4.0
DEFAULT_OPACITY = cardview.DEFAULT_OPACITY
SCROLL_TO_CARD = "() => { document.getElementById('card-summary')?.scrollIntoView({block: 'start'}); }"


@dataclass
class FeaturesPanel:
    concept: gr.Dropdown
    point: gr.Dropdown
    step: gr.Dropdown
    rank_button: gr.Button
    ranked: gr.Dataframe
    scores: gr.Plot
    percentile: gr.Slider
    counts: gr.Plot
    map_colour: gr.Radio
    map_button: gr.Button
    map_status: gr.Markdown
    feature_map: gr.ScatterPlot
    search: gr.Textbox
    search_button: gr.Button
    feature: gr.Textbox
    open_button: gr.Button
    summary: gr.Markdown
    opacity: gr.Slider
    patches: gr.HTML
    sparkline: gr.Plot
    histogram: gr.Plot
    concept_bars: gr.Plot
    factor: gr.Number
    strength: gr.Number
    window_start: gr.Number
    window_stop: gr.Textbox
    ablate_button: gr.Button
    scale_button: gr.Button
    steer_button: gr.Button
    steer_mask: gr.ImageEditor
    region: tuple = ()
    """(x min, x max, y min, y max, button) of the map's selection box."""
    add_note: gr.Markdown | None = None
    handle_strength: gr.Number | None = None
    remove_button: gr.Button | None = None
    add_button: gr.Button | None = None
    handle_note: gr.Markdown | None = None


def step_choices(timesteps) -> list[tuple[str, str]]:
    return [("all steps (mean)", ALL_STEPS)] + [(f"step {i} (timestep {t})", str(i)) for i, t in enumerate(timesteps)]


def read_step(value) -> int | None:
    """The step control's value: "all" / None / "" is every step, else a step index."""
    if value is None or (isinstance(value, str) and value.strip() in ("", ALL_STEPS)):
        return None
    step = optional_int("step", value)
    return step


def read_concept(value) -> str | None:
    return None if value in (None, "", NO_CONCEPT) else value


def read_feature(value) -> int:
    feature = optional_int("feature id", value)
    if feature is None:
        raise SaeuronError("enter a feature id (or select a row of the table)")
    return feature


def ranked_table(rows) -> pd.DataFrame:
    return pd.DataFrame(
        [[r.feature, sig3(r.score), percent(r.frequency), r.top_concept, r.label] for r in rows], columns=RANK_COLUMNS
    )


def step_title(step: int | None) -> str:
    return "all steps" if step is None else f"step {step}"


def layout(ex: Explorer) -> FeaturesPanel:
    point = ex.session.points[0]
    concepts = ex.features.concepts(point)
    with gr.Row():
        concept = gr.Dropdown(
            [(NO_CONCEPT, NO_CONCEPT), *grouped_concepts(ex.session.bundle, concepts)],
            value=NO_CONCEPT,
            label="Concept (selects its kind's hook point)",
            elem_id="concept",
        )
        point_box = gr.Dropdown(ex.session.points, value=point, label="Hook point", elem_id="point")
        step = gr.Dropdown(
            step_choices(ex.features.timesteps(point)),
            value=ALL_STEPS,
            label="Step: drives the ranking, the card and the plots",
            elem_id="step",
        )
        rank_button = gr.Button("Rank features", variant="primary", elem_id="rank")
    with gr.Row():
        handle_strength = gr.Number(
            ADD_STRENGTH,
            label=ADD_STRENGTH_LABEL,
            elem_id="features-handle-strength",
        )
        remove_button = gr.Button("Remove this concept (SAeUron default)", elem_id="features-remove-concept")
        add_button = gr.Button("Add this concept (rewrite the prompt)", elem_id="features-add-concept")
    handle_note = gr.Markdown(elem_id="features-handle-note")
    with gr.Row():
        search = gr.Textbox(
            "",
            label="Search features by label or concept",
            placeholder="e.g. dots, star, or a feature id",
            elem_id="feature-search",
            scale=3,
        )
        search_button = gr.Button("Search", elem_id="search-features")
    with gr.Row():
        ranked = gr.Dataframe(
            headers=RANK_COLUMNS,
            interactive=False,
            label="Features by importance score (select a row to open it)",
            elem_id="ranked",
            max_height=420,
        )
        scores = gr.Plot(label="Scores", elem_id="scores-plot")
    with gr.Row():
        percentile = gr.Slider(
            50, 99.999, value=99.0, step=0.001, label="Percentile tau (needs a concept)", elem_id="percentile"
        )
        counts = gr.Plot(label="Selected features per step", elem_id="counts-plot")
    with gr.Accordion("Map of decoder directions (UMAP, computed in the background at start)", open=False):
        with gr.Row():
            map_colour = gr.Radio(list(feature_map_view.COLOUR_BY), value="top concept", label="Colour by")
            map_button = gr.Button("Show map", elem_id="show-map")
        map_status = gr.Markdown()
        with gr.Row():
            feature_map = gr.ScatterPlot(
                x="x",
                y="y",
                color="colour",
                tooltip=["feature", "point", "label", "top concept", "score"],
                x_title="UMAP 1",
                y_title="UMAP 2",
                label="Features (hover: id, hook point, label); "
                "drag over a range of UMAP 1 to fill the box's UMAP 1 bounds",
                height=420,
                scale=3,
                elem_id="feature-map",
            )
            # Gradio's scatter plot reports only an x interval when dragged (and gr.Plot no
            # selection at all), so the 2-D region is a box typed beside the map
            with gr.Column(scale=1, min_width=220):
                gr.Markdown("**Region of the map** (empty bound: open)")
                with gr.Row():
                    x_min = gr.Textbox("", placeholder="open", label="UMAP 1 from", elem_id="map-x-min")
                    x_max = gr.Textbox("", placeholder="open", label="UMAP 1 to", elem_id="map-x-max")
                with gr.Row():
                    y_min = gr.Textbox("", placeholder="open", label="UMAP 2 from", elem_id="map-y-min")
                    y_max = gr.Textbox("", placeholder="open", label="UMAP 2 to", elem_id="map-y-max")
                region_button = gr.Button("Rank the features in this box", elem_id="map-region")
    gr.Markdown("### Feature card")
    with gr.Row():
        feature = gr.Textbox("", label="Feature id", placeholder="e.g. 12, or select a table row", elem_id="feature-id")
        open_button = gr.Button("Open feature", elem_id="open-feature")
    summary = gr.Markdown(elem_id="card-summary")
    opacity = gr.Slider(
        0,
        1,
        value=DEFAULT_OPACITY,
        step=0.05,
        label="Heatmap opacity (right image of each pair)",
        elem_id="heat-opacity",
    )
    patches = gr.HTML(label="Top examples: raw image | activation map over it", elem_id="patches")
    with gr.Row():
        sparkline = gr.Plot(label="Activation over steps", elem_id="sparkline")
        histogram = gr.Plot(label="Histogram", elem_id="histogram")
        concept_bars = gr.Plot(label="Per concept", elem_id="concept-bars")
    with gr.Row():
        factor = gr.Number(
            value=DEFAULT_SCALE, label="Scale factor (for scaling; ablation is 0)", elem_id="scale-factor"
        )
        strength = gr.Number(
            value=DEFAULT_STEER,
            label="Steering strength, x the feature's typical top activation",
            elem_id="steer-strength",
        )
        window_start = gr.Number(value=0, precision=0, minimum=0, label="From step", elem_id="window-start")
        window_stop = gr.Textbox(
            "", label="Until step, exclusive (empty: to the last)", placeholder="to the last", elem_id="window-stop"
        )
    with gr.Row():
        ablate_button = gr.Button("Add as ablation", elem_id="add-ablation")
        scale_button = gr.Button("Add as scaling", elem_id="add-scaling")
        steer_button = gr.Button("Add as steering", elem_id="add-steering")
    add_note = gr.Markdown(elem_id="add-note")
    steer_mask = gr.ImageEditor(
        label="Steering mask: paint where to steer (nothing painted: everywhere); "
        "the background is the last generated image",
        type="numpy",
        image_mode="RGBA",
        sources=(),
        transforms=(),
        layers=False,
        canvas_size=(256, 256),
        fixed_canvas=True,
        brush=gr.Brush(colors=["#ff3030"], default_size=32),
        height=300,
        elem_id="steer-mask",
    )
    return FeaturesPanel(
        concept,
        point_box,
        step,
        rank_button,
        ranked,
        scores,
        percentile,
        counts,
        map_colour,
        map_button,
        map_status,
        feature_map,
        search,
        search_button,
        feature,
        open_button,
        summary,
        opacity,
        patches,
        sparkline,
        histogram,
        concept_bars,
        factor,
        strength,
        window_start,
        window_stop,
        ablate_button,
        scale_button,
        steer_button,
        steer_mask,
        (x_min, x_max, y_min, y_max, region_button),
        add_note,
        handle_strength,
        remove_button,
        add_button,
        handle_note,
    )


def wire(ex: Explorer, p: FeaturesPanel, demo: gr.Blocks | None = None) -> None:
    """Ranking, search, map and card events (the card's add buttons: ``feature_edits.wire``)."""

    def check_step(point, step):
        return ex.features.check_step(point, read_step(step))

    @ui_errors
    def rank(concept, point, step, percentile):
        concept, step = read_concept(concept), check_step(point, step)
        rows = ex.features.rank(point, concept, step)
        table = ranked_table(rows)
        title = f"Score for {concept or 'each feature’s top concept'}, {step_title(step)}"
        return table, plots.scores_chart(rows[:30], title), selection(concept, point, percentile)

    def selection(concept, point, percentile):
        if concept is None:
            return None
        chosen = ex.features.selection(point, concept, percentile)
        return plots.selection_chart(ex.features.timesteps(point), chosen, percentile, concept)

    @ui_errors
    def counts(concept, point, step, percentile):
        return selection(read_concept(concept), point, percentile)

    @ui_errors
    def choose_concept(concept, point, step, percentile):
        """A concept selects its kind's hook point, then the ranking follows."""
        concept = read_concept(concept)
        if concept is not None:
            point = ex.features.point_of(concept)
        return (point, *rank(concept, point, step, percentile))

    @gpu
    @ui_errors
    def open_card(point, feature, concept, step, request: gr.Request):
        """The card at once from the stored examples; only statistics stored without thumbnails
        need images generated, and then the card comes again with them."""
        feature, concept, step = read_feature(feature), read_concept(concept), check_step(point, step)
        card = ex.features.card(point, feature, step, concept, generate_images=False)
        yield card_outputs_of(card, request)
        if any(pt.placeholder for pt in card.patches):
            yield card_outputs_of(ex.features.card(point, feature, step, concept), request)

    @ui_errors
    def refresh_card(point, feature, concept, step, request: gr.Request):
        """After a step or concept change: the card again if one is open (nothing otherwise)."""
        if optional_int("feature id", feature) is None:
            return tuple(gr.skip() for _ in card_outputs)
        return card_outputs_of(
            ex.features.card(
                point, read_feature(feature), check_step(point, step), read_concept(concept), generate_images=False
            ),
            request,
        )

    def card_outputs_of(card, request=None):
        where = "all steps" if card.step is None else f"step {card.step} (timestep {card.timesteps[card.step]})"
        typical = ex.features.typical_top_activation(card.point, card.feature)
        link = page_url(request) + "?" + urlencode({"point": card.point, "feature": card.feature})
        text = (
            f"**Feature {card.feature}** at `{card.point}`, {where}: **{card.label}**; "
            f"active on {percent(card.frequency)} of tokens; "
            f"top concept by score **{card.top_concept}**; typical top activation **{sig3(typical)}** "
            f"(steering {sig3(DEFAULT_STEER)}x adds {sig3(DEFAULT_STEER * typical)} times its decoder direction). "
            f"[Permalink]({link})"
        )
        if any(pt.placeholder for pt in card.patches):
            text += " Regenerating the top images…"
        return (
            text,
            cardview.examples_html(card.patches),
            plots.activation_sparkline(card),
            plots.activation_histogram(card),
            plots.concept_bars(card),
        )

    @ui_errors
    def search(point, query):
        return ranked_table(ex.features.search(point, query, ex.session.limits.max_ranked_rows))

    @ui_errors
    def open_from_url(point, request: gr.Request):
        """A permalink (``?feature=12&point=...``) opens that feature's card on arrival."""
        params = dict(request.query_params) if request is not None else {}
        if "feature" not in params:
            return (gr.skip(), gr.skip(), *(gr.skip() for _ in card_outputs))
        point = ex.session.check_point(params.get("point") or point)
        feature = ex.features.check_feature(point, read_feature(params["feature"]))
        return (
            point,
            str(feature),
            *card_outputs_of(ex.features.card(point, feature, None, None, generate_images=False), request),
        )

    def pick_row(table, evt: gr.SelectData):
        if evt is None or table is None or len(table) == 0:
            return gr.skip()
        return str(int(table.iloc[evt.index[0], 0]))

    @ui_errors
    def show_map(point, colour):
        fmap = ex.features.ready_map(point)
        if fmap is None:
            return (
                gr.skip(),
                "The map is still being computed in the background (tens of seconds on first start); "
                "click again shortly.",
            )
        bundle = ex.session.bundle
        kind_of = {c: k for k, p in bundle.point_of_kind.items() for c in bundle.stats[p].concepts_of_kind(k)}
        frame, colours = feature_map_view.map_frame(
            fmap, colour, [lab.text for lab in ex.features.labels(point)], kind_of
        )
        structure = feature_map_view.structure_sentence(ex.features.map_structure(point))
        return gr.ScatterPlot(
            value=frame, color_map=colours
        ), f"{len(frame)} features of `{point}`, coloured by {colour}. {structure}"

    @ui_errors
    def pick_from_map(evt: gr.SelectData):
        if evt is None or not evt.index:
            return gr.skip(), gr.skip()
        low, high = sorted(evt.index[:2])
        return f"{float(low):.4g}", f"{float(high):.4g}"

    @ui_errors
    def rank_region(concept, point, step, x_min, x_max, y_min, y_max):
        concept, step = read_concept(concept), check_step(point, step)
        # empty text is an open bound (a gr.Number would send 0 for an empty box)
        x_min, x_max, y_min, y_max = (
            optional_number(name, v)
            for name, v in (("UMAP 1 from", x_min), ("UMAP 1 to", x_max), ("UMAP 2 from", y_min), ("UMAP 2 to", y_max))
        )
        rows = ex.features.in_region(point, (x_min, x_max), (y_min, y_max), concept, step)

        def bound(v):
            return "open" if v is None else sig3(v)

        return (
            ranked_table(rows),
            f"{len(rows)} feature(s) shown in the table, UMAP 1 {bound(x_min)} to {bound(x_max)}, "
            f"UMAP 2 {bound(y_min)} to {bound(y_max)}, by score for {concept or 'each feature’s top concept'}.",
        )

    @ui_errors
    def search_point(point, query, concept):
        """With no concept chosen, a search for a concept's name looks at its kind's hook point."""
        if read_concept(concept) is not None or not isinstance(query, str):
            return gr.skip()
        text = query.strip().lower()
        matches = {ex.features.point_of(c) for c in ex.features.concepts() if text and text in c.lower()}
        return matches.pop() if len(matches) == 1 else gr.skip()

    ranking_inputs = [p.concept, p.point, p.step, p.percentile]
    ranking_outputs = [p.ranked, p.scores, p.counts]
    card_inputs = [p.point, p.feature, p.concept, p.step]
    card_outputs = [p.summary, p.patches, p.sparkline, p.histogram, p.concept_bars]
    card_check = validator(
        {1: lambda v: ex.features.check_feature(v[0], read_feature(v[1])), 3: lambda v: check_step(v[0], v[3])}
    )
    p.rank_button.click(
        rank,
        ranking_inputs,
        ranking_outputs,
        api_name="rank_features",
        validator=validator({2: lambda v: check_step(v[1], v[2])}),
    )
    if demo is not None:  # a visitor lands on a ranked table, not an empty one
        demo.load(rank, ranking_inputs, ranking_outputs, api_visibility="private")
    p.concept.input(choose_concept, ranking_inputs, [p.point, *ranking_outputs], api_visibility="private").then(
        refresh_card, card_inputs, card_outputs, api_visibility="private"
    )
    p.point.input(rank, ranking_inputs, ranking_outputs, api_visibility="private")
    p.percentile.change(counts, ranking_inputs, p.counts, api_name="selection_counts")
    p.open_button.click(open_card, card_inputs, card_outputs, api_name="feature_card", validator=card_check).then(
        None, js=SCROLL_TO_CARD
    )
    p.feature.submit(open_card, card_inputs, card_outputs, api_visibility="private", validator=card_check)
    p.ranked.select(pick_row, p.ranked, p.feature, api_visibility="private").then(
        open_card, card_inputs, card_outputs, api_visibility="private"
    ).then(None, js=SCROLL_TO_CARD)
    p.step.input(rank, ranking_inputs, ranking_outputs, api_visibility="private").then(
        refresh_card, card_inputs, card_outputs, api_visibility="private"
    )
    search_checks = validator({1: lambda v: ex.features.search(v[0], v[1], 1)})
    p.search_button.click(search_point, [p.point, p.search, p.concept], p.point, api_visibility="private").then(
        search, [p.point, p.search], p.ranked, api_name="search_features", validator=search_checks
    )
    p.search.submit(search_point, [p.point, p.search, p.concept], p.point, api_visibility="private").then(
        search, [p.point, p.search], p.ranked, api_visibility="private"
    )
    # the opacity is a CSS variable on the examples' container: no round trip to the server
    p.opacity.input(
        None,
        p.opacity,
        None,
        js="(v) => { document.getElementById('patches').style.setProperty('--heat-opacity', v); return []; }",
    )
    if demo is not None:
        demo.load(open_from_url, p.point, [p.point, p.feature, *card_outputs], api_visibility="private")
    p.map_button.click(show_map, [p.point, p.map_colour], [p.feature_map, p.map_status], api_name="feature_map")
    x_min, x_max, y_min, y_max, region_button = p.region
    p.feature_map.select(pick_from_map, None, [x_min, x_max], api_visibility="private")
    region_button.click(
        rank_region,
        [p.concept, p.point, p.step, x_min, x_max, y_min, y_max],
        [p.ranked, p.map_status],
        api_name="map_region",
    )
