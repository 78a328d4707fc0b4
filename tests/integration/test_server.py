"""The pack in a real ComfyUI server: /object_info and queued prompts (AnimateDiff; clip -> motion -> guided video)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import safetensors.torch

from comfy_harness import PACK_ROOT, TESTING_PACK, find_comfyui
from prompts import FRAMES, motionclone_prompt, video_prompt
from tiny_models import tiny_motion_state_dict

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _post(url: str, payload: dict):
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root, reason = find_comfyui()
    if root is None:
        pytest.skip(f"integration tier skipped: {reason}")
    base = tmp_path_factory.mktemp("server")
    (base / "custom_nodes").mkdir()
    os.symlink(PACK_ROOT, base / "custom_nodes" / "ComfyUI-MotionClone")
    os.symlink(TESTING_PACK, base / "custom_nodes" / "motionclone_testing_pack")
    (base / "models" / "animatediff_models").mkdir(parents=True)
    safetensors.torch.save_file(tiny_motion_state_dict("v3", seed=11), str(base / "models" / "animatediff_models" / "tiny_v3.safetensors"))
    port = _free_port()
    log = open(base / "server.log", "w")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "serve_comfyui.py"), root, "--cpu", "--listen", "127.0.0.1", "--port", str(port),
         "--base-directory", str(base), "--disable-auto-launch", "--disable-api-nodes"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                _get(f"{url}/system_stats")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"ComfyUI server did not start:\n{(base / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, base
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


NODE_IDS = ("MotionCloneLoadAnimateDiff", "MotionCloneApplyAnimateDiff", "MotionCloneExtractMotion", "MotionCloneSaveMotion",
            "MotionCloneLoadMotion", "MotionCloneSampler", "MotionCloneScheduler", "MotionCloneGuidance")


def test_object_info_lists_the_nodes_with_tooltips(server):
    url, _ = server
    for node_id in NODE_IDS:
        info = _get(f"{url}/object_info/{node_id}")[node_id]
        assert info["category"] == "MotionClone"
        inputs = {**info["input"]["required"], **info["input"].get("optional", {})}
        for name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip in /object_info"
    motion_input = _get(f"{url}/object_info/MotionCloneLoadAnimateDiff")["MotionCloneLoadAnimateDiff"]["input"]["required"]["motion_module"]
    assert "tiny_v3.safetensors" in json.dumps(motion_input), "models/animatediff_models is not registered"


def _run(url: str, prompt: dict) -> dict:
    """Queue `prompt`, wait for it, and return its history entry."""
    queued = _post(f"{url}/prompt", {"prompt": prompt, "client_id": "test"})
    assert queued.get("node_errors") == {}, queued
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        history = _get(f"{url}/history/{queued['prompt_id']}")
        if queued["prompt_id"] in history:
            entry = history[queued["prompt_id"]]
            assert entry["status"]["status_str"] == "success", entry["status"]
            return entry
        time.sleep(0.5)
    raise AssertionError("the prompt did not finish in 120 s")


def test_queued_prompt_load_apply_ksampler_runs(server):
    url, base = server
    out = base / "video.safetensors"
    _run(url, video_prompt(str(out), motion_module="tiny_v3.safetensors"))
    assert safetensors.torch.load_file(str(out))["samples"].shape == (FRAMES, 4, 16, 16)


def test_queued_prompt_reference_clip_to_guided_video_runs(server):
    url, base = server
    out = base / "cloned.safetensors"
    entry = _run(url, motionclone_prompt(str(out)))
    assert safetensors.torch.load_file(str(out))["samples"].shape == (FRAMES, 4, 16, 16)
    losses = entry["outputs"]["sample"]["motion_loss"]
    assert len(losses) == 3 and "Motion loss over 3 guided steps" in entry["outputs"]["sample"]["text"][0]
    assert "4 frames" in entry["outputs"]["extract"]["text"][0]
