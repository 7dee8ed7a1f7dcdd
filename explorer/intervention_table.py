"""The intervention editor's table: one row per intervention with an on / off toggle and editable
features, value and step window. The recipe's JSON list holds the rows that are on; the table
also keeps the ones switched off, so toggling loses nothing.

Steering values are shown and edited in the one steering unit of the explorer: multiples of the
feature's typical top activation ("4x"), the unit of the card (and of ``AddConcept`` rows of
older recipes); the JSON keeps ``Steer``'s absolute strength. An "add" row (``PromptAdd``) has no
feature unit: its value is the strength of the rewritten prompt's blocks (1: their own output).
``unit(point, feature)`` gives the typical top activation (None: no unit known, absolute values
are shown)."""

from __future__ import annotations

import json
from typing import Callable

from saeuron_core.errors import SaeuronError
from saeuron_core.interventions import PROMPT_ADD_MAX

from .formatting import optional_int, optional_number, sig3
from .recipes import intervention_from_dict, intervention_to_dict, interventions_from_json

COLUMNS = ["on", "kind", "point", "features", "value", "from step", "until step", "mask", "spec"]
DATATYPES = ["bool", "str", "str", "str", "str", "str", "str", "str", "str"]
KIND = {
    "ScaleFeatures": "scale",
    "Steer": "steer",
    "Unlearn": "remove",
    "Reroute": "remove",
    "PromptAdd": "add",
    "AddConcept": "add",
}
BY_STRENGTH = ("PromptAdd", "AddConcept")
"""Concept rows whose value (the strength) the table edits; their concepts are not edited."""
NOT_BY_VALUE = ("Unlearn", "Reroute")
"""Rows whose value the table shows but does not edit (their spec holds it: tau and gamma, or
the anchor and detection share)."""
Unit = Callable[[str, int], float]


def what_each_does(rerouted: str = "", scaled: str = "") -> str:
    """What each kind of row does, one paragraph. ``rerouted`` / ``scaled``: the concepts whose
    default removal is counterfactual rerouting / SAeUron's scaling ("styles", "dots, rings";
    empty: none; see ``handles.default_removals``)."""
    scaling = (
        "at each step the concept's selected features, where they fire above their mean, "
        "are multiplied by gamma x the concept's mean activation (a large negative multiplier, not a zeroing)"
    )
    if rerouted:
        remove = (
            f"**remove** is the default removal: for {rerouted}, counterfactual rerouting: from the step where "
            "the concept's selected SAE features detect it, the cross-attention blocks see its word moved onto "
            "an anchor concept's" + (f"; for {scaled}, SAeUron's scaling: {scaling}; " if scaled else "; ")
        )
    else:
        remove = f"**remove** is SAeUron's unlearning: {scaling}; "
    return (
        "**ablate** sets the chosen features to 0 where they fire "
        "(a concept usually survives: other features carry it); "
        "**scale** multiplies them by the factor where they fire; "
        "**steer** adds the feature's decoder direction at every token (or the painted ones), "
        "in multiples of its typical top activation; "
        + remove
        + "**add** rewrites the prompt read by cross-attention: every cross-attention block reads the prompt "
        "with the concept written in (another concept of its kind named there is replaced by it, else "
        '"in X style" or "with X" is added) and its output becomes out + strength x (rewritten - out), '
        f"conditional CFG half; strength 1 is the rewritten prompt's own output, at most {PROMPT_ADD_MAX:g}."
    )


def _steer_unit(spec: dict, unit: Unit | None) -> float | None:
    """The unit a Steer row's value is shown in (single-feature rows with a known, non-zero one)."""
    if unit is None or len(spec["features"]) != 1:
        return None
    typical = unit(spec["point"], int(spec["features"][0]))
    return typical if typical and typical > 0 else None


def row_of(spec: dict, on: bool = True, unit: Unit | None = None) -> list:
    """A table row for one intervention dict (``spec``: its JSON, the row's source of truth for
    what the table does not edit: the point, a mask, Unlearn's tau and gamma, Reroute's anchor)."""
    kind = KIND[spec["type"]]
    if spec["type"] == "Reroute":
        anchor = spec["anchor"] if isinstance(spec["anchor"], str) else "/".join(dict.fromkeys(spec["anchor"]))
        features, value = ", ".join(spec["concepts"]), f"rerouted to {anchor}, detect {sig3(spec['detect'])}"
    elif kind == "remove":
        features, value = ", ".join(spec["concepts"]), f"tau {sig3_list(spec['tau'])}, gamma {sig3_list(spec['gamma'])}"
    elif spec["type"] == "PromptAdd":
        features, value = ", ".join(spec["concepts"]), sig3(spec["strength"])
    elif kind == "add":
        features, value = ", ".join(spec["concepts"]), f"{sig3(spec['strength'])}x"
    else:
        features = ", ".join(str(f) for f in spec["features"])
        if kind == "scale":
            value = sig3(spec["factor"])
            kind = "ablate" if spec["factor"] == 0 else kind
        else:
            typical = _steer_unit(spec, unit)
            value = sig3(spec["strength"]) if typical is None else f"{sig3(spec['strength'] / typical)}x"
    start, stop = spec.get("steps") or [0, None]
    mask = spec.get("mask")
    mask_text = "everywhere" if kind in ("steer", "add") and not mask else (f"{len(mask)} tokens" if mask else "")
    if spec["type"] == "PromptAdd":
        blocks = spec.get("blocks") or []
        where = f"{len(blocks)} blocks" if len(blocks) > 1 else blocks[0] if blocks else "every block"
        mask_text = f"prompt rewritten, {where}"
    return [
        bool(on),
        kind,
        spec["point"],
        features,
        value,
        str(start),
        "" if stop is None else str(stop),
        mask_text,
        json.dumps(spec, separators=(",", ":")),
    ]


def sig3_list(value) -> str:
    return "/".join(sig3(v) for v in value) if isinstance(value, list) else sig3(value)


def parse_interventions(text: str) -> list:
    """The interventions in an editable JSON list (what recipes hold), checked one by one."""
    return list(interventions_from_json(text))


def _value(row: list, number: int) -> float:
    text = str(row[4]).strip().removesuffix("x").strip() if row[4] is not None else None
    value = optional_number(f"row {number} value", text)
    if value is None:
        raise SaeuronError(f"row {number}: enter a value (scale factor or steering strength)")
    return value


def spec_of(row: list, number: int, unit: Unit | None = None) -> dict:
    """The intervention dict of an edited row (``number``: 1-based, for messages)."""
    try:
        spec = json.loads(row[8])
    except (TypeError, json.JSONDecodeError):
        raise SaeuronError(
            f"row {number}: not an intervention of this editor (add rows from the feature card)"
        ) from None
    if spec.get("type") in BY_STRENGTH:
        spec["strength"] = _value(row, number)
    elif spec.get("type") not in NOT_BY_VALUE:
        try:
            spec["features"] = [int(f) for f in str(row[3]).replace(",", " ").split()]
        except ValueError:
            raise SaeuronError(
                f"row {number}: features must be whole numbers separated by commas, got {row[3]!r}"
            ) from None
        if not spec["features"]:
            raise SaeuronError(f"row {number}: no feature")
        value = _value(row, number)
        if spec["type"] == "ScaleFeatures":
            spec["factor"] = value
        else:
            typical = _steer_unit(spec, unit)
            spec["strength"] = value if typical is None else value * typical
    start = optional_int(f"row {number} from step", row[5]) or 0
    stop = optional_int(f"row {number} until step", row[6])
    if stop is not None and stop <= start:
        raise SaeuronError(f"row {number}: until step must be after from step ({start}), got {stop}")
    spec["steps"] = None if start == 0 and stop is None else [start, stop]
    return intervention_to_dict(intervention_from_dict(spec))  # the same checks as a recipe's


def edited(rows: list[list], unit: Unit | None = None) -> tuple[list[list], str]:
    """After the user edited the table: its rows redrawn from their checked specs, and the JSON
    list of the rows that are on."""
    specs = [(spec_of(row, i, unit), _on(row[0])) for i, row in enumerate(rows, 1)]
    return [row_of(spec, on, unit) for spec, on in specs], json.dumps([spec for spec, on in specs if on], indent=1)


def without(rows: list[list], index: int | None, unit: Unit | None = None) -> tuple[list[list], str]:
    """The table without row ``index`` (0-based) and the JSON of the remaining rows that are on."""
    if index is None or not 0 <= index < len(rows):
        raise SaeuronError("select a row of the table first (click any of its cells)")
    return edited([r for i, r in enumerate(rows) if i != index], unit)


def _on(value) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"))


def synced_rows(text: str, rows: list[list], unit: Unit | None = None) -> list[list] | None:
    """The table after the JSON changed: None when the JSON is just the table's rows that are on
    (the change came from the table), the table plus new rows when the JSON only grew at the end
    (an intervention was added), else the JSON's rows (an import, a hand edit, a clear)."""
    new = [intervention_to_dict(iv) for iv in parse_interventions(text)]
    try:
        current = [json.loads(r[8]) for r in rows if _on(r[0])]
    except (TypeError, json.JSONDecodeError):
        current = None
    if current is not None and new == current:
        return None
    if current is not None and new[: len(current)] == current:
        return [list(r) for r in rows] + [row_of(spec, unit=unit) for spec in new[len(current) :]]
    return [row_of(spec, unit=unit) for spec in new]
