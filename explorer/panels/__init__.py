"""One module per panel: each lays out its components (``layout``) and wires its events (``wire``)."""

from __future__ import annotations

import functools
import inspect
import logging
import uuid

import gradio as gr

from saeuron_core.errors import SaeuronError
from saeuron_core.interventions import PROMPT_ADD_MAX

log = logging.getLogger("saeuron.explorer")

ADD_STRENGTH_LABEL = (
    f"Strength of 'add' (1: cross-attention reads the prompt with the concept written in; at most {PROMPT_ADD_MAX:g})"
)
"""The label of both panels' add strength (a ``PromptAdd``'s, no feature unit)."""


def _as_ui_error(e: Exception) -> gr.Error:
    if isinstance(e, SaeuronError):
        return gr.Error(str(e))
    # a bug, not bad input: logged with its traceback, reported in one line, the server keeps serving
    log.exception("internal error in an explorer event")
    return gr.Error(f"internal error ({type(e).__name__}: {e}); the server keeps serving")


def ui_errors(fn):
    """Show every error as a visible one-line ``gr.Error`` (input errors as they are, anything
    else as an internal error); no event raises an unhandled exception."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as e:
                raise _as_ui_error(e) from None

        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:
            raise _as_ui_error(e) from None

    return wrapper


def fail(message: str):
    """Raise ``SaeuronError(message)`` (usable inside an expression)."""
    raise SaeuronError(message)


def validator(checks: dict):
    """A Gradio event ``validator``: ``checks`` maps an input's position to a function of all
    input values that raises ``SaeuronError``; its message is shown at that input, and the event
    does not run."""

    def validate(*values):
        out = []
        for i in range(len(values)):
            message = ""
            if i in checks:
                try:
                    checks[i](values)
                except SaeuronError as e:
                    message = str(e)
                except Exception as e:  # a check must never break the page
                    message = f"cannot check this field ({type(e).__name__}: {e})"
            out.append(gr.validate(not message, message))
        return out

    return validate


def grouped_concepts(bundle, concepts) -> list[tuple[str, str]]:
    """(label, concept) choices grouped by kind ("object · star", then "style · dots")."""
    kinds = {}
    for concept in concepts:
        try:
            kinds.setdefault(bundle.kind_of(concept), []).append(concept)
        except SaeuronError:
            kinds.setdefault("other", []).append(concept)
    return [(f"{kind} · {c}", c) for kind in sorted(kinds) for c in kinds[kind]]


def served(image, recipe: str | None = None):
    """A PIL output image tagged (PNG text) with a unique response id and, if given, its recipe.

    Gradio writes each output image, non-atomically, to a file named by the hash of its bytes;
    identical images sent by concurrent requests would race on one file and be served truncated.
    The response id makes every served file distinct.
    """
    image.info["saeuron-response"] = uuid.uuid4().hex
    if recipe is not None:
        image.info["saeuron-recipe"] = recipe
    return image


def page_url(request: gr.Request | None) -> str:
    """The app's address as the browser sees it (empty when unknown: the query alone is shown)."""
    if request is None:
        return ""
    headers = request.headers
    host = headers.get("x-forwarded-host") or headers.get("host")
    if not host:
        return ""
    scheme = headers.get("x-forwarded-proto", "http")
    return f"{scheme}://{host}/"
