"""The feature map's legibility: distinct colours, hover columns, and the structure sentence."""

import numpy as np
import pytest

from explorer.feature_map import COLOUR_BY, PALETTE, colour_map, label_structure, map_frame, structure_sentence
from explorer.features import FeatureMap
from saeuron_core.errors import SaeuronError


def test_clustered_labels_read_as_structure_and_random_labels_as_a_blob():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 2)) * 10
    labels = np.repeat([f"c{i}" for i in range(6)], 100)
    clustered = centres[np.repeat(np.arange(6), 100)] + rng.normal(size=(600, 2))
    s = label_structure(clustered, labels)
    assert s.agreement > 0.9 and s.chance == pytest.approx(1 / 6, abs=0.03) and s.lift > 3
    assert structure_sentence(s).startswith("Clear top concept structure")
    blob = label_structure(rng.normal(size=(600, 2)), labels)
    assert blob.agreement == pytest.approx(blob.chance, abs=0.05)
    sentence = structure_sentence(blob)
    assert sentence.startswith("No top concept structure beyond chance") and "blob" in sentence
    with pytest.raises(SaeuronError, match="one label per map point"):
        label_structure(clustered, labels[:10])


def test_map_frame_gives_every_concept_its_own_colour_and_hover_columns():
    concepts = [
        "solid",
        "stripes",
        "dots",
        "checkerboard",
        "gradient",
        "outline",
        "rings",
        "mosaic",
        "circle",
        "square",
        "triangle",
        "star",
        "cross",
        "heart",
    ]
    kind_of = {c: ("style" if i < 8 else "object") for i, c in enumerate(concepts)}
    n = 56
    fmap = FeatureMap(
        "up_blocks.1.attentions.1",
        np.random.default_rng(1).normal(size=(n, 2)).astype(np.float32),
        [concepts[i % 14] for i in range(n)],
        np.linspace(0, 1, n),
    )
    frame, colours = map_frame(fmap, "top concept", [f"label {i}" for i in range(n)], kind_of)
    assert {"feature", "point", "label", "top concept", "score", "colour"} <= set(frame.columns)
    assert set(colours) == set(concepts) and len(set(colours.values())) == 14  # no two concepts share a colour
    assert frame["point"].iloc[0] == fmap.point and frame["label"].iloc[3] == "label 3"
    frame, colours = map_frame(fmap, "kind", [""] * n, kind_of)
    assert set(colours) == {"style", "object"} and len(set(colours.values())) == 2
    frame, colours = map_frame(fmap, "score", [""] * n, kind_of)
    assert set(frame["colour"]) <= set(colours)
    with pytest.raises(SaeuronError, match="colour the map by one of"):
        map_frame(fmap, "mood", [""] * n, kind_of)
    assert len(colour_map(range(len(PALETTE)))) == len(PALETTE) and set(COLOUR_BY) == {"top concept", "kind", "score"}
