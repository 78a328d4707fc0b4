"""Integration tier: a real ComfyUI in-process, tiny models written as real files."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch
from comfy_harness import find_comfyui, start_comfyui
from comfy_server import install_pack, running_server
from model_files import place_model_files
from tiny_models import tiny_motion_state_dict


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in item.nodeid:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def comfyui(tmp_path_factory):
    root, reason = find_comfyui()
    if root is None:
        pytest.skip(f"integration tier skipped: {reason}")
    comfy = start_comfyui(root, str(tmp_path_factory.mktemp("comfyui")))
    folder = os.path.join(comfy.models_dir, "animatediff_models")
    for name, state in {
        "tiny_v3.safetensors": tiny_motion_state_dict("v3", seed=11),
        "tiny_v3_zero.safetensors": tiny_motion_state_dict("v3", seed=11, zero_out=True),
    }.items():
        safetensors.torch.save_file(state, os.path.join(folder, name))
    torch.save(tiny_motion_state_dict("v2", seed=12), os.path.join(folder, "tiny_v2.ckpt"))
    return comfy


@pytest.fixture(scope="session")
def server(comfyui, tmp_path_factory):
    """The same ComfyUI's main.py serving HTTP, the pack in its custom_nodes/, every file of MODEL_FILES in place."""
    base = tmp_path_factory.mktemp("server")
    install_pack(base)
    place_model_files(base, tmp_path_factory.mktemp("model_files"))
    with running_server(comfyui.root, base) as running:
        yield running


@pytest.fixture(scope="session")
def object_info(server) -> dict:
    """The live node definitions of the server, as the frontend reads them."""
    return server.get("/object_info")
