"""Generate panel: prompt, seed, steps, guidance and the intervention list; the edited image next
to the unedited one and their difference; features active at a clicked patch. The intervention
list's table, handles and clear / delete are wired in ``intervention_editor``."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np
import pandas as pd

from saeuron_core.errors import SaeuronError
from saeuron_core.interventions import ScaleFeatures
from saeuron_core.unlearning import ADD_STRENGTH

from .. import cardview, handles
from .. import intervention_table as table
from ..context import Explorer
from ..editing import Preview, unknown_words
from ..formatting import optional_int, sig3
from ..imaging import upscale, upscale_factor
from ..limits import check_int
from ..recipes import Recipe, recipe_to_json, recipe_to_python, recipe_to_query
from ..zerogpu import gpu
from . import (
    ADD_STRENGTH_LABEL,
    _as_ui_error,
    grouped_concepts,
    intervention_editor,
    page_url,
    served,
    ui_errors,
    validator,
)
from .intervention_editor import append_intervention

ACTIVE_COLUMNS = ["feature", "activation", "top concept"]
DISPLAY_SIDE = 256


@dataclass
class GeneratePanel:
    prompt: gr.Textbox
    seed: gr.Number
    steps: gr.Number
    guidance: gr.Number
    interventions: gr.Code
    clear_button: gr.Button
    generate_button: gr.Button
    before: gr.Image
    after: gr.Image
    difference: gr.Image
    note: gr.Markdown
    patch_point: gr.Dropdown
    patch_step: gr.Slider
    active: gr.Dataframe
    prompt_note: gr.Markdown
    editor: gr.Dataframe
    delete_button: gr.Button
    selected_row: gr.State
    compare: gr.ImageSlider
    locate_feature: gr.Textbox
    locate_button: gr.Button
    feature_in_image: gr.HTML
    seeds: gr.Textbox
    seeds_button: gr.Button
    seeds_grid: gr.HTML
    handle_concept: gr.Dropdown | None = None
    handle_strength: gr.Number | None = None
    remove_button: gr.Button | None = None
    add_button: gr.Button | None = None
    handle_note: gr.Markdown | None = None
    effects: gr.Dataframe | None = None
    verdict: gr.Markdown | None = None


def layout(ex: Explorer) -> GeneratePanel:
    info, limits = ex.session.info, ex.session.limits
    example = (
        f"An image of {info.concepts_of('object')[0]} in {info.concepts_of('style')[0]} style."
        if info.concepts_of("object") and info.concepts_of("style")
        else "A photo of a cat."
    )
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(
                example, label=f"Prompt (at most {limits.max_prompt_chars} characters)", elem_id="prompt"
            )
            prompt_note = gr.Markdown(elem_id="prompt-note")
        seed = gr.Number(0, label=f"Seed (a whole number, 0 to {limits.max_seed})", elem_id="seed")
        # numbers checked on the server, not sliders: a slider's box silently clamps what is typed
        steps = gr.Number(info.default_steps, label=f"Steps (1 to {limits.max_steps})", elem_id="steps")
        guidance = gr.Number(
            info.default_guidance, label=f"Guidance (0 to {limits.max_guidance:g})", elem_id="guidance"
        )
    editor = gr.Dataframe(
        value=pd.DataFrame(columns=table.COLUMNS),
        headers=table.COLUMNS,
        datatype=table.DATATYPES,
        interactive=True,
        static_columns=[1, 2, 7, 8],
        column_widths=["6%", "8%", "17%", "12%", "9%", "8%", "8%", "10%", "22%"],
        show_row_numbers=True,
        label="Interventions: add them from the feature card; toggle 'on', edit features, value "
        "(scale factor, steering strength or add strength) and steps; select a row to delete it",
        elem_id="intervention-table",
    )
    gr.Markdown(table.what_each_does(*handles.default_removals(ex.session)), elem_id="what-each-does")
    with gr.Row():
        concepts = grouped_concepts(ex.session.bundle, ex.features.concepts())
        default_concept = (
            info.concepts_of("style")[0]
            if info.concepts_of("style") and info.concepts_of("style")[0] in dict(map(reversed, concepts))
            else (concepts[0][1] if concepts else None)
        )
        handle_concept = gr.Dropdown(
            concepts,
            value=default_concept,
            label="Concept handle: the concept",
            elem_id="handle-concept",
            allow_custom_value=True,
        )
        handle_strength = gr.Number(
            ADD_STRENGTH,
            label=ADD_STRENGTH_LABEL,
            elem_id="handle-strength",
        )
        remove_button = gr.Button("Remove concept (SAeUron default)", elem_id="remove-concept")
        add_button = gr.Button("Add concept (rewrite the prompt)", elem_id="add-concept")
    handle_note = gr.Markdown(elem_id="handle-note")
    with gr.Accordion("Interventions as JSON (what the recipe holds: the rows that are on)", open=False):
        interventions = gr.Code(
            "[]", language="json", label="Interventions (JSON)", interactive=True, elem_id="interventions"
        )
    with gr.Row():
        delete_button = gr.Button("Delete selected row", elem_id="delete-intervention")
        clear_button = gr.Button("Clear interventions")
        generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
    note = gr.Markdown(elem_id="generate-note")  # above the images: a failure is said where one looks
    with gr.Row():
        before = gr.Image(label="Without interventions", type="pil", format="png", interactive=False, elem_id="before")
        after = gr.Image(
            label="With interventions (click a patch)", type="pil", format="png", interactive=False, elem_id="after"
        )
        difference = gr.Image(label="Difference", type="pil", format="png", interactive=False)
    verdict = gr.Markdown(elem_id="judge-verdict")
    effects = gr.Dataframe(
        headers=handles.EFFECT_COLUMNS,
        interactive=False,
        label="What each row did (after Generate): its features' mean activation and the judge, unedited vs edited",
        elem_id="row-effects",
        wrap=True,
        column_widths=["4%", "20%", "7%", "8%", "8%", "17%", "17%", "19%"],
    )
    compare = gr.ImageSlider(
        label="Before / after: drag the handle",
        type="pil",
        interactive=False,
        max_height=DISPLAY_SIDE + 60,
        elem_id="compare",
    )
    gr.Markdown("### Where a feature fires in this image")
    with gr.Row():
        locate_feature = gr.Textbox(
            "",
            label="Feature id (empty: the image's most active feature)",
            placeholder="e.g. 12",
            elem_id="locate-feature",
        )
        locate_button = gr.Button("Show where it fires, step by step", elem_id="locate")
    feature_in_image = gr.HTML(elem_id="feature-in-image")
    gr.Markdown("### Several seeds")
    with gr.Row():
        seeds = gr.Textbox("1, 2, 3", label=f"Seeds, comma separated (at most {limits.max_seeds})", elem_id="seeds")
        seeds_button = gr.Button("Compare these seeds (same prompt and interventions)", elem_id="compare-seeds")
    seeds_grid = gr.HTML(elem_id="seeds-grid")
    with gr.Row():
        patch_point = gr.Dropdown(
            ex.session.points,
            value=ex.session.points[0],
            label="Hook point (of the clicked patch and of 'where a feature fires')",
        )
        patch_step = gr.Slider(
            0,
            info.default_steps - 1,
            value=info.default_steps - 1,
            step=1,
            label="Step of the clicked patch (follows the steps above)",
            elem_id="patch-step",
        )
    active = gr.Dataframe(
        headers=ACTIVE_COLUMNS,
        interactive=False,
        label="Features active at the clicked patch (select one to ablate it)",
        elem_id="active",
    )
    return GeneratePanel(
        prompt,
        seed,
        steps,
        guidance,
        interventions,
        clear_button,
        generate_button,
        before,
        after,
        difference,
        note,
        patch_point,
        patch_step,
        active,
        prompt_note,
        editor,
        delete_button,
        gr.State(None),
        compare,
        locate_feature,
        locate_button,
        feature_in_image,
        seeds,
        seeds_button,
        seeds_grid,
        handle_concept,
        handle_strength,
        remove_button,
        add_button,
        handle_note,
        effects,
        verdict,
    )


def read_seeds(text) -> list[int]:
    """ "1, 2, 3" as [1, 2, 3]."""
    pieces = [piece for piece in str(text or "").replace(";", ",").split(",") if piece.strip()]
    if not pieces:
        raise SaeuronError("give at least one seed (e.g. 1, 2, 3)")
    return [optional_int("seed", piece) for piece in pieces]


def read_recipe(ex: Explorer, prompt, seed, steps, guidance, interventions) -> Recipe:
    """The fields as a recipe; numbers are passed on as given (2.5 steps is refused, not rounded)."""
    return ex.session.recipe(prompt, seed, steps, guidance, interventions)  # the JSON is parsed in the same check


def prompt_warning(ex: Explorer, prompt) -> str:
    words = unknown_words(ex.session.pipe.tokenizer, prompt) if isinstance(prompt, str) else []
    if not words:
        return ""
    return f"⚠️ Not in the model's vocabulary (the model has not learned them): {', '.join(repr(w) for w in words)}"


def mask_canvas(image):
    """The steering mask's canvas with ``image`` (the generated image) under it, nothing painted."""
    if image is None:
        return gr.skip()
    return {
        "background": np.asarray(image.convert("RGBA").resize((DISPLAY_SIDE, DISPLAY_SIDE))),
        "layers": [],
        "composite": None,
    }


def wire(ex: Explorer, p: GeneratePanel, recipe_outputs: list, steer_mask=None) -> None:
    recipe_inputs = [p.prompt, p.seed, p.steps, p.guidance, p.interventions]

    @gpu
    @ui_errors
    def generate(prompt, seed, steps, guidance, interventions, request: gr.Request):
        """The unedited and the edited image, their difference and a note, then the recipe. A
        request that fails clears the old images and says why next to them (and in a toast)."""
        try:
            recipe = read_recipe(ex, prompt, seed, steps, guidance, interventions)
            if warning := prompt_warning(ex, prompt):
                gr.Warning(warning)
            yield from generated_images(recipe, request)
        except Exception as e:
            error = e if isinstance(e, gr.Error) else _as_ui_error(e)
            yield None, None, None, f"**Generate failed:** {error.message}", gr.skip(), gr.skip(), gr.skip()
            raise error from None

    def generated_images(recipe, request):
        steps = recipe.steps
        for update in ex.editor.stream(recipe):
            if isinstance(update, Preview):
                yield (
                    gr.skip(),
                    served(upscale(update.image, DISPLAY_SIDE)),
                    gr.skip(),
                    f"Step {update.step + 1} of {steps}…",
                    gr.skip(),
                    gr.skip(),
                    gr.skip(),
                )
                continue
            recipe = update.recipe
            note = (
                f"Largest pixel change: {update.max_difference:.1%} (mean over channels)."
                if recipe.interventions
                else "No interventions: the two images are the same."
            )
            recipe_json = recipe_to_json(recipe)
            yield (
                served(upscale(update.before, DISPLAY_SIDE), recipe_to_json(recipe.with_interventions(()))),
                served(upscale(update.after, DISPLAY_SIDE), recipe_json),
                served(upscale(update.difference, DISPLAY_SIDE)),
                note,
                recipe_json,
                page_url(request) + "?" + recipe_to_query(recipe),
                recipe_to_python(recipe, ex.session.sources.defaults),
            )

    @gpu
    @ui_errors
    def row_effects(prompt, seed, steps, guidance, interventions):
        """What each intervention did: its features' activation and the judge's verdict, unedited
        vs edited (a table, one row per intervention), and the judge's overall verdict."""
        rows, overall = handles.row_effects(ex.session, read_recipe(ex, prompt, seed, steps, guidance, interventions))
        return pd.DataFrame([r.cells() for r in rows], columns=handles.EFFECT_COLUMNS), overall

    intervention_editor.wire(ex, p)

    def features_at(prompt, seed, steps, guidance, interventions, point, step, x, y):
        height, width = ex.session.size
        factor = upscale_factor(min(height, width), DISPLAY_SIDE)  # the shown image, as ``upscale`` enlarged it
        recipe = read_recipe(ex, prompt, seed, steps, guidance, interventions)
        return ex.editor.features_at(recipe, point, step, x, y, (width * factor, height * factor))

    @gpu
    @ui_errors
    def features_at_click(prompt, seed, steps, guidance, interventions, point, step, evt: gr.SelectData):
        if evt is None or not evt.index:
            raise SaeuronError("click a patch of the edited image")
        found = features_at(prompt, seed, steps, guidance, interventions, point, step, *evt.index[:2])
        return pd.DataFrame([[f.feature, sig3(f.activation), f.top_concept] for f in found], columns=ACTIVE_COLUMNS)

    @gpu
    @ui_errors
    def features_at_patch(
        prompt: str,
        seed: int,
        steps: int,
        guidance: float,
        interventions: str,
        point: str,
        step: int,
        x: float,
        y: float,
    ) -> list[dict]:
        """Features active at pixel (x, y) of the 256-px edited image, at denoising ``step``:
        [{"feature", "activation", "top_concept"}], strongest first."""
        return [
            {"feature": f.feature, "activation": f.activation, "top_concept": f.top_concept}
            for f in features_at(prompt, seed, steps, guidance, interventions, point, step, x, y)
        ]

    def follow_steps(steps, step):
        """The patch inspector's step range follows the generation's steps."""
        try:
            last = max(int(steps) - 1, 0)
        except (TypeError, ValueError):
            return gr.skip()
        return gr.Slider(minimum=0, maximum=max(last, 1), value=min(int(step or 0), last) if step is not None else last)

    @ui_errors
    def ablate_row(current, point, table, evt: gr.SelectData):
        return append_intervention(current, ScaleFeatures((int(table.iloc[evt.index[0], 0]),), 0.0, None, point))

    # no validator: its messages would leave the old images on screen (and the interventions'
    # message inside the collapsed JSON accordion); generate itself clears them and says why
    p.generate_button.click(lambda: (None, ""), None, [p.effects, p.verdict], api_visibility="private", queue=False)

    # The button's event never ends in an error: gradio would mark every output with a bare "Error"
    # badge. A failure clears the images, says why in the note above them and in a warning toast.
    # API clients get the same handler as an endpoint that raises (a hidden trigger's event).
    def generate_in_page(prompt, seed, steps, guidance, interventions, request: gr.Request):
        try:
            yield from generate(prompt, seed, steps, guidance, interventions, request)
        except gr.Error as e:
            gr.Warning(e.message)

    def row_effects_in_page(prompt, seed, steps, guidance, interventions):
        try:
            return row_effects(prompt, seed, steps, guidance, interventions)
        except gr.Error as e:
            return None, f"**What each row did: failed:** {e.message}"

    generate_outputs = [p.before, p.after, p.difference, p.note, *recipe_outputs]
    generated = p.generate_button.click(
        generate_in_page,
        recipe_inputs,
        generate_outputs,
        api_visibility="private",
        concurrency_id="unet",
        concurrency_limit=8,
        show_progress="hidden",
    )  # progress: the step previews
    generated.success(
        row_effects_in_page, recipe_inputs, [p.effects, p.verdict], api_visibility="private", concurrency_id="unet"
    )
    api_trigger = gr.Button(visible=False)
    api_trigger.click(
        generate, recipe_inputs, generate_outputs, api_name="generate", concurrency_id="unet", concurrency_limit=8
    ).success(row_effects, recipe_inputs, [p.effects, p.verdict], api_name="row_effects", concurrency_id="unet")
    generated.success(lambda before, after: (before, after), [p.before, p.after], p.compare, api_visibility="private")

    @gpu
    @ui_errors
    def feature_in_image(prompt, seed, steps, guidance, interventions, point, feature):
        """The feature's activation map over the generated (edited) image at each step (HTML)."""
        found = ex.editor.feature_in_image(
            read_recipe(ex, prompt, seed, steps, guidance, interventions), point, optional_int("feature id", feature)
        )
        return cardview.steps_html(found)

    @gpu
    @ui_errors
    def compare_seeds(prompt, seed, steps, guidance, interventions, seeds):
        """Before / after / difference of the same recipe at several seeds (HTML table)."""
        return cardview.seeds_html(
            ex.editor.seeds(read_recipe(ex, prompt, seed, steps, guidance, interventions), read_seeds(seeds))
        )

    locate_checks = {
        6: lambda v: (
            optional_int("feature id", v[6]) is None
            or ex.features.check_feature(v[5], optional_int("feature id", v[6]))
        )
    }
    p.locate_button.click(
        feature_in_image,
        [*recipe_inputs, p.patch_point, p.locate_feature],
        p.feature_in_image,
        api_name="feature_in_image",
        concurrency_id="unet",
        validator=validator(locate_checks),
    )
    p.seeds_button.click(
        compare_seeds,
        [*recipe_inputs, p.seeds],
        p.seeds_grid,
        api_name="compare_seeds",
        concurrency_id="unet",
        validator=validator(
            {5: lambda v: [check_int("seed", s, 0, ex.session.limits.max_seed) for s in read_seeds(v[5])]}
        ),
    )
    if steer_mask is not None:  # the mask is painted over the image being steered
        generated.success(mask_canvas, p.before, steer_mask, api_visibility="private")
    p.after.select(
        features_at_click,
        [*recipe_inputs, p.patch_point, p.patch_step],
        p.active,
        api_visibility="private",
        concurrency_id="unet",
    )
    gr.api(features_at_patch, api_name="features_at_patch", concurrency_id="unet")
    p.steps.change(follow_steps, [p.steps, p.patch_step], p.patch_step, api_visibility="private")
    p.prompt.change(lambda prompt: prompt_warning(ex, prompt), p.prompt, p.prompt_note, api_visibility="private")
    p.active.select(ablate_row, [p.interventions, p.patch_point, p.active], p.interventions, api_visibility="private")
