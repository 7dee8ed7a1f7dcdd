"""Chromium (Debian's ``chromium`` through Playwright) on the bundled MiniCanvas app, whose
defaults table (variant "reroute-styles") makes "remove" of a style a ``Reroute``: with every
field at its default, the remove handle adds a rerouting row, Generate runs it, and the row's
effects say what it did. Screenshots go to $SAEURON_SCREENSHOTS (default: a temporary folder)."""

from __future__ import annotations

import pytest
from conftest import needs_bundled

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")

from test_explorer_app import free_port  # noqa: E402
from test_explorer_browser import CHROMIUM, page, shots  # noqa: E402,F401  (page opens this module's app_url)

pytestmark = [
    pytest.mark.slow,
    needs_bundled,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)"),
]
expect = sync_api.expect


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The bundled app (its own defaults table), served in-process: (session, url)."""
    from explorer.app import build_app
    from explorer.session import ExplorerSession

    session = ExplorerSession.open()
    demo = build_app(session, tmp_path_factory.mktemp("maps"), precompute_maps=False)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield session, f"http://127.0.0.1:{port}/"
    demo.close()


def test_the_default_style_removal_is_a_rerouting_row_that_says_what_it_did(app_url, page, shots):  # noqa: F811
    from explorer import handles
    from saeuron_core.interventions import Reroute

    session, url = app_url
    page.goto(url)
    page.get_by_role("tab", name="Generate").click()
    concept = page.locator("#handle-concept input").input_value().split("·")[-1].strip()
    assert session.bundle.kind_of(concept) == "style"  # the handle's default concept: the first style
    (removal,) = session.bundle.unlearn([concept])
    assert isinstance(removal, Reroute)
    anchor = handles.anchor_text(removal)
    # the bundled table reroutes every concept it has a "reroute" block for (styles and objects today)
    expect(page.locator("#what-each-does")).to_contain_text("styles, counterfactual rerouting")
    page.locator("#remove-concept").click()
    expect(page.locator("#handle-note")).to_contain_text(
        f"Added row 1 to the intervention table (Generate tab): remove {concept} at {removal.point} "
        f"(rerouted to {anchor})"
    )
    table = page.locator("#intervention-table")
    expect(table).to_contain_text(f"rerouted to {anchor}, detect {removal.detect:g}")
    page.locator("#generate").click()
    effects = page.locator("#row-effects")
    expect(effects).to_contain_text(f"remove {concept} at {removal.point} (rerouted to {anchor})")
    # it acted on the prompt that names the style, and says so: neither an error nor a silent no-op
    expect(effects).to_contain_text(f"{concept} detected at step")
    expect(effects).to_contain_text(f"{concept} (p=")  # the judge's verdict before / after
    expect(effects).not_to_contain_text("nothing")
    expect(page.locator("#judge-verdict")).to_contain_text("edited image")
    for output in ("#before", "#after", "#row-effects", "#intervention-table"):
        expect(page.locator(f'{output} >> text="Error" >> visible=true')).to_have_count(0)
    expect(page.locator("#generate-note")).not_to_contain_text("rror")
    page.screenshot(path=str(shots / "explorer_reroute_handle.png"), full_page=True)
