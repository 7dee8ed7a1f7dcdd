from saeuron_core.minicanvas.evaluation import JudgedImage, accuracy, accuracy_table


def rec(o, s, po, ps):
    return JudgedImage(o, s, 0, po, ps)


def test_accuracy_by_hand():
    records = [
        rec("star", "dots", "star", "dots"),
        rec("star", "dots", "heart", "dots"),
        rec("circle", "solid", "circle", "mosaic"),
        rec("circle", "solid", "circle", "solid"),
    ]
    assert accuracy(records, "object") == 0.75
    assert accuracy(records, "style") == 0.75
    assert accuracy(records, "style", lambda r: r.style == "solid") == 0.5
    table = accuracy_table(records)
    assert table["per_object"]["star"] == 0.5 and table["per_style"]["dots"] == 1.0
    assert table["images"] == 4
    assert table["per_style"]["rings"] != table["per_style"]["rings"]  # NaN: no images


def test_kept_on_target_counts_the_other_concept_on_the_removed_concepts_own_images():
    from saeuron_core.minicanvas.evaluation import removal_counts

    records = [
        rec("star", "dots", "star", "solid"),  # dots gone, star kept
        rec("square", "dots", "cross", "solid"),  # dots gone with the square: UA counts it, kept does not
        rec("heart", "dots", "heart", "dots"),  # dots still there, heart kept
        rec("star", None, "star", "solid"),  # unstyled: not one of dots' own images
        rec("star", "solid", "heart", "solid"),  # another style's image: CRA, not kept_on_target
    ]
    dots = removal_counts(records, "dots")
    assert (dots["UA"].k, dots["UA"].n) == (2, 3)
    assert (dots["kept_on_target"].k, dots["kept_on_target"].n) == (2, 3)
    assert (dots["CRA"].k, dots["CRA"].n) == (3, 5)  # CRA: objects on every image, unstyled included
    star = removal_counts(records, "star")  # removing an object: is its style still seen on its images?
    assert (star["kept_on_target"].k, star["kept_on_target"].n) == (
        1,
        2,
    )  # two styled stars; the unstyled one has no style to keep
