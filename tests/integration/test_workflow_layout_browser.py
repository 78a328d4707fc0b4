"""Every workflow as the real frontend lays it out after loading: no node over another, every widget in view.

Each workflow is dropped onto ComfyUI's frontend in headless Chromium (the browser tier of
test_workflows_browser.py: same Chromium, same fixtures). Then LiteGraph's own numbers are read: each
node's `pos` and `size` as the frontend holds them after loading, its title bar
(`LiteGraph.NODE_TITLE_HEIGHT`, drawn above `pos`) and the size the frontend computes for its slots and
widgets (`node.computeSize()`). The test fails, naming the workflow and the nodes, where

- two nodes' rectangles, title bars included, intersect (notes are nodes too; groups are not nodes and
  may hold nodes), or
- a node is smaller than its computed size, so that its last widgets are cut off or hidden under the
  next node.

The numbers of each workflow are kept beside a screenshot of it under test-artifacts/browser/ (or
MOTIONCLONE_TEST_ARTIFACTS), outside git, for moving nodes where the test fails.
"""

from __future__ import annotations

import json
import time
from itertools import combinations

import pytest
import test_workflows_browser as browser_tier
from test_workflows_browser import ARTIFACTS, DROP_FILE, OPEN_DIALOGS, WORKFLOWS, _wait_until_idle

from workflows import load_workflow

pytestmark = pytest.mark.browser
browser, page = browser_tier.browser, browser_tier.page  # the browser tier's fixtures: Chromium, a fresh frontend tab

TOLERANCE = 0.5  # pixels of graph space: rounding, not a cut-off widget
SETTLE_SECONDS = 10  # previews (Load Video's) load after the graph and may resize their node
# Each node as LiteGraph holds it: the body's top-left corner `pos`, its `size` (title bar excluded) and the
# size computeSize() gives for its title, slots and widgets; the title bar height is LiteGraph's constant.
# A preview that fits itself to its node's width (Load Video's "video-preview": its minWidth is the node's
# width when the video loaded) makes computeSize() ask for that width plus a widget's margins, more than
# any width of the node, so the computed width leaves such widgets out (they take the node's width); the
# computed height keeps them.
LAYOUT = """() => {
    const fitsTheWidth = (node, widget) => typeof widget.computeLayoutSize === "function"
        && Math.abs(widget.computeLayoutSize(node).minWidth - node.size[0]) < 1;
    const computedSize = (node, fitting) => {
        const computed = Array.from(node.computeSize());
        if (!fitting.length) return computed;
        const own = fitting.map((widget) => [widget, Object.getOwnPropertyDescriptor(widget, "computeLayoutSize")]);
        for (const widget of fitting) {
            const layoutSize = widget.computeLayoutSize;
            widget.computeLayoutSize = (of) => ({...layoutSize.call(widget, of), minWidth: 0});
        }
        try {
            computed[0] = node.computeSize()[0];
        } finally {
            for (const [widget, descriptor] of own)
                if (descriptor) Object.defineProperty(widget, "computeLayoutSize", descriptor);
                else delete widget.computeLayoutSize;
        }
        return computed;
    };
    return {
        title_height: LiteGraph.NODE_TITLE_HEIGHT,
        nodes: app.graph._nodes.map((node) => {
            const fitting = (node.widgets || []).filter((widget) => fitsTheWidth(node, widget));
            return {
                id: String(node.id), type: node.type, title: node.title,
                pos: Array.from(node.pos), size: Array.from(node.size), computed: computedSize(node, fitting),
                width_fitting_widgets: fitting.map((widget) => widget.name),
                collapsed: !!(node.flags && node.flags.collapsed),
                no_title: node.constructor.title_mode === LiteGraph.NO_TITLE,
            };
        }),
    };
}"""
NEXT_FRAMES = "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"


def _settled_layout(page) -> dict:
    """LAYOUT once two readings a moment apart agree (the frontend has drawn the graph and loaded its previews)."""
    previous, deadline = None, time.monotonic() + SETTLE_SECONDS
    while True:
        page.evaluate(NEXT_FRAMES)
        layout = page.evaluate(LAYOUT)
        if layout == previous or time.monotonic() > deadline:
            return layout
        previous = layout
        page.wait_for_timeout(300)


def _name(node: dict) -> str:
    return f"node {node['id']} '{node['title']}' ({node['type']})"


def _rectangle(node: dict, title_height: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in graph space, the title bar included."""
    (x, y), (width, height) = node["pos"], node["size"]
    title = 0 if node["no_title"] else title_height
    return x, y - title, x + width, y + height


def _overlap(a: tuple, b: tuple) -> tuple[float, float] | None:
    """The width and height of the intersection of two rectangles; None where they do not intersect."""
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    return (width, height) if width > TOLERANCE and height > TOLERANCE else None


def layout_problems(layout: dict) -> list[str]:
    """What is wrong with a layout as LAYOUT reads it: overlapping nodes, nodes smaller than their content."""
    problems = []
    nodes = layout["nodes"]
    rectangles = {node["id"]: _rectangle(node, layout["title_height"]) for node in nodes}
    for a, b in combinations(nodes, 2):
        overlap = _overlap(rectangles[a["id"]], rectangles[b["id"]])
        if overlap:
            problems.append(f"{_name(a)} and {_name(b)} overlap by {overlap[0]:g} x {overlap[1]:g} "
                            f"(title bars included: {rectangles[a['id']]} and {rectangles[b['id']]})")
    for node in nodes:
        if node["collapsed"]:
            continue
        sizes = zip(("width", "height"), node["size"], node["computed"])
        short = [f"{axis} {have:g} < {need:g}" for axis, have, need in sizes if have + TOLERANCE < need]
        if short:
            problems.append(f"{_name(node)} is smaller than the frontend computes for its widgets "
                            f"({', '.join(short)}): its last widgets are cut off")
    return problems


def test_layout_problems_names_overlaps_and_cut_off_widgets():
    def node(id, pos, size, computed=(10, 10)):
        return {"id": id, "type": "T", "title": f"N{id}", "pos": pos, "size": size, "computed": list(computed),
                "width_fitting_widgets": [], "collapsed": False, "no_title": False}

    apart = {"title_height": 30, "nodes": [node("1", [0, 30], [100, 100]), node("2", [0, 160], [100, 100])]}
    assert layout_problems(apart) == []  # 1 ends at y=130, 2's title bar starts there
    title_over_body = {"title_height": 30, "nodes": [node("1", [0, 30], [100, 100]), node("2", [50, 150], [100, 100])]}
    assert layout_problems(title_over_body) == [
        "node 1 'N1' (T) and node 2 'N2' (T) overlap by 50 x 10 "
        "(title bars included: (0, 0, 100, 130) and (50, 120, 150, 250))"]
    cut_off = {"title_height": 30, "nodes": [node("1", [0, 30], [100, 100], computed=(90, 140))]}
    assert layout_problems(cut_off) == [
        "node 1 'N1' (T) is smaller than the frontend computes for its widgets (height 100 < 140): "
        "its last widgets are cut off"]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_no_node_overlaps_another_and_every_widget_shows(server, page, name):
    path = WORKFLOWS[name]
    page.evaluate(DROP_FILE, [path.read_text(), path.name])
    page.wait_for_function("(count) => app.graph._nodes.length === count", arg=len(load_workflow(path)["nodes"]),
                           timeout=30_000)
    _wait_until_idle(page)
    assert page.evaluate(OPEN_DIALOGS) == [], "a dialog opened on loading the workflow"
    layout = _settled_layout(page)

    version = server.get("/system_stats")["system"]["comfyui_version"]
    folder = ARTIFACTS / f"comfyui-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.layout.json").write_text(json.dumps(layout, indent=1))
    page.screenshot(path=str(folder / f"{name}.layout.png"))

    problems = layout_problems(layout)
    assert not problems, f"{name} as frontend lays it out on ComfyUI {version}:\n  " + "\n  ".join(problems)
