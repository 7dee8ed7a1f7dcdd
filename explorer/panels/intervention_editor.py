"""The intervention list: its JSON text, the editable table kept in step with it (toggle, edit,
delete, clear) and the concept handles that add a concept's removal or adding to it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import gradio as gr
import pandas as pd

from saeuron_core.errors import SaeuronError

from .. import handles
from .. import intervention_table as table
from ..context import Explorer
from ..formatting import optional_number
from ..intervention_table import parse_interventions
from ..recipes import intervention_to_dict
from . import ui_errors, validator

if TYPE_CHECKING:
    from .generate import GeneratePanel


def format_interventions(interventions) -> str:
    return json.dumps([intervention_to_dict(iv) for iv in interventions], indent=1)


def append_intervention(current: str, new) -> str:
    return format_interventions([*parse_interventions(current), new])


def _as_given(concept):
    return concept


def handle_adder(ex: Explorer, action: str, read_concept=_as_given):
    """The event that adds the concept handle ``action`` ("remove" / "add") to the list:
    (current JSON, concept, strength) -> (new JSON, message)."""

    @ui_errors
    def add(current, concept, strength):
        new = handles.concept_handle(ex.session, read_concept(concept), action, optional_number("strength", strength))
        combined, message = handles.checked_addition(ex.session, parse_interventions(current), new)
        gr.Info(message)
        return format_interventions(combined), message

    return add


def handle_checks(ex: Explorer, action: str, read_concept=_as_given):
    """``handle_adder``'s validator: the message at the strength ("add") or concept ("remove")."""

    def ok(v):
        new = handles.concept_handle(ex.session, read_concept(v[1]), action, optional_number("strength", v[2]))
        handles.checked_addition(ex.session, parse_interventions(v[0]), new)

    return validator({2 if action == "add" else 1: ok})


def rows_of(frame) -> list[list]:
    return [] if frame is None else frame.values.tolist()


def wire(ex: Explorer, p: GeneratePanel) -> None:
    """The Generate panel's intervention table, JSON, handle buttons and clear / delete."""

    def unit(point, feature):
        return ex.features.typical_top_activation(point, feature)

    handle_inputs = [p.interventions, p.handle_concept, p.handle_strength]
    p.remove_button.click(
        handle_adder(ex, "remove"),
        handle_inputs,
        [p.interventions, p.handle_note],
        api_name="add_remove_concept",
        validator=handle_checks(ex, "remove"),
    )
    p.add_button.click(
        handle_adder(ex, "add"),
        handle_inputs,
        [p.interventions, p.handle_note],
        api_name="add_add_concept",
        validator=handle_checks(ex, "add"),
    )

    @ui_errors
    def sync_editor(text, frame):
        rows = table.synced_rows(text, rows_of(frame), unit)
        return gr.skip() if rows is None else pd.DataFrame(rows, columns=table.COLUMNS)

    @ui_errors
    def apply_edits(frame):
        rows, text = table.edited(rows_of(frame), unit)
        return pd.DataFrame(rows, columns=table.COLUMNS), text

    def select_row(evt: gr.SelectData):
        return evt.index[0] if evt is not None and evt.index else None

    @ui_errors
    def delete_row(frame, index):
        rows, text = table.without(rows_of(frame), index, unit)
        return pd.DataFrame(rows, columns=table.COLUMNS), text, None

    def follow_last_row(text):
        """'Where a feature fires' and the patch list look at the last row's own hook point: a
        feature is (hook point, id), and a feature id typed there means that point's feature."""
        try:
            ivs = parse_interventions(text)
        except SaeuronError:
            return gr.skip()
        return ivs[-1].point if ivs else gr.skip()

    p.clear_button.click(lambda: "[]", None, p.interventions, api_name="clear_interventions").then(
        lambda: pd.DataFrame(columns=table.COLUMNS), None, p.editor, api_visibility="private"
    )
    p.interventions.change(sync_editor, [p.interventions, p.editor], p.editor, api_visibility="private")
    p.interventions.change(follow_last_row, p.interventions, p.patch_point, api_visibility="private")
    p.editor.input(apply_edits, p.editor, [p.editor, p.interventions], api_visibility="private")
    p.editor.select(select_row, None, p.selected_row, api_visibility="private")
    p.delete_button.click(
        delete_row, [p.editor, p.selected_row], [p.editor, p.interventions, p.selected_row], api_visibility="private"
    )
