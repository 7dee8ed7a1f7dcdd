"""Chromium clicks through `saeuron-explorer --run DIR` on a run folder written by `saeuron
prepare` for a Stable Diffusion-architecture model (not the bundled one): every field at its
default, pick a concept, open the top feature, ablate it, generate, see before / after."""

from __future__ import annotations

import contextlib
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

from test_explorer_app import free_port  # noqa: E402
from test_explorer_browser import CHROMIUM_ARGS  # noqa: E402
from test_prepare import CONCEPTS  # noqa: E402


@pytest.fixture(scope="module")
def run_server(tmp_path_factory):
    from conftest import make_sd_architecture_pipeline

    from explorer.app import build_app, open_session, parse_args
    from saeuron_core.cli import main

    root = tmp_path_factory.mktemp("run_browser")
    make_sd_architecture_pipeline(latent_size=32).save_pretrained(root / "model")
    (root / "concepts.csv").write_text(CONCEPTS)
    assert (
        main(
            [
                "--threads",
                "1",
                "prepare",
                "--model",
                str(root / "model"),
                "--concepts",
                str(root / "concepts.csv"),
                "--steps",
                "2",
                "--device",
                "cpu",
                "--kind-point",
                "painter=up_blocks.1.attentions.2",
                "--out",
                str(root / "run"),
            ]
        )
        == 0
    )
    session = open_session(parse_args(["--run", str(root / "run"), "--device", "cpu", "--threads", "1"]))
    demo = build_app(session, root / "maps")
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield session, f"http://127.0.0.1:{port}/"
    demo.close()


@contextlib.contextmanager
def opened(url: str):
    """A Chromium page at ``url``, closed afterwards (also when an expectation fails)."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            sync_api.expect.set_options(timeout=120_000)  # a shared 2-core machine: generation can take a while
            page.goto(url)
            yield page
        finally:
            browser.close()


def test_run_folder_click_through(run_server, tmp_path):
    session, url = run_server
    shots = Path(os.environ.get("SAEURON_SCREENSHOTS", tmp_path))
    with opened(url) as page:
        page.locator("#concept input").click()
        page.get_by_role("option", name="painter · dots", exact=True).click()  # concepts grouped by kind
        # the ranking has followed the concept before its first row is read
        sync_api.expect(page.locator("#scores-plot")).to_contain_text("Score for dots")
        first_cell = page.locator("#ranked [role=row] [role=gridcell]").first
        sync_api.expect(first_cell).not_to_be_empty()
        feature = first_cell.inner_text().strip()
        first_cell.click()
        sync_api.expect(page.locator("#card-summary")).to_contain_text(f"Feature {feature}")
        page.locator("#add-ablation").click()
        page.get_by_role("tab", name="Generate").click()
        sync_api.expect(page.locator("#intervention-table")).to_contain_text("ablate")
        page.locator("#generate").click()
        before, after = page.locator("#before img"), page.locator("#after img")
        sync_api.expect(after).to_be_visible()
        sync_api.expect(before).to_be_visible()
        page.screenshot(path=str(shots / "explorer_run_before_after.png"), full_page=True)
    assert (shots / "explorer_run_before_after.png").stat().st_size > 10_000


def test_run_folder_unlearn_with_every_field_untouched(run_server, tmp_path):
    """No judge and no bundled metadata: Unlearn with the defaults shows before / after images
    with image-level and feature-level change, labelled as measured change."""
    session, url = run_server
    shots = Path(os.environ.get("SAEURON_SCREENSHOTS", tmp_path))
    with opened(url) as page:
        page.get_by_role("tab", name="Unlearn").click()
        sync_api.expect(page.locator("#unlearn-defaults")).to_contain_text("paper preset")
        page.locator("#unlearn").click()
        table = page.locator("#unlearn-table")
        sync_api.expect(table).to_be_visible()
        sync_api.expect(page.locator("#unlearn-matrix")).to_contain_text("No judge")
        rows = table.locator("tbody tr")
        assert rows.count() >= 2
        assert table.locator("img").count() == 2 * rows.count()  # before and SAeUron per prompt
        sync_api.expect(table.locator("tbody tr").first).to_contain_text("target")
        sync_api.expect(table.locator(".u-change").nth(1)).to_contain_text("pixels Δ")
        sync_api.expect(page.locator("#unlearn-metrics")).to_contain_text("→")
        page.screenshot(path=str(shots / "explorer_run_unlearn.png"), full_page=True)
    assert (shots / "explorer_run_unlearn.png").stat().st_size > 10_000


def test_run_folder_map_region_in_two_dimensions(run_server, tmp_path):
    """The map's region box: untouched it ranks every feature; UMAP 2 bounds narrow the table."""
    session, url = run_server
    shots = Path(os.environ.get("SAEURON_SCREENSHOTS", tmp_path))
    with opened(url) as page:
        page.get_by_text("Map of decoder directions").click()
        for _ in range(60):  # the map is computed in the background at start; the view says when it is ready
            page.locator("#show-map").click()
            ready = page.get_by_text("coloured by top concept", exact=False)
            try:
                sync_api.expect(ready).to_be_visible(timeout=5_000)
                break
            except AssertionError:
                continue
        page.locator("#map-region").click()
        status = page.get_by_text("feature(s) shown in the table", exact=False)
        sync_api.expect(status).to_contain_text("UMAP 2 open to open")
        page.locator("#map-y-min textarea").fill("-1000")
        page.locator("#map-y-max textarea").fill("1000")
        page.locator("#map-region").click()
        sync_api.expect(status).to_contain_text("UMAP 2 -1000 to 1000")
        sync_api.expect(page.locator("#ranked [role=row] [role=gridcell]").first).not_to_be_empty()
        page.screenshot(path=str(shots / "explorer_map_region.png"), full_page=True)
