"""The one-minute CPU demo: workflow 0 is the graph `demo_workflow.py` describes (`bench/make_demo_workflow.py`
writes it), and that
graph runs in a real ComfyUI to an animated WEBP of reference | unguided | cloned, the clone following the
reference's motion."""

from __future__ import annotations

import json
import os

import demo_workflow as make_demo_workflow
import numpy as np
import pytest
import torch
from comfy_harness import PACK_ROOT

WORKFLOW = os.path.join(PACK_ROOT, "workflows", "0-try-it-on-cpu.json")


def test_committed_workflow_is_the_generated_one():
    with open(WORKFLOW) as handle:
        assert json.load(handle) == json.loads(json.dumps(make_demo_workflow.workflow()))


def test_api_prompt_has_the_workflows_nodes_and_links():
    workflow = make_demo_workflow.workflow()
    prompt = make_demo_workflow.api_prompt()
    nodes = {str(node["id"]): node for node in workflow["nodes"] if node["type"] != "Note"}
    assert {k: v["class_type"] for k, v in prompt.items()} == {k: n["type"] for k, n in nodes.items()}
    for _link_id, src, slot, dst, dst_slot, _ in workflow["links"]:
        name = nodes[str(dst)]["inputs"][dst_slot]["name"]
        assert prompt[str(dst)]["inputs"][name] == [str(src), slot]


@pytest.fixture(scope="module")
def animation(comfyui):
    outputs = comfyui.run_prompt(make_demo_workflow.api_prompt(prefix="demo_test/try"))
    image = outputs["15"]["images"][0]
    return os.path.join(comfyui.output_dir, image["subfolder"], image["filename"])


def test_demo_saves_reference_unguided_and_cloned_side_by_side(animation):
    from PIL import Image, ImageSequence  # ComfyUI's requirements bring it; the core tier collects without it

    with Image.open(animation) as webp:
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(webp)]
    assert len(frames) == 8 and frames[0].shape == (128, 3 * 128, 3)
    reference = torch.from_numpy(np.stack(frames)[:, :, :128]).float() / 255
    from motionclone.toyworld import ClipSpec, ShapeSpec, render_clip

    start = (64 - 8.0 * 7 / 2, 64.0)
    expected = render_clip(ClipSpec((ShapeSpec("circle", "red", start, 0.16 * 128, (8.0, 0.0)),), 8, 128, 128)).frames
    assert (reference - expected).abs().max() <= 1 / 255 + 1e-6  # lossless WEBP of the bundled clip


def test_cloned_panel_follows_the_reference_and_the_unguided_one_does_not(animation):
    scores = make_demo_workflow.motion_scores(animation)
    assert scores["cloned"] >= scores["unguided"] + 0.3, scores


@pytest.mark.parametrize("node_id, display_name", [("MotionCloneLoadToyModel", "MotionClone: Load Toy Model"),
                                                   ("MotionCloneToyReferenceClip", "MotionClone: Toy Reference Clip")])
def test_toy_nodes_are_served_with_tooltips(object_info, node_id, display_name):
    info = object_info[node_id]
    assert info["display_name"] == display_name and info["category"] == "MotionClone" and info["description"]
    for name, spec in info["input"].get("required", {}).items():
        assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert all(info["output_tooltips"]), info["output_tooltips"]
    if node_id == "MotionCloneLoadToyModel":
        assert info["output"] == ["MODEL", "CLIP", "VAE", "MOTIONCLONE_MOTION_MODEL"]
    else:
        spec = info["input"]["required"]["clip"]
        options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]  # the combo format differs by version
        assert info["output"] == ["IMAGE"] and "red circle moving right" in options
