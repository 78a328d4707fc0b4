"""The nodes' help pages in the real frontend, in headless Chromium: a node selected on the canvas, the
selection toolbox's info button pressed, and the node's page shown in the panel it opens.

Frontend 1.35.9 (ComfyUI 0.8.0) and 1.48.7 (0.33.0) both fetch a custom node's help from
/extensions/<pack folder>/docs/<NodeId>.md and render it in the right-hand panel's Info tab, which then
follows the selection. Needs Debian's Chromium and the playwright package, like the other browser tests; a
screenshot is kept under test-artifacts/browser/comfyui-<version>/node_help.png.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from comfy_harness import PACK_ROOT
from comfy_server import PACK_FOLDER_NAME

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(os.environ.get("MOTIONCLONE_TEST_ARTIFACTS", Path(PACK_ROOT) / "test-artifacts")) / "browser"
PAGES = Path(PACK_ROOT) / "web" / "docs"

# A fresh graph holding one node of the given type, selected as a click on it selects it; its title.
SELECT_NEW_NODE = """(type) => {
    app.graph.clear();
    const node = LiteGraph.createNode(type);
    node.pos = [400, 200];
    app.graph.add(node);
    app.canvas.ds.offset = [0, 0];
    app.canvas.ds.scale = 1;
    if (app.canvas.selectItems) app.canvas.selectItems([node]); else app.canvas.selectNode(node);
    app.canvas.setDirty(true, true);
    return node.title;
}"""
# What the help panel shows: its title, its first paragraph, its headings and the code spans.
SHOWN = """() => {
    const help = document.querySelector(".node-help-content");
    if (!help || help.offsetParent === null) return null;
    const text = (selector) => [...help.querySelectorAll(selector)].map((element) => element.textContent.trim());
    return {title: text("h1")[0] || null, paragraph: text("p")[0] || null, headings: text("h2"), code: text("code")};
}"""


@pytest.fixture(scope="module")
def page(server, object_info):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"browser tests skipped: no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests skipped: pip install playwright")
    server.post("/settings/Comfy.TutorialCompleted", True)  # or the template browser opens over the graph
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.uncaught_errors = []
        page.on("pageerror", lambda error: page.uncaught_errors.append(str(error)))
        page.goto(server.url)
        page.wait_for_function(
            "() => !!(window.app && app.graph && LiteGraph.registered_node_types.MotionCloneSampler)", timeout=60_000)
        page.wait_for_function("() => document.querySelector('.p-blockui-mask') === null", timeout=30_000)
        page.wait_for_timeout(500)
        page.uncaught_errors.clear()
        yield page
        browser.close()


@pytest.fixture(scope="module")
def pack_nodes(object_info) -> list[str]:
    return sorted(name for name, info in object_info.items()
                  if info.get("python_module", "").split(".")[:2] == ["custom_nodes", PACK_FOLDER_NAME])


def _plain(markdown: str) -> str:
    """A markdown paragraph as the rendered page's text: emphasis and code marks dropped, whitespace collapsed."""
    return " ".join(re.sub(r"\*\*|\*|`", "", markdown).split())


def _first_paragraph(name: str) -> str:
    blocks = (PAGES / f"{name}.md").read_text(encoding="utf-8").split("\n\n")
    return _plain(next(block for block in blocks[1:] if block.strip()))


def _inputs(info: dict) -> set[str]:
    return {*info["input"].get("required", {}), *info["input"].get("optional", {})}


def _shows(page, title: str) -> dict:
    page.wait_for_function(f"(title) => {{ const shown = ({SHOWN})(); return shown && shown.title === title; }}",
                           arg=title, timeout=15_000)
    return page.evaluate(SHOWN)


def _check_page(shown: dict, name: str, info: dict) -> None:
    assert _plain(shown["paragraph"] or "") == _first_paragraph(name), (
        f"{name}: the panel shows another text than web/docs/{name}.md")
    assert {"Inputs", "Outputs"} <= set(shown["headings"]), (name, shown["headings"])
    missing = _inputs(info) - set(shown["code"])
    assert not missing, f"{name}: inputs missing from the shown page: {sorted(missing)}"


def test_the_info_button_shows_the_selected_nodes_help_page(server, object_info, page):
    name = "MotionCloneSampler"
    title = page.evaluate(SELECT_NEW_NODE, name)
    assert page.evaluate(SHOWN) is None, "the help panel is open before the info button is pressed"
    page.get_by_test_id("info-button").click()
    shown = _shows(page, title)
    assert title == object_info[name]["display_name"]
    _check_page(shown, name, object_info[name])
    version = server.get("/system_stats")["system"]["comfyui_version"]
    screenshot = ARTIFACTS / f"comfyui-{version}" / "node_help.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot))
    assert page.uncaught_errors == [], page.uncaught_errors


def test_the_help_panel_shows_every_nodes_page(object_info, page, pack_nodes):
    assert len(pack_nodes) >= 16, pack_nodes
    for name in pack_nodes:
        title = page.evaluate(SELECT_NEW_NODE, name)
        if (page.evaluate(SHOWN) or {}).get("title") is None:  # the panel closed: open it as a user would
            page.get_by_test_id("info-button").click()
        _check_page(_shows(page, title), name, object_info[name])
    assert page.uncaught_errors == [], page.uncaught_errors
