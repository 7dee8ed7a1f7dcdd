"""What a recipe may hold, checked once where a request enters: interventions this bundle and
U-Net can apply, within the session's caps, one line naming each problem before any work."""

from __future__ import annotations

from typing import Callable, Sequence

from saeuron_core.errors import SaeuronError
from saeuron_core.hooks import normalize_point
from saeuron_core.interventions import (
    AddConcept,
    Intervention,
    PromptAdd,
    Replace,
    Reroute,
    ScaleFeatures,
    Steer,
    Unlearn,
)
from saeuron_core.unlearning import SaeBundle

from .limits import Limits, check_float, check_int, check_prompt
from .recipes import CheckedRecipe, Recipe, interventions_from_json

EDITABLE = (Unlearn, Reroute, PromptAdd, AddConcept, ScaleFeatures, Steer)
"""The intervention types a recipe holds (what the explorer's table edits and recipes serialise)."""

Blocks = Callable[[], Sequence[str]]
"""The U-Net's cross-attention blocks, the mid block's included (where a ``Reroute`` may reroute
and a ``PromptAdd`` may rewrite the prompt), asked for only when a recipe names some: a session
loads its pipeline lazily."""


def check_interventions(
    interventions, bundle: SaeBundle, limits: Limits, cross_attention: Blocks
) -> tuple[Intervention, ...]:
    """Interventions that this bundle can apply and that stay within ``limits`` (given as objects,
    or as the JSON list a recipe holds: parsed here, with the rest of the request)."""
    interventions = interventions_from_json(interventions) if isinstance(interventions, str) else tuple(interventions)
    for i, iv in enumerate(interventions, 1):
        if isinstance(iv, Replace):  # a defaults table's "replace" variant: the library applies it, the app does not
            raise SaeuronError(
                f"intervention {i} is a Replace (the defaults table's replace variant), which the explorer cannot "
                "show or edit; type tau and gamma for the paper's removal, or use a table with reroute blocks"
            )
        if not isinstance(iv, EDITABLE):  # e.g. a client that sent a list of JSON strings
            raise SaeuronError(
                f"intervention {i} is a {type(iv).__name__}, not an intervention: send the JSON list as one string"
            )
    if len(interventions) > limits.max_interventions:
        raise SaeuronError(f"{len(interventions)} interventions; the limit is {limits.max_interventions}")
    for iv in interventions:
        if iv.point not in bundle.saes:
            raise SaeuronError(f"no SAE for hook point {iv.point!r}; this app has SAEs for {', '.join(bundle.saes)}")
        if isinstance(iv, Unlearn):
            for concept, _tau, gamma in iv.per_concept():
                bundle.kind_of(concept)
                check_float("gamma", gamma, -limits.max_gamma, limits.max_gamma)
            continue
        if isinstance(iv, Reroute):
            check_reroute(iv, bundle, cross_attention)
            continue
        if isinstance(iv, PromptAdd):  # its strength was checked when it was made: (0, PROMPT_ADD_MAX]
            check_prompt_add(iv, bundle, cross_attention)
            continue
        if isinstance(iv, AddConcept):  # a recipe from before PromptAdd
            for concept in iv.concepts:
                bundle.kind_of(concept)
            check_float(
                "concept strength (x typical top activation)",
                iv.strength,
                -limits.max_steer_multiple,
                limits.max_steer_multiple,
            )
            continue
        n_latents = bundle.saes[iv.point].num_latents
        if len(iv.features) > limits.max_features_per_intervention:
            raise SaeuronError(
                f"{len(iv.features)} features in one intervention; the limit is {limits.max_features_per_intervention}"
            )
        for f in iv.features:
            check_int("feature id", f, 0, n_latents - 1)
        if isinstance(iv, ScaleFeatures):
            check_float("scale factor", iv.factor, -limits.max_scale_factor, limits.max_scale_factor)
        else:
            check_float("steering strength", iv.strength, -limits.max_steer_strength, limits.max_steer_strength)
    return interventions


def check_reroute(iv: Reroute, bundle: SaeBundle, cross_attention: Blocks) -> None:
    """A ``Reroute`` this bundle and U-Net can run: its concepts of one kind, each anchor
    "nearest" or another known concept of that kind that is not removed too, its blocks
    cross-attention blocks of the U-Net (named once each). One line per problem, before any work."""
    kind = bundle.kind_of(iv.concepts[0])
    for concept in iv.concepts[1:]:
        if bundle.kind_of(concept) != kind:
            raise SaeuronError(
                f"a Reroute's concepts must be of one kind: {iv.concepts[0]} is a {kind}, "
                f"{concept} a {bundle.kind_of(concept)}"
            )
    same_kind = bundle.stats[iv.point].concepts_of_kind(kind)
    for concept, _tau, anchor in iv.per_concept():
        if anchor == "nearest":
            if not set(same_kind) - set(iv.concepts):
                raise SaeuronError(f"no {kind} is left to reroute {concept} to: every one is removed")
        elif anchor not in same_kind:
            raise SaeuronError(
                f"cannot reroute {concept} to {anchor!r}: not a known {kind}; "
                f"choose one of {', '.join(same_kind)} or 'nearest'"
            )
        elif anchor in iv.concepts:
            raise SaeuronError(f"cannot reroute {concept} to {anchor}: it is removed too")
    _check_blocks(iv, cross_attention)


def check_prompt_add(iv: PromptAdd, bundle: SaeBundle, cross_attention: Blocks) -> None:
    """A ``PromptAdd`` this bundle and U-Net can run: its concepts known and of the kind whose
    statistics are at its point (where the explorer reports their latents), its blocks
    cross-attention blocks of the U-Net (named once each)."""
    for concept in iv.concepts:
        kind = bundle.kind_of(concept)
        points = bundle.points_of_kind.get(kind, ())
        if iv.point not in points:
            raise SaeuronError(
                f"PromptAdd at {iv.point}: {concept} is a {kind}, whose features are at {', '.join(points)}; "
                "give it its own row at that point"
            )
    _check_blocks(iv, cross_attention)


def _check_blocks(iv: Reroute | PromptAdd, cross_attention: Blocks) -> None:
    """``iv.blocks``: cross-attention blocks of the U-Net, each named once."""
    if not iv.blocks:
        return
    known, seen, kind = tuple(cross_attention()), set(), type(iv).__name__
    for block in iv.blocks:
        name = normalize_point(block)
        if name not in known:
            raise SaeuronError(
                f"{kind} block {block!r} is not a cross-attention block of this U-Net; "
                f"its cross-attention blocks: {', '.join(known) or 'none'}"
            )
        if name in seen:
            raise SaeuronError(f"{kind} block {block!r} is named twice")
        seen.add(name)


def check_recipe(recipe: Recipe, bundle: SaeBundle, limits: Limits, cross_attention: Blocks) -> CheckedRecipe:
    steps = check_int("steps", recipe.steps, 1, limits.max_steps)
    interventions = check_interventions(recipe.interventions, bundle, limits, cross_attention)
    for i, iv in enumerate(interventions, 1):
        # a window that starts after the last step would silently do nothing
        if iv.steps is not None and iv.steps.start >= steps:
            raise SaeuronError(
                f"intervention {i} starts at step {iv.steps.start}, "
                f"but the generation has only {steps} steps (0 to {steps - 1})"
            )
    return CheckedRecipe(
        prompt=check_prompt(recipe.prompt, limits),
        seed=check_int("seed", recipe.seed, 0, limits.max_seed),
        steps=steps,
        guidance=check_float("guidance", recipe.guidance, 0.0, limits.max_guidance),
        interventions=interventions,
        model=recipe.model,
        sae=recipe.sae,
        stats=recipe.stats,
    )
