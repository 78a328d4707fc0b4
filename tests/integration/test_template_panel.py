"""The Templates panel's view of the pack over HTTP, as both frontends request it.

Both frontends (1.35 of ComfyUI 0.8.0, 1.48 of 0.33.0) title a custom-node template by its file name and
ask for the card image at `/api/workflow_templates/<pack folder>/<name>.jpg`; they keep the order of
`/workflow_templates`, which is the order the server's directory listing returns.
"""

from __future__ import annotations

import os

import pytest
from comfy_server import PACK_FOLDER_NAME, fetch

from workflows import WORKFLOWS_DIR, workflow_paths

WORKFLOWS = workflow_paths()


def test_the_listing_holds_every_workflow_once_in_the_folder_order(server):
    listed = server.get("/workflow_templates")[PACK_FOLDER_NAME]
    assert sorted(listed) == sorted(WORKFLOWS) and len(listed) == len(set(listed))
    # ComfyUI 0.8.0 and 0.33.0 list in the order the file system returns (on ext4 a hash order, not 0 to
    # 6), which is why the names carry their number (see the README); a ComfyUI that sorts lists 0 to 6.
    folder_order = [entry.name[:-5] for entry in os.scandir(WORKFLOWS_DIR) if entry.name.endswith(".json")]
    assert listed in (folder_order, sorted(WORKFLOWS))


@pytest.mark.parametrize("name", WORKFLOWS)
def test_the_card_image_is_served_beside_the_workflow(server, name):
    status, content_type, body = fetch(server, f"/api/workflow_templates/{PACK_FOLDER_NAME}/{name}.jpg")
    assert status == 200, f"{name}.jpg: HTTP {status}; the card would show a placeholder"
    assert content_type == "image/jpeg"
    assert body == (WORKFLOWS_DIR / f"{name}.jpg").read_bytes()


def test_a_missing_card_image_is_a_404_not_another_file(server):
    status, _, _ = fetch(server, f"/api/workflow_templates/{PACK_FOLDER_NAME}/no-such-workflow.jpg")
    assert status == 404
