"""The prompt template of object x style concept vocabularies (UnlearnCanvas, MiniCanvas).

The paper evaluates with "An image of {object} in {style} style." (and "An image of {object}."
without a style). The benchmark builds its prompts with it and the weight-editing baselines
(ESD, UCE) build a concept's prompts with it on any model that declares such a vocabulary, so
it lives here, below both.
"""

from __future__ import annotations

import re


def concept_prompt(object_name: str, style: str | None = None) -> str:
    """ "An image of {object} in {style} style.", or "An image of {object}." without a style."""
    return f"An image of {object_name}." if style is None else f"An image of {object_name} in {style} style."


_TEMPLATES = {
    "style": ("An image in {} style.", "A painting in {} style.", "An image of a house in {} style.", "{}"),
    "object": ("An image of {}.", "A photo of {}.", "A painting of {}.", "{}"),
}
"""Reference prompts of a concept on a model without a declared object x style vocabulary."""


_PHRASES = {"style": "in {} style", "object": "with {}"}
"""How a concept of each kind is written into a prompt that names none of its kind."""


def names(text: str, concept: str) -> bool:
    """Whether ``text`` names ``concept`` as a word (any case)."""
    return re.search(rf"\b{re.escape(concept)}\b", text, flags=re.IGNORECASE) is not None


def names_another(text: str, kind: str, concept: str, vocabulary) -> bool:
    """Whether ``text`` names another concept of ``kind`` (the vocabulary's) and not ``concept``."""
    return not names(text, concept) and any(names(text, c) for c in vocabulary.get(kind, ()) if c != concept)


def written_in(text: str, kind: str, concept: str, vocabulary) -> str:
    """``text`` naming ``concept`` (of ``kind``): unchanged when it names it already; else every
    other concept of the kind it names (the vocabulary's) is replaced by it, longest name first;
    else the kind's phrase goes before the closing punctuation ("An image of star." -> "An image
    of star in dots style.")."""
    if names(text, concept):
        return text
    for other in sorted(vocabulary.get(kind, ()), key=len, reverse=True):
        if other != concept and names(text, other):
            return re.sub(rf"\b{re.escape(other)}\b", concept, text, flags=re.IGNORECASE)
    body, end = re.match(r"(.*?)(\s*[.!?]*\s*)$", text, flags=re.DOTALL).groups()
    phrase = _PHRASES.get(kind, _PHRASES["object"]).format(concept)
    return f"{body} {phrase}{end}" if body else phrase + end


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
