"""MiniCanvas: the synthetic miniature of UnlearnCanvas that the bundled model is built on.

Everything specific to this one benchmark lives here: the renderer and its splits
(``dataset``), the tokenizer, the judge, the model build (``build``), the evaluation
protocol, the tau/gamma sweep (``tuning``) and the method comparison (``benchmark``).
The general library above never imports this package.

``saeuron_core.minicanvas`` re-exports the data set's vocabulary and helpers, so
``from saeuron_core import minicanvas as mc; mc.prompt("star", "dots")`` works.
"""

from .dataset import (
    IMAGE_SIZE,
    OBJECTS,
    SPLITS,
    STYLES,
    Sample,
    all_pairs,
    check_object,
    check_style,
    concept_kind,
    prompt,
    prompt_items,
    prompt_seeds,
    render,
    render_batch,
    render_sample,
    split_of,
    split_seeds,
)

__all__ = [
    "IMAGE_SIZE",
    "OBJECTS",
    "SPLITS",
    "STYLES",
    "Sample",
    "all_pairs",
    "check_object",
    "check_style",
    "concept_kind",
    "prompt",
    "prompt_items",
    "prompt_seeds",
    "render",
    "render_batch",
    "render_sample",
    "split_of",
    "split_seeds",
]
