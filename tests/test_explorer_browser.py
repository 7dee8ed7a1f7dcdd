"""A real Chromium (Debian's ``chromium``, driven by Playwright) clicks through the explorer:
pick a concept, open a feature, add it as an ablation, generate, see the before/after pair, click
a patch of the edited image; and a recipe URL restores the Generate panel. The screenshot goes to
$SAEURON_SCREENSHOTS (default: the test's temporary folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")

from test_explorer_app import server  # noqa: E402,F401  (the in-process app fixture)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_click_through_concept_feature_ablation_generate(server, tmp_path):  # noqa: F811
    session, url = server
    shots = Path(os.environ.get("SAEURON_SCREENSHOTS", tmp_path))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(url)
        page.locator("#concept input").click()
        page.get_by_role("option", name="dots", exact=True).click()
        first_cell = page.locator("#ranked [role=row] [role=gridcell]").first
        sync_api.expect(first_cell).not_to_be_empty()
        feature = first_cell.inner_text().strip()
        first_cell.click()
        sync_api.expect(page.get_by_text(f"Feature {feature}", exact=False).first).to_be_visible()
        sync_api.expect(page.locator("#patches img").first).to_be_visible()
        page.locator("#add-ablation").click()
        page.get_by_role("tab", name="Generate").click()
        sync_api.expect(page.locator("#interventions")).to_contain_text('"factor": 0.0')
        page.locator("#generate").click()
        before, after = page.locator("#before img"), page.locator("#after img")
        sync_api.expect(after).to_be_visible()
        sync_api.expect(before).to_be_visible()
        assert before.get_attribute("src") != after.get_attribute("src")
        after.click(position={"x": 20, "y": 20})  # the features active at that patch
        sync_api.expect(page.locator("#active [role=row] [role=gridcell]").first).not_to_be_empty()
        page.screenshot(path=str(shots / "explorer_before_after.png"), full_page=True)
        browser.close()
    assert (shots / "explorer_before_after.png").stat().st_size > 10_000


def test_a_recipe_url_restores_the_generate_panel(server):  # noqa: F811
    session, url = server
    query = "prompt=An+image+of+heart+in+rings+style.&seed=7&steps=2&guidance=3.0&interventions=" + '[{"type":"ScaleFeatures","point":"%s","features":[4],"factor":0.0}]' % session.points[0]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(url + "?" + query.replace('"', "%22").replace(" ", "%20"))
        page.get_by_role("tab", name="Generate").click()
        sync_api.expect(page.locator("#prompt textarea")).to_have_value("An image of heart in rings style.")
        sync_api.expect(page.locator("#interventions")).to_contain_text('"features": [')
        browser.close()
