"""The Features panel's edits: the card's "add as ablation / scaling / steering" buttons (step
window, steering strength in the card's unit, painted steering mask) and its concept handles,
each checked against the rows already in the intervention list before it is added."""

from __future__ import annotations

import gradio as gr
import numpy as np

from saeuron_core.errors import SaeuronError
from saeuron_core.interventions import ScaleFeatures, Steer, StepWindow

from .. import handles
from ..context import Explorer
from ..formatting import optional_int, optional_number, sig3
from ..imaging import tokens_from_mask
from ..intervention_table import parse_interventions
from ..limits import check_float
from . import fail, ui_errors, validator
from .features import FeaturesPanel, read_concept, read_feature
from .intervention_editor import format_interventions, handle_adder, handle_checks


def read_window(start, stop) -> StepWindow | None:
    """The step window of the two fields (None: every step); empty "until" means to the last."""
    start = optional_int("from step", start) or 0
    stop = optional_int("until step", stop)
    if start < 0:
        raise SaeuronError(f"from step must be >= 0, got {start}")
    if stop is not None and stop <= start:
        raise SaeuronError(f"until step must be after from step ({start}), got {stop}")
    window = StepWindow(start, stop)
    return None if window == StepWindow() else window


def steering_tokens(painting, stats) -> tuple[int, ...] | None:
    """The tokens painted on the mask canvas (None: nothing painted, steer everywhere)."""
    layers = (painting or {}).get("layers") or []
    painted = [layer[..., 3] for layer in layers if layer is not None and layer.ndim == 3 and layer.shape[2] == 4]
    if not painted or not any(a.any() for a in painted):
        return None
    return tokens_from_mask(np.maximum.reduce(painted), (stats.height, stats.width))


def steering_strength(ex: Explorer, point, feature, multiple) -> float:
    """The absolute strength of ``multiple`` x the feature's typical top activation, within the
    caps (checked here, when the row is added, and said in the card's unit)."""
    multiple = (
        optional_number("steering strength", multiple) if multiple is not None else fail("enter a steering strength")
    )
    if multiple is None:
        fail("enter a steering strength")
    limits = ex.session.limits
    if abs(multiple) > limits.max_steer_multiple:
        fail(
            f"steering strength {multiple:g}x is over the cap of {limits.max_steer_multiple:g}x "
            "(the feature's typical top activation)"
        )
    typical = ex.features.typical_top_activation(point, feature)
    if typical <= 0:
        fail(f"feature {feature} never fired in the statistics: no typical activation to steer by")
    if abs(multiple * typical) > limits.max_steer_strength:
        fail(
            f"steering strength {multiple:g}x is {sig3(multiple * typical)} in absolute terms, over the cap of "
            f"{limits.max_steer_strength:g}: at most {sig3(limits.max_steer_strength / typical)}x for feature {feature}"
        )
    return float(multiple * typical)


def adder(ex: Explorer, kind: str):
    """The event of one add button (``kind``: "ablate", "scale" or "steer"): the list with the
    card's feature added, and a message."""

    @ui_errors
    def add(current, point, feature, factor, strength, start, stop, painting):
        feature = ex.features.check_feature(point, read_feature(feature))
        window = read_window(start, stop)
        if kind == "steer":
            new = Steer(
                (feature,),
                steering_strength(ex, point, feature, strength),
                steering_tokens(painting, ex.features.stats(point)),
                window,
                point,
            )
        else:
            new = ScaleFeatures((feature,), 0.0 if kind == "ablate" else float(factor), window, point)
        combined, message = handles.checked_addition(ex.session, parse_interventions(current), [new])
        gr.Info(message)
        return format_interventions(combined), message

    return add


def addition_ok(ex: Explorer, kind: str, v) -> None:
    """Raises unless the new row fits with the rows already there, within every cap."""
    point, feature = v[1], ex.features.check_feature(v[1], read_feature(v[2]))
    window = read_window(v[5], v[6])
    if kind == "steer":
        try:
            strength = steering_strength(ex, point, feature, v[4])
        except SaeuronError:
            return  # said at the strength field
        new = Steer((feature,), strength, None, window, point)
    else:
        new = ScaleFeatures(
            (feature,),
            0.0 if kind == "ablate" else float(optional_number("scale factor", v[3]) or 0.0),
            window,
            point,
        )
    handles.checked_addition(ex.session, parse_interventions(v[0]), [new])


def add_checks(ex: Explorer, kind: str):
    """``adder``'s validator: each message at the field it is about (indices of ``wire``'s inputs)."""
    limits = ex.session.limits

    def feature_ok(v):
        ex.features.check_feature(v[1], read_feature(v[2]))
        addition_ok(ex, kind, v)  # the message of a row that does not fit goes at the feature id

    def window_ok(v):
        read_window(v[5], v[6])

    def scale_ok(v):
        factor = optional_number("scale factor", v[3]) if v[3] is not None else fail("enter a scale factor")
        check_float("scale factor", factor, -limits.max_scale_factor, limits.max_scale_factor)

    def steer_ok(v):
        steering_strength(ex, v[1], ex.features.check_feature(v[1], read_feature(v[2])), v[4])

    checks = {2: feature_ok, 5: window_ok, 6: window_ok}
    if kind == "scale":
        checks[3] = scale_ok
    if kind == "steer":
        checks[4] = steer_ok
    return validator(checks)


def wire(ex: Explorer, p: FeaturesPanel, interventions: gr.Code) -> None:
    """The card's add buttons and the concept handles, into the Generate panel's list."""
    add_inputs = [interventions, p.point, p.feature, p.factor, p.strength, p.window_start, p.window_stop, p.steer_mask]
    add_outputs = [interventions, p.add_note]
    for kind, button, api_name in (
        ("ablate", p.ablate_button, "add_ablation"),
        ("scale", p.scale_button, "add_scaling"),
        ("steer", p.steer_button, "add_steering"),
    ):
        button.click(adder(ex, kind), add_inputs, add_outputs, api_name=api_name, validator=add_checks(ex, kind))
    handle_inputs = [interventions, p.concept, p.handle_strength]
    for action, button in (("remove", p.remove_button), ("add", p.add_button)):
        button.click(
            handle_adder(ex, action, read_concept),
            handle_inputs,
            [interventions, p.handle_note],
            api_visibility="private",
            validator=handle_checks(ex, action, read_concept),
        )
