"""Caps on request inputs, so that one request cannot exhaust a public server."""

from __future__ import annotations

from dataclasses import dataclass

from saeuron_core.errors import SaeuronError


@dataclass(frozen=True)
class Limits:
    max_steps: int = 50
    max_prompt_chars: int = 300
    max_seed: int = 2**32 - 1
    max_guidance: float = 30.0
    max_interventions: int = 12
    max_features_per_intervention: int = 32
    max_scale_factor: float = 50.0
    """|factor| of ScaleFeatures."""
    max_steer_strength: float = 500.0
    """|strength| of Steer."""
    max_steer_multiple: float = 100.0
    """|strength| of a steering row in its unit, multiples of the feature's typical top
    activation (the card's unit, and that of ``AddConcept`` rows of recipes made before the add
    handle rewrote the prompt; checked when a row is added)."""
    max_gamma: float = 100.0
    """|gamma| of Unlearn."""
    max_grid_prompts: int = 8
    """Target + retained prompts of one unlearn grid."""
    max_ranked_rows: int = 200
    max_seeds: int = 8
    """Seeds of one several-seeds comparison."""
    train_esd: bool = True
    """Allow ESD fine-tuning on request (tens of seconds holding the U-Net); a public server may
    turn it off and serve only precomputed ESD edits."""


def check_prompt(prompt: str, limits: Limits) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise SaeuronError("the prompt is empty")
    if len(prompt) > limits.max_prompt_chars:
        raise SaeuronError(f"the prompt has {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
    return prompt.strip()


def check_int(name: str, value, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SaeuronError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise SaeuronError(f"{name} must be in [{low}, {high}], got {value}")
    return value


def check_float(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise SaeuronError(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise SaeuronError(f"{name} must be in [{low:g}, {high:g}], got {value:g}")
    return float(value)
