"""Chromium (Debian's ``chromium`` through Playwright) clicks the Unlearn panel, the feature map
and a recipe URL with every field at its default, at 1400 x 900, and checks what appears:
seeds, the judge's confidence, kept_on_target, a metrics table that fits, a structured JSON
export; a legible map with a sentence on its structure; a URL that regenerates its image.

Screenshots go to $SAEURON_SCREENSHOTS (default: the test's temporary folder); with
SAEURON_EXPLORER_BUNDLED=1 the app runs the bundled model (see test_explorer_browser)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from test_explorer_app import free_port, server  # noqa: E402,F401
from test_explorer_browser import CHROMIUM, CHROMIUM_ARGS, app_url, shots  # noqa: E402,F401

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]
expect = sync_api.expect


@pytest.fixture()
def page(app_url):  # noqa: F811
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(180_000)
        yield page
        browser.close()


def test_unlearn_defaults_show_seeds_confidence_kept_and_a_fitting_table(app_url, page, shots):  # noqa: F811
    session, url = app_url
    page.goto(url)
    page.get_by_role("tab", name="Unlearn").click()
    expect(page.locator("#unlearn-seeds input")).to_have_value("2")
    page.locator("#unlearn").click()
    # progress from the first moment: a stage name shows before any image is on screen
    expect(page.locator("#unlearn-matrix")).to_contain_text("image", timeout=60_000)
    matrix = page.locator("#unlearn-table")
    expect(matrix).to_be_visible()
    rows = matrix.locator("tbody tr")
    figures_per_row = 2 * 2  # (before + saeuron) x 2 seeds
    assert matrix.locator("tbody tr img").count() == figures_per_row * rows.count()
    expect(matrix.locator("tbody tr").first).to_contain_text("seed 0")
    expect(matrix.locator("tbody tr").first).to_contain_text("seed 1")
    expect(matrix.locator(".u-conf").first).to_contain_text("%")  # the judge's confidence beside its verdict
    metrics = page.locator("#unlearn-metrics")
    expect(metrics).to_contain_text("kept: target's other concept kept")
    expect(metrics).to_contain_text("UA: concept gone")
    table = metrics.locator("table").first
    box, viewport = table.bounding_box(), page.viewport_size
    assert box["x"] + box["width"] <= viewport["width"], box  # every column on screen at 1400 px
    assert metrics.evaluate(
        "e => [...e.querySelectorAll('*')]"
        ".every(n => n.scrollWidth <= n.clientWidth + 2 || getComputedStyle(n).overflowX === 'visible')"
    )
    page.screenshot(path=str(shots / "explorer_unlearn_1400.png"), full_page=True)
    href = page.locator("#unlearn-exports a[href$='.json']").first.get_attribute("href")
    exported = json.loads(page.request.get(href if href.startswith("http") else url.rstrip("/") + href).text())
    assert exported["seeds"] == [0, 1] and exported["interventions"]
    from explorer.recipes import intervention_to_dict
    from explorer.unlearn_grid import UnlearnAudit

    concept = UnlearnAudit(session).best_default_concept()  # the panel's default concept
    # structured, not a repr string: the default removal (an Unlearn, or a Reroute for a rerouted style)
    assert exported["interventions"] == [intervention_to_dict(iv) for iv in session.bundle.unlearn([concept])]
    assert exported["variants"] == {"saeuron": session.bundle.variant()}
    assert {r["metric"] for r in exported["metrics"]} >= {"UA", "kept_on_target"}
    assert all("object confidence" in r for r in exported["verdicts"])


def test_unlearn_bad_seeds_get_a_message_at_the_field(app_url, page):  # noqa: F811
    page.goto(app_url[1])
    page.get_by_role("tab", name="Unlearn").click()
    page.locator("#unlearn-seeds input").fill("0")
    page.locator("#unlearn").click()
    expect(page.get_by_text("seeds per prompt must be in [1, 4], got 0").first).to_be_visible()


def test_feature_map_is_coloured_labelled_and_says_what_structure_it_has(app_url, page, shots):  # noqa: F811
    session, url = app_url
    page.goto(url)
    page.get_by_text("Map of decoder directions").click()
    for _ in range(200):  # the map is computed in the background at start (minutes on a busy 2-core machine)
        page.locator("#show-map").click()
        page.wait_for_timeout(3000)
        if "features of" in page.locator("body").inner_text():
            break
    body = page.locator("body")
    page.screenshot(path=str(shots / "explorer_map.png"), full_page=True)
    expect(body).to_contain_text("nearest neighbours on the map share its top concept")
    expect(body).to_contain_text("shuffled")
    expect(page.locator("#feature-map")).to_be_visible()
    page.locator("#feature-map").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "explorer_map.png"), full_page=True)


def test_a_recipe_url_regenerates_its_image(app_url, page):  # noqa: F811
    session, url = app_url
    query = (
        "prompt=An+image+of+heart+in+rings+style.&seed=7&steps=2&guidance=3.0&interventions="
        + '[{"type":"ScaleFeatures","point":"%s","features":[4],"factor":0.0}]' % session.points[0]
    )
    page.goto(url + "?" + query.replace('"', "%22").replace(" ", "%20"))
    expect(page.locator("#prompt textarea")).to_have_value(
        "An image of heart in rings style."
    )  # the Generate tab is open
    expect(page.locator("#after img")).to_be_visible()  # and its image generated without a click
    expect(page.locator("#before img")).to_be_visible()
