"""The workflows as ComfyUI's Templates panel shows them: title = file name, card image = `<name>.jpg`."""

from __future__ import annotations

import ast
import os
import re

import pytest

WORKFLOWS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "workflows")
WORKFLOWS = sorted(name[:-5] for name in os.listdir(WORKFLOWS_DIR) if name.endswith(".json"))
# Frontend 1.35 shows a card's title on one line, about 30 characters at its narrowest card; 1.27 wraps a
# title onto two lines, but only where it may break (after a hyphen, not after an underscore).
LONGEST_TITLE = 26
THUMBNAIL_SIZE = (512, 512)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the frame header of a baseline or progressive JPEG."""
    assert data[:2] == b"\xff\xd8", "not a JPEG (no start-of-image marker)"
    position = 2
    while position < len(data):
        assert data[position] == 0xFF, f"broken JPEG segment at byte {position}"
        marker, length = data[position + 1], int.from_bytes(data[position + 2:position + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = (int.from_bytes(data[position + 5 + i:position + 7 + i], "big") for i in (0, 2))
            return width, height
        position += 2 + length
    raise AssertionError("JPEG without a frame header")


def test_jpeg_size_reads_a_frame_header():
    header = b"\xff\xd8" + b"\xff\xe0\x00\x04\x00\x00" + b"\xff\xc2\x00\x0b\x08\x01\x80\x02\x00\x03\x01"
    assert _jpeg_size(header) == (512, 384)
    with pytest.raises(AssertionError, match="not a JPEG"):
        _jpeg_size(b"\x89PNG\r\n")


def test_the_workflows_are_numbered_in_the_order_they_should_be_read():
    numbers = [int(name.split("-")[0]) for name in WORKFLOWS]
    # 0 is the toy-model demo a newcomer runs first; sorted by name is sorted by number
    assert numbers == list(range(0, len(WORKFLOWS))), WORKFLOWS


@pytest.mark.parametrize("name", WORKFLOWS)
def test_title_fits_a_card(name):
    assert re.fullmatch(r"\d+(-[a-z0-9]+)+", name), f"{name}: lower-case words joined by hyphens, after the number"
    assert len(name) <= LONGEST_TITLE, f"{name}: {len(name)} characters; the panel cuts titles over {LONGEST_TITLE}"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_thumbnail_beside_the_workflow(name):
    path = os.path.join(WORKFLOWS_DIR, f"{name}.jpg")
    assert os.path.isfile(path), f"no {name}.jpg: run python bench/make_thumbnails.py"
    with open(path, "rb") as f:
        data = f.read()
    assert _jpeg_size(data) == THUMBNAIL_SIZE
    assert 5_000 < len(data) < 100_000, f"{name}.jpg is {len(data)} bytes"


def test_no_thumbnail_without_its_workflow_and_a_card_for_each():
    thumbnails = sorted(name[:-4] for name in os.listdir(WORKFLOWS_DIR) if name.endswith(".jpg"))
    assert thumbnails == WORKFLOWS
    with open(os.path.join(WORKFLOWS_DIR, "..", "bench", "make_thumbnails.py")) as f:
        tree = ast.parse(f.read())
    cards = next(node.value for node in tree.body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CARDS")
    assert sorted(ast.literal_eval(key) for key in cards.keys) == WORKFLOWS
