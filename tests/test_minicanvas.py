import numpy as np
import pytest

from saeuron_core import minicanvas as mc
from saeuron_core.errors import SaeuronError


def test_vocabulary_sizes():
    assert len(mc.OBJECTS) >= 6 and len(mc.STYLES) >= 8
    assert len(set(mc.OBJECTS) | set(mc.STYLES)) == len(mc.OBJECTS) + len(mc.STYLES)


def test_render_is_deterministic_and_seed_dependent():
    a = mc.render("star", "dots", 3)
    b = mc.render("star", "dots", 3)
    c = mc.render("star", "dots", 4)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_render_differs_across_objects_and_styles():
    base = mc.render("circle", "solid", 0).astype(int)
    assert np.abs(base - mc.render("square", "solid", 0)).mean() > 1
    assert np.abs(base - mc.render("circle", "stripes", 0)).mean() > 1


def test_object_occupies_the_image_and_background_is_light():
    img = mc.render("square", "solid", 11).astype(float)
    # solid style is saturated red: pixels far from the light background belong to the object
    redness = img[..., 0] - img[..., 1:].mean(-1)
    frac = (redness > 80).mean()
    assert 0.15 < frac < 0.8
    corners = np.concatenate([img[:3, :3].reshape(-1, 3), img[-3:, -3:].reshape(-1, 3)])
    assert corners.mean() > 170


def test_outline_leaves_interior_as_background():
    img = mc.render("circle", "outline", 5).astype(float)
    # the shape's centre is near the image centre (+-12%); with an outline it shows background
    centre = img[28:36, 28:36].reshape(-1, 3)
    assert centre.mean() > 170


def test_prompts_follow_the_paper():
    assert mc.prompt("heart", "mosaic") == "An image of heart in mosaic style."
    assert mc.prompt("heart") == "An image of heart."


def test_unknown_names_raise_clear_errors():
    with pytest.raises(SaeuronError, match="unknown object 'dog'"):
        mc.render("dog", "solid", 0)
    with pytest.raises(SaeuronError, match="unknown style 'vangogh'"):
        mc.prompt("star", "vangogh")
    with pytest.raises(SaeuronError, match="unknown concept"):
        mc.concept_kind("nothing")
    assert mc.concept_kind("star") == "object" and mc.concept_kind("dots") == "style"


def test_splits_are_disjoint():
    names = list(mc.SPLITS)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ra, rb = mc.SPLITS[a], mc.SPLITS[b]
            assert ra.stop <= rb.start or rb.stop <= ra.start
    seeds = mc.split_seeds("heldout", 5)
    assert all(mc.split_of(s) == "heldout" for s in seeds)
    with pytest.raises(SaeuronError):
        mc.split_of(-1)
