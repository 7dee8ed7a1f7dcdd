"""Feature-level edits of U-Net block outputs through an SAE: unlearning, scaling, steering.

Each intervention maps the SAE code z of every token to an edited code z'; the block output
becomes ``x + (z' - z) @ W_dec``, which touches only the edited latents' decoder rows and leaves
x exactly as it was at every token where nothing changed (METHOD section 4). When no token
changes, the hook hands back the block's own output object.

Two clocks, on purpose:

- ``StepWindow`` counts *step indices* (0 = the first denoising step of the current generation,
  as defined in ``hooks``): "the first 10 steps" means the same for any scheduler spacing.
- Concept statistics are looked up by *timestep*: the statistics' step whose timestep is nearest
  to the current one, so statistics gathered with 50 steps serve a 20-step generation.

Interventions apply in list order; edits of the same latent compose. By default they edit both
CFG halves of the batch.

The dataclasses live in ``intervention_specs``, their compiled edits and the hook in
``intervention_hook``; this module is the public import path for both.
"""

from .intervention_hook import AddConceptEdit, PointEditor, ReplaceEdit, UnlearnEdit, apply_interventions
from .intervention_specs import (
    PROMPT_ADD_MAX,
    REPLACE_LATENTS,
    REPLACE_TARGETS,
    REROUTE_UNTRUSTED,
    AddConcept,
    Intervention,
    PromptAdd,
    Replace,
    Reroute,
    ScaleFeatures,
    Steer,
    StepWindow,
    Unlearn,
)

__all__ = [
    "PROMPT_ADD_MAX",
    "PromptAdd",
    "REPLACE_LATENTS",
    "REPLACE_TARGETS",
    "REROUTE_UNTRUSTED",
    "AddConcept",
    "AddConceptEdit",
    "Intervention",
    "PointEditor",
    "Replace",
    "ReplaceEdit",
    "Reroute",
    "ScaleFeatures",
    "Steer",
    "StepWindow",
    "Unlearn",
    "UnlearnEdit",
    "apply_interventions",
]
