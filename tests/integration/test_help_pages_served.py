"""The nodes' help pages as ComfyUI serves them: where the frontend looks, and what /object_info says they describe.

ComfyUI serves a pack's `WEB_DIRECTORY` at /extensions/<its folder in custom_nodes>/ (nodes.py,
EXTENSION_WEB_DIRS; server.py adds one static route per entry). The frontend takes the folder from a node's
`python_module` ("custom_nodes.<folder>", anything after an '@' dropped) and fetches
/extensions/<folder>/docs/<NodeId>.md, then shows it unless the response is text/html.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from comfy_harness import PACK_ROOT
from comfy_server import PACK_FOLDER_NAME, fetch

PAGES = Path(PACK_ROOT) / "web" / "docs"


@pytest.fixture(scope="module")
def pack_nodes(object_info) -> dict[str, dict]:
    """The pack's nodes as the server lists them (the test-only pack's left out)."""
    return {name: info for name, info in object_info.items()
            if info.get("python_module", "").split(".")[:2] == ["custom_nodes", PACK_FOLDER_NAME]}


def _help_url(info: dict) -> str:
    """The URL the frontend (1.35 and 1.48 alike) fetches for a custom node's help page."""
    folder = info["python_module"].split(".")[1].split("@")[0]
    return f"/extensions/{folder}/docs/{info['name']}.md"


def test_the_server_lists_a_help_page_for_every_node_of_the_pack(pack_nodes):
    assert len(pack_nodes) >= 16, sorted(pack_nodes)
    assert sorted(pack_nodes) == sorted(path.stem for path in PAGES.glob("*.md"))


def test_every_help_page_is_served_where_the_frontend_looks(server, pack_nodes):
    for name, info in pack_nodes.items():
        url = _help_url(info)
        assert url == f"/extensions/{PACK_FOLDER_NAME}/docs/{name}.md"
        status, content_type, body = fetch(server, url)
        assert status == 200, f"{url}: HTTP {status}"
        assert "text/html" not in content_type, f"{url} is served as {content_type}, which the frontend discards"
        assert body == (PAGES / f"{name}.md").read_bytes(), url


def test_an_unknown_page_is_not_found(server):
    status, _, _ = fetch(server, f"/extensions/{PACK_FOLDER_NAME}/docs/MotionCloneNoSuchNode.md")
    assert status == 404


def test_every_help_page_names_every_input_the_server_lists(pack_nodes):
    for name, info in pack_nodes.items():
        text = (PAGES / f"{name}.md").read_text(encoding="utf-8")
        inputs = re.split(r"^## ", text.split("\n## Inputs\n", 1)[1], flags=re.MULTILINE)[0]
        declared = {*info["input"].get("required", {}), *info["input"].get("optional", {})}
        named = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", inputs))
        assert declared <= named, f"{name}.md does not describe {sorted(declared - named)}"
        assert text.splitlines()[0] == f"# {info['display_name']}", name
