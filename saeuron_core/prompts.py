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
