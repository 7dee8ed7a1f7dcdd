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
