"""A real Chromium (Debian's ``chromium``, driven by Playwright) clicks through every workflow of
the explorer with every field at its default, and checks what appears: rank features for a style,
open a feature card, ablate a feature and see before / after, steer with the default strength,
click a patch, export and restore a recipe, run Unlearn untouched.

Screenshots of each panel go to $SAEURON_SCREENSHOTS (default: the test's temporary folder).
With SAEURON_EXPLORER_BUNDLED=1 the app runs the bundled MiniCanvas model instead of the tiny
random one (the README's screenshots: ``SAEURON_SCREENSHOTS=results``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]

from test_explorer_app import free_port, server  # noqa: E402,F401  (the in-process app fixture)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
expect = sync_api.expect
expect.set_options(timeout=120_000)  # a shared 2-core machine: generations take seconds


@pytest.fixture(scope="module")
def app_url(request, tmp_path_factory):
    """The tiny app (shared fixture), or the bundled model's with SAEURON_EXPLORER_BUNDLED=1."""
    if os.environ.get("SAEURON_EXPLORER_BUNDLED") != "1":
        yield request.getfixturevalue("server")
        return
    from explorer.app import build_app
    from explorer.session import ExplorerSession

    session = ExplorerSession.open()
    demo = build_app(session, tmp_path_factory.mktemp("maps"))
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield session, f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SAEURON_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def page(app_url):
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        yield page
        browser.close()


def choose(page, dropdown: str, option: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def open_first_ranked_feature(page, url) -> str:
    page.goto(url)
    first = page.locator("#ranked [role=row] [role=gridcell]").first
    expect(first).not_to_be_empty()  # the ranking on arrival is done
    choose(page, "#concept", "style · dots")
    expect(page.locator("#scores-plot")).to_contain_text("Score for dots")
    feature = first.inner_text().strip()
    first.click()
    expect(page.locator("#card-summary")).to_contain_text(f"Feature {feature}")
    return feature


def test_rank_features_for_a_style_and_open_its_card(app_url, page, shots):
    session, url = app_url
    style_point = session.bundle.point_of_kind["style"]
    page.goto(url)
    expect(page.locator("#ranked [role=row] [role=gridcell]").first).not_to_be_empty()  # ranked on arrival
    choose(page, "#concept", "style · dots")
    expect(page.locator("#point input")).to_have_value(style_point)  # the style's hook point follows
    expect(page.locator("#scores-plot")).to_contain_text("Score for dots, all steps")
    cells = page.locator("#ranked [role=row] [role=gridcell]")
    assert cells.nth(2).inner_text().strip().endswith("%")  # "active on" as a percentage
    feature = cells.first.inner_text().strip()
    cells.first.click()
    summary = page.locator("#card-summary")
    expect(summary).to_contain_text(f"Feature {feature}")
    expect(summary).to_contain_text("typical top activation")
    expect(page.locator("#patches img").first).to_be_visible()
    expect(summary).not_to_contain_text("Regenerating")  # the card with its top images, not placeholders
    expect(summary).to_contain_text("vs other")  # the automatic label
    examples = page.locator("#patches .example")
    expect(examples.first).to_be_visible()
    n = examples.count()
    expect(page.locator("#patches .peak-box")).to_have_count(2 * n)  # the peak token boxed on raw and overlay
    expect(page.locator("#patches .colour-bar")).to_be_visible()
    expect(examples.first.locator("figcaption")).to_contain_text("(timestep")
    assert examples.first.locator("img.raw").bounding_box()["width"] >= 150  # shown at a readable size
    caption = examples.first.locator("figcaption")
    assert caption.evaluate("e => e.scrollWidth <= e.clientWidth + 1")  # not truncated
    page.screenshot(path=str(shots / "explorer_features.png"), full_page=True)
    page.locator("#heat-opacity input[type=range]").fill("0.2")  # opacity: applied in the browser
    expect(page.locator("#patches img.heat").first).to_have_css("opacity", "0.2")
    # one step control: the ranking, the card and the plots follow it, titles included
    choose(page, "#step", f"step 1 (timestep {session.bundle.stats[style_point].timesteps[1]})")
    expect(page.locator("#scores-plot")).to_contain_text("Score for dots, step 1")
    expect(summary).to_contain_text("step 1 (timestep")
    expect(page.locator("#concept-bars")).to_contain_text("step 1")


def test_open_feature_with_an_empty_id_says_so_at_the_field(app_url, page):
    page.goto(app_url[1])
    expect(
        page.locator("#ranked [role=row] [role=gridcell]").first
    ).not_to_be_empty()  # the page's load events are done
    page.locator("#open-feature").click()
    expect(page.get_by_text("enter a feature id").first).to_be_visible()
    expect(page.locator("#card-summary")).not_to_contain_text("Feature 0")


def test_ablate_a_feature_and_see_before_after_then_click_a_patch(app_url, page, shots):
    open_first_ranked_feature(page, app_url[1])
    page.locator("#add-ablation").click()
    page.get_by_role("tab", name="Generate").click()
    expect(page.locator("#intervention-table")).to_contain_text("ablate")
    page.locator("#generate").click()
    expect(page.locator("#before img")).to_be_visible()
    expect(page.get_by_text("Largest pixel change")).to_be_visible()
    before, after = page.locator("#before img"), page.locator("#after img")
    assert before.get_attribute("src") != after.get_attribute("src")
    expect(page.locator("#compare img")).to_have_count(2)  # the before / after slider
    after.click(position={"x": 40, "y": 40})  # the features active at that patch
    expect(page.locator("#active [role=row] [role=gridcell]").first).not_to_be_empty()
    page.locator("#locate").click()  # feature field untouched: the image's most active feature
    steps = int(page.locator("#steps input[type=number]").input_value())
    expect(page.locator("#feature-in-image .step-map")).to_have_count(steps)
    expect(page.locator("#feature-in-image")).to_contain_text("most active")
    expect(page.locator("#feature-in-image .colour-bar")).to_be_visible()
    page.locator("#compare-seeds").click()  # seeds untouched: 1, 2, 3
    expect(page.locator("#seeds-grid tr.seed-row")).to_have_count(3)
    expect(page.locator("#seeds-grid tr.seed-row img")).to_have_count(9)
    page.screenshot(path=str(shots / "explorer_generate.png"), full_page=True)


def test_steer_with_the_default_strength_changes_the_image(app_url, page, shots):
    open_first_ranked_feature(page, app_url[1])
    page.locator("#add-steering").click()  # strength untouched: 4x the typical top activation
    page.get_by_role("tab", name="Generate").click()
    expect(page.locator("#intervention-table")).to_contain_text("steer")
    page.locator("#generate").click()
    note = page.get_by_text("Largest pixel change")
    expect(note).to_be_visible()
    changed = float(note.inner_text().split(":")[1].split("%")[0])
    assert changed > 1.0, f"default steering changed the image by only {changed}%"


def test_export_and_restore_a_recipe(app_url, page, shots):
    page.goto(app_url[1])
    page.get_by_role("tab", name="Generate").click()
    prompt = page.locator("#prompt textarea").input_value()
    page.locator("#generate").click()
    expect(page.get_by_text("No interventions")).to_be_visible()
    page.get_by_role("tab", name="Recipe").click()
    recipe = page.locator("#recipe-json")
    expect(recipe).to_contain_text('"format": "saeuron-recipe/1"')
    text = page.evaluate("() => document.querySelector('#recipe-json .cm-content').innerText")
    page.get_by_role("tab", name="Generate").click()
    page.locator("#prompt textarea").fill("An image of something else.")
    page.get_by_role("tab", name="Recipe").click()
    page.locator("#recipe-import .cm-content").fill(text)
    page.locator("#import-recipe").click()
    page.get_by_role("tab", name="Generate").click()
    expect(page.locator("#prompt textarea")).to_have_value(prompt)
    page.get_by_role("tab", name="Recipe").click()
    page.screenshot(path=str(shots / "explorer_recipe.png"), full_page=True)


def test_unlearn_with_every_field_untouched(app_url, page, shots):
    page.goto(app_url[1])
    page.get_by_role("tab", name="Unlearn").click()
    expect(page.locator("#unlearn-tau input, #unlearn-tau textarea").first).to_have_value("")
    page.locator("#unlearn").click()
    matrix = page.locator("#unlearn-matrix table")
    expect(matrix).to_be_visible()
    rows = matrix.locator("tbody tr")
    assert (
        rows.count() >= 2 and matrix.locator("tbody tr img").count() == 2 * 2 * rows.count()
    )  # (before + saeuron) x 2 seeds
    expect(matrix.locator("thead")).to_contain_text("before")
    expect(matrix.locator("tbody tr").first).to_contain_text("target")
    expect(page.locator("#unlearn-metrics")).to_contain_text("UA: concept gone")
    expect(page.locator("#unlearn-metrics")).to_contain_text("%")
    for suffix in ("_verdicts.csv", "_metrics.csv", ".json"):  # downloadable exports
        expect(page.locator(f"#unlearn-exports a[href$='{suffix}']")).to_have_count(1)
    page.screenshot(path=str(shots / "explorer_unlearn.png"), full_page=True)


def test_a_recipe_url_restores_the_generate_panel(app_url, page):
    session, url = app_url
    query = (
        "prompt=An+image+of+heart+in+rings+style.&seed=7&steps=2&guidance=3.0&interventions="
        + '[{"type":"ScaleFeatures","point":"%s","features":[4],"factor":0.0}]' % session.points[0]
    )
    page.goto(url + "?" + query.replace('"', "%22").replace(" ", "%20"))
    page.get_by_role("tab", name="Generate").click()
    expect(page.locator("#prompt textarea")).to_have_value("An image of heart in rings style.")
    expect(page.locator("#intervention-table")).to_contain_text("ablate")


def test_the_intervention_editor_toggles_and_deletes_rows(app_url, page):
    open_first_ranked_feature(page, app_url[1])
    page.locator("#add-ablation").click()
    page.get_by_role("tab", name="Generate").click()
    rows = page.locator("#intervention-table [role=row][data-index]")
    expect(rows).to_have_count(1)
    page.locator("#intervention-table [data-testid=cell-0-0] input[type=checkbox]").click()  # switch it off
    page.locator("#generate").click()
    expect(page.get_by_text("No interventions")).to_be_visible()  # the row that is off is not applied
    expect(rows).to_have_count(1)  # but kept
    page.locator("#intervention-table [data-testid=cell-0-3]").click()
    page.locator("#delete-intervention").click()
    expect(rows).to_have_count(0)


def test_search_features_by_concept_and_open_one_by_permalink(app_url, page, shots):
    session, url = app_url
    page.goto(url)
    expect(page.locator("#ranked [role=row] [role=gridcell]").first).not_to_be_empty()
    page.locator("#feature-search input, #feature-search textarea").first.fill("dots")
    page.locator("#search-features").click()
    label = page.locator("#ranked [role=row][data-index='0'] [role=gridcell]").nth(4)
    expect(label).to_contain_text("dots x")
    point = session.points[-1]
    feature = session.bundle.stats[point].example_item.ne(-1).any(1).nonzero()[0].item()
    page.goto(f"{url}?point={point}&feature={feature}")
    summary = page.locator("#card-summary")
    expect(summary).to_contain_text(f"Feature {feature}")
    expect(summary).to_contain_text(point)
    expect(page.locator("#patches .example").first).to_be_visible()
    expect(summary.get_by_role("link", name="Permalink")).to_have_attribute(
        "href", f"{url}?point={point.replace('.', '.')}&feature={feature}"
    )


def test_the_concept_map_tab_shows_the_table_and_is_hidden_without_one(app_url, page, shots, tmp_path):
    import copy
    import json

    from explorer.app import build_app
    from explorer.concept_map import load_concept_map

    session, url = app_url
    page.goto(url)
    expect(page.get_by_role("tab", name="Generate")).to_be_visible()
    expect(page.get_by_role("tab", name="Concept map")).to_have_count(0)  # no concept map: no tab
    blocks = ["down_blocks.1.attentions.0", *session.points, "mid_block.attentions.0"]
    values = [[0.05, 0.1], [0.85, 0.2], [0.3, 0.9], [0.6, 0.05]][: len(blocks)]
    (tmp_path / "map.json").write_text(
        json.dumps(
            {
                "blocks": blocks,
                "kinds": ["object", "style"],
                "values": values,
                "metric": "example values (test data, not measured)",
            }
        )
    )
    with_map = copy.copy(session)
    with_map.concept_map = load_concept_map(tmp_path / "map.json")
    demo = build_app(with_map, tmp_path, precompute_maps=False)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.get_by_role("tab", name="Concept map").click()
        plot = page.locator("#concept-map-plot")
        expect(plot).to_contain_text("Where each concept kind enters the U-Net")
        expect(plot).to_contain_text(session.points[0])
        expect(plot).to_contain_text("0.85")
        expect(page.locator("#concept-map-note")).to_contain_text("test data, not measured")
        page.screenshot(path=str(shots / "explorer_concept_map.png"), full_page=True)
    finally:
        demo.close()


# ---------------------------------------------------------------- issue 19: handles, no silent failure, (point, id)
def test_concept_handles_add_checked_rows_and_say_what_they_did(app_url, page, shots):
    """Item 1: with every field at its default, "remove" and "add" become rows, confirmed at the
    control; after Generate each row reports its features' activation before / after, and the add
    row which prompt the cross-attention blocks read. The default concept is the example prompt's
    style: adding it changes nothing, said so; adding another style (strength untouched, 1)
    writes it into the prompt in the first one's place."""
    session, url = app_url
    page.goto(url)
    page.get_by_role("tab", name="Generate").click()
    what = page.locator("#what-each-does")
    expect(what).to_contain_text("gamma")  # what ablate / scale / steer / remove / add do
    expect(what).to_contain_text("add rewrites the prompt read by cross-attention")
    concept = page.locator("#handle-concept input").input_value().split("·")[-1].strip()
    style_point = session.bundle.point_of_kind["style"]
    other = next(s for s in session.bundle.stats[style_point].concepts_of_kind("style") if s != concept)
    prompt = page.locator("#prompt textarea").input_value()
    assert concept in prompt and other not in prompt
    page.locator("#remove-concept").click()
    expect(page.locator("#handle-note")).to_contain_text(
        f"Added row 1 to the intervention table (Generate tab): remove {concept}"
    )
    expect(page.locator("#intervention-table")).to_contain_text("remove")
    expect(page.locator("#handle-strength input")).to_have_value("1")  # the library's ADD_STRENGTH
    page.locator("#add-concept").click()
    expect(page.locator("#handle-note")).to_contain_text(
        f"Added row 2 to the intervention table (Generate tab): add {concept}: prompt rewritten, strength 1"
    )
    choose(page, "#handle-concept", f"style · {other}")
    page.locator("#add-concept").click()
    expect(page.locator("#handle-note")).to_contain_text(
        f"Added row 3 to the intervention table (Generate tab): add {other}: prompt rewritten, strength 1"
    )
    table = page.locator("#intervention-table")
    expect(table).to_contain_text("prompt rewritten, every block")
    page.locator("#generate").click()
    effects = page.locator("#row-effects")
    expect(effects).to_contain_text(f"remove {concept}")
    expect(effects).to_contain_text(f"nothing rewritten: the prompt already names {concept}")
    expected = prompt.lower().replace(concept, other).replace(".", " .")  # as the tokenizer gives it back
    expect(effects).to_contain_text(f'read as "{expected}" by every cross-attention block')
    expect(effects).to_contain_text("activation" if session.judge is None else f"{other} (p=")
    expect(page.locator("#judge-verdict")).not_to_be_empty()
    page.screenshot(path=str(shots / "explorer_concept_handles.png"), full_page=True)


def test_a_failed_generate_clears_the_images_and_says_why_without_error_badges(app_url, page, shots):
    """Item 3: nothing is clamped or rounded silently; a failure clears the old images and says why in view."""
    page.goto(app_url[1])
    page.get_by_role("tab", name="Generate").click()
    page.locator("#generate").click()
    note = page.locator("#generate-note")
    expect(note).to_contain_text("No interventions")
    expect(page.locator("#after img")).to_be_visible()
    for field, value, message in [
        ("#seed", "-1", "seed must be in"),
        ("#seed", "1.5", "seed must be an integer, got 1.5"),
        ("#steps", "9999", "steps must be in [1, 50], got 9999"),
        ("#guidance", "1000000000", "guidance must be in [0, 30]"),
    ]:
        page.locator(f"{field} input").fill(value)
        page.locator("#generate").click()
        expect(note).to_contain_text(message)
        expect(note).to_be_in_viewport()
        expect(page.locator("#after img")).to_have_count(0)  # the old image is gone
        expect(page.locator(f"{field} input")).to_have_value(value)  # what was typed stays as typed
        for output in ("#before", "#after", "#row-effects"):  # no bare "Error" badges on the outputs
            expect(page.locator(f'{output} >> text="Error" >> visible=true')).to_have_count(0)
        page.locator(f"{field} input").fill({"#seed": "0", "#steps": "3", "#guidance": "4"}[field])
    page.locator("#prompt textarea").fill("a " * 151)
    page.locator("#generate").click()
    expect(note).to_contain_text("the prompt has 302 characters; the limit is 300")
    expect(page.locator("#prompt textarea")).to_have_value("a " * 151)  # not cut
    page.screenshot(path=str(shots / "explorer_generate_failed.png"))


def test_a_feature_keeps_its_hook_point_from_search_to_generate(app_url, page):
    """Item 4: a search for a style with no concept chosen looks at the style point; the card, the
    row and 'where it fires' follow the feature's own point."""
    session, url = app_url
    style_point = session.bundle.point_of_kind["style"]
    style = session.bundle.stats[style_point].concepts_of_kind("style")[0]
    page.goto(url)
    expect(page.locator("#ranked [role=row] [role=gridcell]").first).not_to_be_empty()
    page.locator("#feature-search input, #feature-search textarea").first.fill(style)
    page.locator("#search-features").click()
    expect(page.locator("#point input")).to_have_value(style_point)
    from explorer.features import FeatureExplorer

    feature = str(FeatureExplorer(session).search(style_point, style, 1)[0].feature)  # the search's first row
    first = page.locator("#ranked [role=row] [role=gridcell]").first
    expect(first).to_have_text(feature)
    first.click()
    expect(page.locator("#card-summary")).to_contain_text(f"Feature {feature} at {style_point}")
    page.locator("#add-ablation").click()
    expect(page.locator("#add-note")).to_contain_text(f"ablate feature {feature} at {style_point}")
    page.get_by_role("tab", name="Generate").click()
    expect(page.get_by_label("Hook point (of the clicked patch and of 'where a feature fires')")).to_have_value(
        style_point
    )


def test_the_card_scrolls_into_view_and_add_confirms_in_one_steering_unit(app_url, page, shots):
    """Items 5 and 6: the card comes into view; "Add as ..." names the row and where it went; the
    table shows the card's unit; a strength over the cap is refused at the field, in that unit."""
    feature = open_first_ranked_feature(page, app_url[1])
    expect(page.locator("#card-summary")).to_be_in_viewport()
    page.locator("#add-steering").click()  # 4x, the default
    note = page.locator("#add-note")
    expect(note).to_contain_text(f"Added row 1 to the intervention table (Generate tab): steer feature {feature}")
    page.locator("#steer-strength input").fill("500")
    page.locator("#add-steering").click()
    expect(page.locator("#steer-strength").get_by_text("steering strength 500x is over the cap")).to_be_visible()
    expect(page.locator("#feature-id").get_by_text("over the cap")).to_have_count(0)  # said once, at the strength
    page.screenshot(path=str(shots / "explorer_add_confirmed.png"))
    page.get_by_role("tab", name="Generate").click()
    expect(page.locator("#intervention-table")).to_contain_text("4x")
    expect(page.locator("#intervention-table [role=row]")).to_have_count(
        2
    )  # the header and the one row: 500x was not added


def test_concept_handles_in_the_features_panel(app_url, page):
    """Item 1, Features side: the chosen concept's handles add confirmed rows to the Generate table."""
    open_first_ranked_feature(page, app_url[1])  # chooses "style · dots"
    page.locator("#features-remove-concept").click()
    expect(page.locator("#features-handle-note")).to_contain_text(
        "Added row 1 to the intervention table (Generate tab): remove dots"
    )
    page.locator("#features-add-concept").click()  # strength untouched
    expect(page.locator("#features-handle-note")).to_contain_text(
        "Added row 2 to the intervention table (Generate tab): add dots: prompt rewritten, strength 1"
    )
    page.get_by_role("tab", name="Generate").click()
    expect(page.locator("#intervention-table")).to_contain_text("remove")
    expect(page.locator("#intervention-table")).to_contain_text("prompt rewritten, every block")
