"""The pack in a real ComfyUI server: /object_info and queued prompts (AnimateDiff; clip -> motion -> guided video)."""

from __future__ import annotations

import json

import safetensors.torch
from prompts import FRAMES, motionclone_prompt, video_prompt

NODE_IDS = ("MotionCloneLoadAnimateDiff", "MotionCloneApplyAnimateDiff", "MotionCloneExtractMotion",
            "MotionCloneSaveMotion", "MotionCloneLoadMotion", "MotionCloneSampler", "MotionCloneScheduler",
            "MotionCloneGuidance")


def test_object_info_lists_the_nodes_with_tooltips(server):
    for node_id in NODE_IDS:
        info = server.get(f"/object_info/{node_id}")[node_id]
        assert info["category"] == "MotionClone"
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip in /object_info"
    motion_input = server.get(
        "/object_info/MotionCloneLoadAnimateDiff"
    )["MotionCloneLoadAnimateDiff"]["input"]["required"]["motion_module"]
    assert "tiny_v3.safetensors" in json.dumps(motion_input), "models/animatediff_models is not registered"


def test_queued_prompt_load_apply_ksampler_runs(server, tmp_path):
    out = tmp_path / "video.safetensors"
    server.run(video_prompt(str(out), motion_module="tiny_v3.safetensors"))
    assert safetensors.torch.load_file(str(out))["samples"].shape == (FRAMES, 4, 16, 16)


def test_queued_prompt_reference_clip_to_guided_video_runs(server, tmp_path):
    out = tmp_path / "cloned.safetensors"
    entry = server.run(motionclone_prompt(str(out)))
    assert safetensors.torch.load_file(str(out))["samples"].shape == (FRAMES, 4, 16, 16)
    losses = entry["outputs"]["sample"]["motion_loss"]
    assert len(losses) == 3 and "Motion loss over 3 guided steps" in entry["outputs"]["sample"]["text"][0]
    assert "4 frames" in entry["outputs"]["extract"]["text"][0]
