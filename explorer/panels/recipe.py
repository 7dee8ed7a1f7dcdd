"""Recipe panel: the last output's recipe as JSON, a URL that restores it, a Python snippet; import."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..context import Explorer
from ..recipes import Recipe, recipe_from_json, recipe_from_query
from . import ui_errors
from .generate import GeneratePanel
from .intervention_editor import format_interventions


@dataclass
class RecipePanel:
    recipe_json: gr.Code
    url: gr.Textbox
    python: gr.Code
    imported: gr.Code
    import_button: gr.Button

    @property
    def outputs(self) -> list:
        return [self.recipe_json, self.url, self.python]


def layout(ex: Explorer) -> RecipePanel:
    recipe_json = gr.Code(
        language="json", label="Recipe of the last generated image", interactive=False, elem_id="recipe-json"
    )
    url = gr.Textbox(label="URL that restores it", buttons=["copy"], interactive=False)
    python = gr.Code(language="python", label="Reproduce it with saeuron_core", interactive=False)
    imported = gr.Code(language="json", label="Paste a recipe to import", interactive=True, elem_id="recipe-import")
    import_button = gr.Button("Import recipe", elem_id="import-recipe")
    return RecipePanel(recipe_json, url, python, imported, import_button)


def fields_of(recipe: Recipe) -> tuple:
    return recipe.prompt, recipe.seed, recipe.steps, recipe.guidance, format_interventions(recipe.interventions)


def wire(ex: Explorer, p: RecipePanel, generate: GeneratePanel, demo: gr.Blocks) -> None:
    generate_inputs = [generate.prompt, generate.seed, generate.steps, generate.guidance, generate.interventions]

    @ui_errors
    def import_recipe(text):
        return fields_of(ex.session.complete(recipe_from_json(text)))

    @ui_errors
    def restore_from_url(request: gr.Request):
        src = ex.session.sources
        recipe = recipe_from_query(dict(request.query_params), src.model, src.sae, src.stats) if request else None
        if recipe is None:
            return tuple(gr.skip() for _ in generate_inputs)
        return fields_of(ex.session.complete(recipe))

    p.import_button.click(import_recipe, p.imported, generate_inputs, api_name="import_recipe")
    restored = demo.load(restore_from_url, None, generate_inputs, api_name="restore_from_url")
    # a URL with a recipe regenerates its image: once the fields are filled, the browser opens
    # the Generate tab and presses Generate (the same event, checks and messages as a click)
    restored.success(None, None, None, js=REGENERATE_JS)


REGENERATE_JS = """() => {
  if (!new URLSearchParams(window.location.search).has("prompt")) return [];
  const tab = [...document.querySelectorAll("button[role=tab]")].find((b) => b.textContent.trim() === "Generate");
  if (tab) tab.click();
  let tries = 0;
  const press = () => {
    const button = document.getElementById("generate");
    if (button && button.offsetParent !== null) { button.click(); return; }
    if (++tries < 100) setTimeout(press, 100);
  };
  press();
  return [];
}"""
