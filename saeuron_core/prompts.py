"""The prompt template of object x style concept vocabularies (UnlearnCanvas, MiniCanvas).

The paper evaluates with "An image of {object} in {style} style." (and "An image of {object}."
without a style). The benchmark builds its prompts with it and the weight-editing baselines
(ESD, UCE) build a concept's prompts with it on any model that declares such a vocabulary, so
it lives here, below both.
"""

from __future__ import annotations


def concept_prompt(object_name: str, style: str | None = None) -> str:
    """ "An image of {object} in {style} style.", or "An image of {object}." without a style."""
    return f"An image of {object_name}." if style is None else f"An image of {object_name} in {style} style."


_TEMPLATES = {
    "style": ("An image in {} style.", "A painting in {} style.", "An image of a house in {} style.", "{}"),
    "object": ("An image of {}.", "A photo of {}.", "A painting of {}.", "{}"),
}
"""Reference prompts of a concept on a model without a declared object x style vocabulary."""


def reference_prompts(kind: str, concept: str, vocabulary) -> list[str]:
    """Prompts that name ``concept`` (of ``kind``) the way the model is prompted, in a fixed
    order, so that the same call for another concept of the kind gives the matching prompts with
    only the concept's word changed: with a vocabulary, the paper's template over the other kind's
    names; else generic templates."""
    objects, styles = tuple(vocabulary.get("object", ())), tuple(vocabulary.get("style", ()))
    if kind == "style" and objects:
        return [concept_prompt(o, concept) for o in objects]
    if kind == "object" and styles:
        return [concept_prompt(concept, s) for s in styles] + [concept_prompt(concept)]
    return [t.format(concept) for t in _TEMPLATES.get(kind, _TEMPLATES["object"])]


def anchor_prompt(kind: str, concept: str) -> str:
    """A prompt for ``concept`` alone, with no concept of another kind: "An image in {style}
    style." or "An image of {object}."."""
    return f"An image in {concept} style." if kind == "style" else f"An image of {concept}."
