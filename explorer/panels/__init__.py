"""One module per panel: each lays out its components (``layout``) and wires its events (``wire``)."""

from __future__ import annotations

import functools
import inspect
import uuid

import gradio as gr

from saeuron_core.errors import SaeuronError


def ui_errors(fn):
    """Show the library's input errors as a visible ``gr.Error``; the server keeps serving."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def streaming(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except SaeuronError as e:
                raise gr.Error(str(e)) from None

        return streaming

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SaeuronError as e:
            raise gr.Error(str(e)) from None

    return wrapper



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
