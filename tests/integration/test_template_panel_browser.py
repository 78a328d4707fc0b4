"""The pack's cards in the real Templates panel, in headless Chromium: titles whole, images loaded.

Needs Debian's Chromium and the playwright package, like the other browser tests; a screenshot of the
panel is kept under test-artifacts/browser/comfyui-<version>/template_panel.png.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from comfy_harness import PACK_ROOT
from comfy_server import PACK_FOLDER_NAME

from workflows import workflow_paths

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(os.environ.get("MOTIONCLONE_TEST_ARTIFACTS", Path(PACK_ROOT) / "test-artifacts")) / "browser"
THUMBNAIL_WIDTH = 512

# Per card of the open category, in page order: its template name, title text, whether the title is cut
# (wider or taller than its box) and the card image's loaded width (0 while missing or broken).
CARDS = """() => [...document.querySelectorAll('[data-testid^="template-workflow-"]')].map((card) => {
    const title = card.querySelector("h3"), image = card.querySelector("img");
    return {name: card.dataset.testid.slice("template-workflow-".length), title: title && title.textContent.trim(),
            cut: !title || title.scrollWidth > title.clientWidth + 1 || title.scrollHeight > title.clientHeight + 1,
            image: image ? (image.complete ? image.naturalWidth : -1) : null};
})"""


@pytest.fixture(scope="module")
def panel(server):
    """The Templates dialog open on the pack's category; the page, its cards once every image has loaded."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"browser tests skipped: no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests skipped: pip install playwright")
    server.post("/settings/Comfy.TutorialCompleted", True)  # or the template browser opens by itself
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(server.url)
        page.wait_for_function(
            "() => !!(window.app && app.graph && LiteGraph.registered_node_types.MotionCloneSampler)", timeout=60_000
        )
        page.wait_for_function("() => document.querySelector('.p-blockui-mask') === null", timeout=30_000)
        page.get_by_role("button", name="Templates").first.click()
        page.get_by_text(PACK_FOLDER_NAME, exact=True).first.click(timeout=30_000)
        page.wait_for_function(f"(count) => ({CARDS})().length === count", arg=len(workflow_paths()), timeout=30_000)
        # Frontend 1.27 shows a card's image only while the card is in view (and drops it again when scrolled
        # away; 7 cards overflow its dialog), so each card is read once scrolled into view and its image loaded.
        cards, seen = page.locator('[data-testid^="template-workflow-"]'), []
        for index in range(cards.count()):
            cards.nth(index).scroll_into_view_if_needed()
            page.wait_for_function(f"(index) => ({CARDS})()[index].image > 0", arg=index, timeout=30_000)
            seen.append(page.evaluate(CARDS)[index])
        cards.first.scroll_into_view_if_needed()
        version = server.get("/system_stats")["system"]["comfyui_version"]
        screenshot = ARTIFACTS / f"comfyui-{version}" / "template_panel.png"
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot))
        yield seen
        browser.close()


def test_every_card_has_its_whole_title_and_its_image(panel):
    assert sorted(card["name"] for card in panel) == sorted(workflow_paths())
    for card in panel:
        assert card["title"] == card["name"] and not card["cut"], card
        assert card["image"] == THUMBNAIL_WIDTH, card


def test_the_panel_keeps_the_order_of_the_server_listing(server, panel):
    assert [card["name"] for card in panel] == server.get("/workflow_templates")[PACK_FOLDER_NAME]
