"""Every workflow dropped onto the real ComfyUI frontend in headless Chromium, queued, and run to the end.

Needs Debian's Chromium (`apt-get install chromium`, at /usr/bin/chromium or CHROMIUM_PATH) and the
playwright package (no browser download: playwright drives that Chromium); skipped with a reason where
either is absent. A screenshot of each finished workflow is kept under test-artifacts/browser/ (or
MOTIONCLONE_TEST_ARTIFACTS), outside git.

Errors the frontend raises while it starts are compared with those the same ComfyUI raises with no
custom node at all (`--disable-all-custom-nodes`): some frontends raise their own on every start (1.27.10,
ComfyUI 0.3.64's pin: "Cannot read properties of undefined (reading 'id')", a setting's change handler
running before the setting it changes is registered), which are no fault of the pack.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from comfy_harness import PACK_ROOT
from comfy_server import PACK_FOLDER_NAME, running_server

from workflows import (
    cpu_overrides_for,
    load_workflow,
    to_api_prompt,
    validate_workflow,
    widgets_as_loaded,
    with_cpu_overrides,
    workflow_paths,
)

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = Path(os.environ.get("MOTIONCLONE_TEST_ARTIFACTS", Path(PACK_ROOT) / "test-artifacts")) / "browser"
WORKFLOWS = workflow_paths()

# What the page reports once a queued prompt has ended (ComfyUI's websocket events, via the frontend's api).
WATCH_RUN = """() => {
    window.__motionclone_run = null;
    for (const kind of ["execution_success", "execution_error", "execution_interrupted"])
        app.api.addEventListener(kind, (event) => { window.__motionclone_run = {kind, detail: event.detail}; });
}"""
DROP_FILE = """([text, name]) => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([text], name, {type: "application/json"}));
    document.querySelector("#graph-canvas").dispatchEvent(
        new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
}"""
OPEN_DIALOGS = """() => [...document.querySelectorAll(".p-dialog, .p-toast-message-error")]
    .filter((element) => element.offsetParent !== null).map((element) => element.innerText.slice(0, 500))"""
SET_WIDGETS = """(values) => { for (const node of app.graph.nodes) for (const widget of node.widgets || [])
    if (widget.name in values) widget.value = values[widget.name]; }"""


@pytest.fixture(scope="module")
def browser(server):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"browser tests skipped: no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests skipped: pip install playwright")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _open_frontend(browser, server, ready: str):
    """A new tab on the server's frontend once `ready` (a JS condition) holds and the start-up overlay has
    gone; `page.startup_errors` holds the uncaught errors of its start, `page.uncaught_errors` collects later ones."""
    server.post("/settings/Comfy.TutorialCompleted", True)  # or the template browser opens over the graph
    page = browser.new_page(viewport={"width": 1920, "height": 1080})
    page.uncaught_errors = []
    page.on("pageerror", lambda error: page.uncaught_errors.append(str(error)))
    page.goto(server.url)
    page.wait_for_function(ready, timeout=60_000)
    _wait_until_idle(page)
    page.startup_errors, page.uncaught_errors[:] = list(page.uncaught_errors), []
    return page


@pytest.fixture
def page(browser, server):
    page = _open_frontend(browser, server,
                          "() => !!(window.app && app.graph && LiteGraph.registered_node_types.MotionCloneSampler)")
    yield page
    page.close()


@pytest.fixture(scope="module")
def startup_errors_without_custom_nodes(browser, comfyui, tmp_path_factory) -> list[str]:
    """The uncaught errors of the frontend's start on the same ComfyUI with no custom node loaded."""
    with running_server(comfyui.root, tmp_path_factory.mktemp("server_without_custom_nodes"),
                        "--disable-all-custom-nodes") as bare:
        page = _open_frontend(browser, bare,
                              "() => !!(window.app && app.graph && LiteGraph.registered_node_types.KSampler)")
        page.close()
        return page.startup_errors


def _wait_until_idle(page) -> None:
    """Until the frontend's loading overlay has stayed away for a moment. A drop while the start-up overlay
    is still fading out leaves PrimeVue's BlockUI with a stale mask over the page (the drop blocks again
    before the fade ends), which no user dropping a file seconds later meets."""
    for _ in range(2):
        page.wait_for_function("() => document.querySelector('.p-blockui-mask') === null", timeout=30_000)
        page.wait_for_timeout(500)


def _screenshot(page, server, name: str) -> Path:
    version = server.get("/system_stats")["system"]["comfyui_version"]
    path = ARTIFACTS / f"comfyui-{version}" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path))
    return path


def _frontend_prompt(page, object_info: dict) -> dict:
    """The API prompt the frontend queues, less values of its display-only widgets (LoadVideo's "video-preview"),
    which the server ignores as they are no inputs of the node."""
    output = page.evaluate("async () => (await app.graphToPrompt()).output")
    prompt = {}
    for node_id, node in output.items():
        declared = object_info[node["class_type"]]["input"]
        inputs = {name: value for name, value in node["inputs"].items()
                  if name in declared.get("required", {}) or name in declared.get("optional", {})}
        prompt[node_id] = {"class_type": node["class_type"], "inputs": inputs}
    return prompt


def test_the_pack_adds_no_error_to_the_frontends_start(page, startup_errors_without_custom_nodes):
    assert not set(page.startup_errors) - set(startup_errors_without_custom_nodes), (
        f"start-up errors with the pack: {page.startup_errors}; "
        f"without any custom node: {startup_errors_without_custom_nodes}")


@pytest.mark.parametrize("name", WORKFLOWS)
def test_frontend_loads_queues_and_finishes_the_workflow(server, object_info, page, name):
    path = WORKFLOWS[name]
    workflow = load_workflow(path)
    page.evaluate(DROP_FILE, [path.read_text(), path.name])
    page.wait_for_function("(count) => app.graph.nodes.length === count", arg=len(workflow["nodes"]), timeout=30_000)
    _wait_until_idle(page)  # also gives the missing-node and error dialogs time to open
    assert page.evaluate(OPEN_DIALOGS) == [], "a dialog opened on loading the workflow"
    unknown = page.evaluate(
        "() => app.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type)"
    )
    assert unknown == [], f"node types the frontend does not know: {unknown}"

    saved = page.evaluate("() => app.graph.serialize()")  # what Workflow -> Save would write
    assert validate_workflow(saved, object_info) == [], "the workflow as the frontend saves it fails validation"
    loaded = {str(node["id"]): node.get("widgets_values") for node in saved["nodes"]}  # ids are strings from 1.4x
    for node in workflow["nodes"]:
        assert loaded[str(node["id"])] == widgets_as_loaded(node, object_info), (
            f"node {node['id']} ({node['type']}): the frontend reads its widgets differently")
    assert _frontend_prompt(page, object_info) == to_api_prompt(workflow, object_info), (
        "the frontend queues another prompt than the tests' converter"
    )

    overrides = cpu_overrides_for(name)
    page.evaluate(SET_WIDGETS, overrides)
    assert _frontend_prompt(page, object_info) == with_cpu_overrides(to_api_prompt(workflow, object_info), overrides)
    page.evaluate(WATCH_RUN)
    page.get_by_role("button", name="Run", exact=True).first.click()
    page.wait_for_function("() => window.__motionclone_run !== null || document.querySelector('.p-dialog') !== null",
                           timeout=300_000)
    page.wait_for_timeout(1000)  # let the output previews render for the screenshot
    screenshot = _screenshot(page, server, name)
    run = page.evaluate("() => window.__motionclone_run")
    assert run and run["kind"] == "execution_success", (
        f"{run}; dialogs: {page.evaluate(OPEN_DIALOGS)}; see {screenshot}"
    )
    assert page.evaluate(OPEN_DIALOGS) == [], f"a dialog opened while running; see {screenshot}"
    assert page.uncaught_errors == [], page.uncaught_errors
    assert (server.get(f"/history/{run['detail']['prompt_id']}")
            [run["detail"]["prompt_id"]]["status"]["status_str"] == "success")


def test_template_browser_offers_every_workflow_and_opens_it(server, page):
    """As a user: Templates in the sidebar, the pack's entry in the panel's list (the panel opens on all of
    ComfyUI's own templates), then a workflow's card."""
    page.get_by_role("button", name="Templates").first.click()
    panel = page.get_by_role("dialog")
    panel.get_by_text(PACK_FOLDER_NAME, exact=True).first.click(timeout=30_000)
    cards = panel.locator("[data-testid^='template-workflow-']")
    for name in WORKFLOWS:
        cards.get_by_text(name, exact=True).first.wait_for(timeout=10_000)
    offered = sorted(card.get_attribute("data-testid").removeprefix("template-workflow-") for card in cards.all())
    assert offered == sorted(WORKFLOWS), "the pack's entry offers other workflows than workflows/"
    _screenshot(page, server, "template_browser")
    first = next(iter(WORKFLOWS))
    cards.get_by_text(first, exact=True).first.click()
    workflow = load_workflow(WORKFLOWS[first])
    page.wait_for_function("(count) => app.graph.nodes.length === count", arg=len(workflow["nodes"]), timeout=30_000)
    opened = page.evaluate("() => app.graph.nodes.map((node) => [String(node.id), node.type])")
    assert sorted(opened) == sorted([str(node["id"]), node["type"]] for node in workflow["nodes"])
    panel.wait_for(state="hidden", timeout=10_000)
    assert page.evaluate(OPEN_DIALOGS) == [], "a dialog opened on opening the workflow"
    assert page.uncaught_errors == [], page.uncaught_errors
