"""The Gradio app, launched in-process on a free port and driven through gradio_client."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from explorer.app import build_app  # noqa: E402
from explorer.session import ExplorerSession  # noqa: E402

PROMPT = "An image of star in dots style."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_bundle, tmp_path_factory):
    r = tiny_bundle
    session = ExplorerSession.open(
        str(r / "model"), str(r / "sae"), str(r / "stats"), str(r / "defaults.json"), str(r / "judge")
    )
    demo = build_app(session, tmp_path_factory.mktemp("maps"), precompute_maps=False)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield session, f"http://127.0.0.1:{port}/"
    demo.close()


def new_client(url: str, downloads) -> Client:
    # Downloads go to their own folder: the default is the server's own file cache (same process),
    # where a download and a concurrent serve of the same file would race.
    return Client(url, verbose=False, download_files=str(downloads))


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return new_client(server[1], tmp_path_factory.mktemp("downloads"))


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(float) - b.astype(float)).mean())


def generate(client, interventions="[]", prompt=PROMPT, seed=0):
    before, after, difference, note, recipe, url, python = client.predict(
        prompt, seed, 3, 4.0, interventions, api_name="/generate"
    )
    return pixels(before), pixels(after), recipe


def test_rank_and_open_a_feature(server, client):
    session = server[0]
    point = session.points[0]
    table, _scores, counts = client.predict("dots", point, "1", 95.0, api_name="/rank_features")
    assert table["headers"] == ["feature", "score", "active on", "top concept", "label"]
    scores = [float(row[1]) for row in table["data"]]
    assert all(
        len(row[1].replace("-", "").replace(".", "").lstrip("0")) <= 3 for row in table["data"] if "e" not in row[1]
    )  # 3 significant digits
    assert all(row[2].endswith("%") for row in table["data"])
    assert scores == sorted(scores, reverse=True) and len(scores) == 50
    assert counts is not None  # a concept is chosen: the selection chart is drawn
    feature = table["data"][0][0]
    summary, examples, *_plots = client.predict(point, str(feature), "dots", "1", api_name="/feature_card")
    assert (
        f"**Feature {feature}**" in summary and "step 1" in summary and f"feature={feature}" in summary
    )  # the permalink
    assert examples.count('class="example"') > 0 and examples.count("data:image/png;base64,") == 3 * examples.count(
        'class="example"'
    )
    found = client.predict(point, "dots", api_name="/search_features")
    assert found["data"] and all("dots" in row[4] for row in found["data"])


def test_an_ablation_changes_the_image_and_its_recipe_reproduces_it(server, client):
    point = server[0].points[0]
    table, *_ = client.predict("dots", point, "all", 95.0, api_name="/rank_features")
    interventions, note = client.predict(
        "[]", point, str(table["data"][0][0]), 4.0, 4.0, 0, "", None, api_name="/add_ablation"
    )
    assert note.startswith("Added row 1 to the intervention table")
    assert json.loads(interventions)[0]["factor"] == 0.0
    plain_before, plain_after, _ = generate(client)
    assert np.array_equal(plain_before, plain_after)
    before, after, recipe = generate(client, interventions)
    assert np.array_equal(before, plain_before) and not np.array_equal(before, after)
    fields = client.predict(recipe, api_name="/import_recipe")
    prompt, seed, steps, guidance, imported = fields
    assert (prompt, seed, steps, guidance) == (PROMPT, 0, 3, 4.0)
    assert np.array_equal(generate(client, imported)[1], after)


def reroute(point: str, **changes) -> str:
    """The JSON list of one Reroute of dots onto solid at ``point`` (``changes``: its fields)."""
    spec = {"type": "Reroute", "point": point, "concepts": ["dots"], "anchor": "solid", "blocks": [], "tau": 99.0}
    return json.dumps([{**spec, "detect": 0.0, "match": 0.8, "steps": None, **changes}])


def test_bad_input_is_reported_and_the_server_keeps_serving(server, client):
    point = server[0].points[0]
    style = server[0].bundle.point_of_kind["style"]
    cases = [
        (("", 0, 3, 4.0, "[]"), "/generate", "the prompt is empty"),
        (
            (PROMPT, 0, 3, 4.0, '[{"type": "ScaleFeatures", "point": "%s", "features": [99999], "factor": 0}]' % point),
            "/generate",
            "feature id must be in",
        ),
        (
            (PROMPT, 0, 3, 4.0, '[{"type": "ScaleFeatures", "point": "%s", "features": [1], "factor": 1e9}]' % point),
            "/generate",
            "scale factor must be in",
        ),
        (("{broken",), "/import_recipe", "not valid JSON"),
        ((point, "99999", None, "all"), "/feature_card", "feature id must be in"),
        ((point, "", None, "all"), "/feature_card", "enter a feature id"),
        ((point, "2.5", None, "all"), "/feature_card", "whole number"),
        ((point, " "), "/search_features", "enter a concept"),
        ((PROMPT, 0, 2.5, 4.0, "[]"), "/generate", "steps must be an integer"),
        (
            (
                PROMPT,
                0,
                3,
                4.0,
                '[{"type": "ScaleFeatures", "point": "%s", "features": [1], "factor": 0, "steps": [5, null]}]' % point,
            ),
            "/generate",
            "starts at step 5, but the generation has only 3 steps",
        ),
        (("[]", point, "99999", 4.0, 4.0, 0, "", None), "/add_ablation", "feature id must be in"),
        (("[]", point, "1", 4.0, 4.0, 2, "1", None), "/add_steering", "until step must be after"),
        ((["dots"], ["saeuron"], "abc", "", 0, 2), "/unlearn_grid", "tau must be a number"),
        ((["dots"], ["saeuron"], "99", "", 0, 2), "/unlearn_grid", "give gamma too"),
        ((PROMPT, 0, 3, 4.0, "[]", point, 9, 10.0, 10.0), "/features_at_patch", "step must be in"),
        ((PROMPT, -1, 3, 4.0, "[]"), "/generate", "seed must be in"),
        ((PROMPT, 1.5, 3, 4.0, "[]"), "/generate", "seed must be an integer"),
        ((PROMPT, 0, 9999, 4.0, "[]"), "/generate", "steps must be in"),
        ((PROMPT, 0, 3, 1e9, "[]"), "/generate", "guidance must be in"),
        (("x" * 301, 0, 3, 4.0, "[]"), "/generate", "the prompt has 301 characters"),
        ((PROMPT, 0, 3, 4.0, "[oops"), "/row_effects", "not valid JSON"),
        (("[]", None, 2.0), "/add_remove_concept", "choose a concept"),
        (("[]", "no-such-concept", 2.0), "/add_add_concept", "unknown concept"),
        (("[]", "dots", 1e6), "/add_add_concept", r"strength must be in \(0, 3\], got 1000000"),
        (("[]", "dots", None), "/add_add_concept", "enter a strength"),
        (("[]", point, "1", 4.0, 1e6, 0, "", None), "/add_steering", "over the cap"),
        ((PROMPT, 0, 3, 4.0, reroute(style, anchor="vangogh")), "/generate", "cannot reroute dots to 'vangogh'"),
        (
            (PROMPT, 0, 3, 4.0, reroute(style, blocks=["up_blocks.1.resnets.0"])),
            "/row_effects",
            "not a cross-attention",
        ),
    ]
    for args, api, message in cases:
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name=api)
    before, after, _ = generate(client)
    assert before.shape == after.shape == (256, 256, 3)


@pytest.mark.slow
def test_eight_concurrent_clients_get_their_own_interventions(server, tmp_path):
    session, url = server
    point = session.points[0]
    jobs = [
        json.dumps([{"type": "ScaleFeatures", "point": point, "features": [i], "factor": 0.0 if i % 2 else 4.0}])
        for i in range(8)
    ]
    sequential = [generate(new_client(url, tmp_path / "sequential"), iv)[1] for iv in jobs]
    clients = [new_client(url, tmp_path / f"client{i}") for i in range(len(jobs))]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda args: generate(*args)[1], zip(clients, jobs)))
    # Each image must be its own job's: closer to its own sequential image than to any other job's
    # different image,. Bit equality is not asked for: on some CPUs the BLAS
    # kernels pick their code path by buffer alignment, which concurrent allocation changes.
    distinct = {a.tobytes() for a in sequential}
    assert len(distinct) > 1, "the interventions do not change the image: the test cannot tell jobs apart"
    for i, (got, own) in enumerate(zip(concurrent, sequential)):
        mine = mean_abs(got, own)
        others = [mean_abs(own, b) for b in sequential if b.tobytes() != own.tobytes()]
        assert mine < min(others) / 2, (
            f"job {i}: mean |difference| to its own sequential image {mine:.3f},"
            f" to the nearest other job's {min(others):.3f}"
        )


def test_a_reroute_generates_and_its_row_says_what_it_did(server, client):
    style = server[0].bundle.point_of_kind["style"]
    before, after, recipe = generate(client, reroute(style))
    assert json.loads(recipe)["interventions"] == json.loads(reroute(style))  # the recipe keeps it as it came
    effects, verdict = client.predict(PROMPT, 0, 3, 4.0, reroute(style), api_name="/row_effects")
    (row,) = effects["data"]
    assert row[1] == f"remove dots at {style} (rerouted to solid)" and row[7].startswith("dots detected at step 0")
    assert (not np.array_equal(before, after)) or "changed nothing in the image" in row[7]
    assert verdict.startswith("Judge: unedited image")


def test_served_images_carry_their_recipe(server, client):
    point = server[0].points[0]
    interventions = json.dumps([{"type": "ScaleFeatures", "point": point, "features": [2], "factor": 0.0}])
    before, after, *_rest, recipe, url, python = client.predict(PROMPT, 4, 3, 4.0, interventions, api_name="/generate")
    assert Image.open(after).info["saeuron-recipe"] == recipe
    assert json.loads(Image.open(before).info["saeuron-recipe"])["interventions"] == []
    assert "?prompt=An+image+of+star" in url and "interventions=" in url
    assert "generate_with(" in python


@pytest.mark.slow
def test_command_line_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "explorer.app", "--model", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("saeuron-explorer: error: unknown model spec")
        and "Traceback" not in proc.stderr
    )


@pytest.mark.slow
def test_spaces_entry_point_builds_the_app(tiny_bundle):
    r = tiny_bundle
    env = {
        **os.environ,
        "SAEURON_MODEL": str(r / "model"),
        "SAEURON_SAE": str(r / "sae"),
        "SAEURON_STATS": str(r / "stats"),
        "SAEURON_JUDGE": str(r / "judge"),
    }
    code = "import app, gradio; assert isinstance(app.demo, gradio.Blocks); print('ok')"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_steering_with_a_painted_mask(server, client, tmp_path):
    from gradio_client import handle_file

    point = server[0].points[0]
    layer = np.zeros((256, 256, 4), dtype=np.uint8)
    layer[:40, :40] = (255, 48, 48, 255)  # the top-left corner: token 0 only
    Image.fromarray(layer).save(tmp_path / "layer.png")
    painting = {"background": None, "layers": [handle_file(str(tmp_path / "layer.png"))], "composite": None}
    from explorer.features import FeatureExplorer

    typical = FeatureExplorer(server[0]).typical_top_activation(point, 3)
    added = json.loads(client.predict("[]", point, "3", 4.0, 30.0, 1, "", painting, api_name="/add_steering")[0])
    assert added == [
        {
            "type": "Steer",
            "point": point,
            "features": [3],
            "strength": pytest.approx(30.0 * typical),
            "mask": [0],
            "steps": [1, None],
        }
    ]
    everywhere = json.loads(client.predict("[]", point, "3", 4.0, 30.0, 0, "", None, api_name="/add_steering")[0])
    assert everywhere[0]["mask"] is None and everywhere[0]["steps"] is None
    before, after, _ = generate(client, json.dumps(added))
    assert not np.array_equal(before, after)


def test_unlearn_panel_compares_methods_side_by_side(client):
    matrix, metrics, files = client.predict(["dots"], ["saeuron", "uce"], None, None, 1, 2, api_name="/unlearn_grid")
    header = matrix[matrix.index("<thead>") : matrix.index("</thead>")]
    assert [h for h in ("prompt", "before", "saeuron", "uce") if f"<th>{h}</th>" in header] == [
        "prompt",
        "before",
        "saeuron",
        "uce",
    ]
    rows = matrix.count('<tr class="u-')
    assert matrix.count("<img ") == 3 * 2 * rows and matrix.index("u-target") < matrix.index(
        "u-retained"
    )  # 2 seeds per prompt
    assert (
        matrix.count('class="u-conf"') == 2 * 3 * 2 * rows
    )  # the judge's confidence beside both verdicts of every image
    assert metrics["headers"] == ["concept", "metric", "before", "saeuron", "uce"]
    assert [r[1].split(":")[0] for r in metrics["data"]] == ["UA", "IRA", "CRA", "kept"]
    assert all(
        re.fullmatch(r"[\d.]+% \(\d+/\d+\) \[[\d.]+%–[\d.]+%\]", cell) for r in metrics["data"] for cell in r[2:]
    )
    names = sorted(Path(f).name for f in files)
    assert names == [
        "unlearn_dots_seeds1-2.json",
        "unlearn_dots_seeds1-2_metrics.csv",
        "unlearn_dots_seeds1-2_verdicts.csv",
    ]
    exported = json.loads(Path(next(f for f in files if f.endswith(".json"))).read_text())
    assert exported["methods"] == ["saeuron", "uce"] and len(exported["verdicts"]) == 3 * 2 * rows
    assert all(isinstance(iv, dict) for iv in exported["interventions"])
    # the untouched tau / gamma fields send empty text: the defaults table applies; one seed
    assert client.predict(["dots"], ["saeuron"], "", "", 1, 1, api_name="/unlearn_grid")[0].count("<img ") == 2 * rows
    with pytest.raises(Exception, match="choose at least one method"):
        client.predict(["dots"], [], None, None, 1, 2, api_name="/unlearn_grid")
    with pytest.raises(Exception, match="seeds per prompt must be in"):
        client.predict(["dots"], ["saeuron"], None, None, 1, 9, api_name="/unlearn_grid")
    with pytest.raises(Exception, match="seed must be in"):
        client.predict(["dots"], ["saeuron"], None, None, -3, 2, api_name="/unlearn_grid")


def test_features_at_patch_from_the_api(server, client):
    point = server[0].points[0]
    found = client.predict(PROMPT, 0, 3, 4.0, "[]", point, 2, 10.0, 10.0, api_name="/features_at_patch")
    assert found and set(found[0]) == {"feature", "activation", "top_concept"}
    assert [f["activation"] for f in found] == sorted((f["activation"] for f in found), reverse=True)


def test_a_patch_click_on_a_non_square_image_maps_to_its_own_token(tiny_bundle, tmp_path):
    """--height 32 --width 48 (a 16x24 latent): the shown image is 256 x 384 px, and a click
    at (x, y) lands on the token under it, not on one of a square image."""
    import torch

    from saeuron_core.hooks import to_tokens

    r = tiny_bundle
    session = ExplorerSession.open(
        str(r / "model"), str(r / "sae"), str(r / "stats"), str(r / "defaults.json"), height=32, width=48
    )
    assert session.size == (32, 48)
    demo = build_app(session, tmp_path, precompute_maps=False)
    features_at_patch = next(f.fn for f in demo.fns.values() if f.api_name == "features_at_patch")
    point, step, x, y = session.points[0], 1, 300.0, 100.0
    found = features_at_patch(PROMPT, 0, 3, 4.0, "[]", point, step, x, y)
    maps = session.run(session.recipe(PROMPT, 0, 3, 4.0), capture=[point]).maps[point]
    assert tuple(maps.shape[-2:]) == (8, 12)  # rows x cols of the block's map
    row, col = int(y * 8 / 256), int(x * 12 / 384)  # the shown image is 8x upscaled: 256 x 384
    with torch.inference_mode():
        acts, ids = session.bundle.saes[point].encode(to_tokens(maps[step : step + 1])[0, row * 12 + col])
    expected = sorted(((float(a), int(i)) for a, i in zip(acts, ids) if a > 0), reverse=True)
    assert [f["feature"] for f in found] == [i for _, i in expected]
    assert [f["activation"] for f in found] == pytest.approx([a for a, _ in expected])


def test_every_endpoint_answers_empty_input_with_a_clear_message(server, client):
    """None in every field (what an API caller may send): a result or a one-line input error from
    every named endpoint, never an internal error, and the server keeps serving."""
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/generate", "/features_at_patch", "/feature_card", "/unlearn_grid", "/rank_features"} <= set(endpoints)
    for name, spec in endpoints.items():
        args = [None] * len(spec["parameters"])
        try:
            client.predict(*args, api_name=name)
        except Exception as e:
            assert "internal error" not in str(e) and "Traceback" not in str(e), f"{name}: {e}"
    assert generate(client)[0].shape == (256, 256, 3)


def test_the_concept_map_tab_appears_only_with_a_concept_map(server, tmp_path):
    import copy
    import json

    import gradio as gr

    from explorer.app import build_app
    from explorer.concept_map import load_concept_map

    def tabs(demo):
        return [b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)]

    session = server[0]
    assert session.concept_map is None and "Concept map" not in tabs(
        build_app(session, tmp_path, precompute_maps=False)
    )
    (tmp_path / "map.json").write_text(
        json.dumps(
            {
                "blocks": session.points,
                "kinds": ["object", "style"],
                "values": [[0.8, 0.1], [0.2, 0.7]],
                "metric": "flip rate",
            }
        )
    )
    with_map = copy.copy(session)
    with_map.concept_map = load_concept_map(tmp_path / "map.json")
    demo = build_app(with_map, tmp_path, precompute_maps=False)
    assert "Concept map" in tabs(demo)
    plot = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "concept-map-plot")
    figure = json.loads(plot.value["plot"])
    assert figure["data"][0]["y"] == session.points and figure["data"][0]["z"] == [[0.8, 0.1], [0.2, 0.7]]
    assert len(figure["layout"]["shapes"]) == len(
        set(session.bundle.point_of_kind.items()) & {(k, p) for k in ("object", "style") for p in session.points}
    )
