"""The committed toy-model weights: their sha256 matches SHA256SUMS, they fit the 10 MB budget, and their
layout is what the loaders read (AnimateDiff v3 keys, TAESD keys, the toy world's token rows)."""

from __future__ import annotations

import hashlib
import json
import os

import safetensors.torch
import torch

from motionclone.checkpoint import detect_motion_module
from motionclone.checksums import parse_sha256sums

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIGHTS = os.path.join(PACK_ROOT, "nodes", "engine", "toy_weights")
FILES = ("toy_unet.safetensors", "toy_motion_module.safetensors", "toy_clip.safetensors", "toy_vae.safetensors")


def _sums() -> dict[str, str]:
    with open(os.path.join(WEIGHTS, "SHA256SUMS")) as handle:
        return parse_sha256sums(handle.read(), "SHA256SUMS", "")


def test_every_weight_file_matches_its_sha256():
    sums = _sums()
    assert sorted(sums) == sorted(FILES)
    for name in FILES:
        with open(os.path.join(WEIGHTS, name), "rb") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == sums[name], name


def test_weights_fit_in_ten_megabytes():
    assert sum(os.path.getsize(os.path.join(WEIGHTS, name)) for name in FILES) <= 10 * 1024 * 1024


def test_motion_module_is_an_animatediff_v3_module_with_the_unet_widths():
    state = safetensors.torch.load_file(os.path.join(WEIGHTS, "toy_motion_module.safetensors"))
    spec = detect_motion_module(state, "toy")
    assert (spec.version, spec.channels, spec.max_frames, spec.has_mid_block) == ("v3", (32, 32, 64, 64), 32, False)
    unet = safetensors.torch.load_file(os.path.join(WEIGHTS, "toy_unet.safetensors"))
    # Each level's motion width is the width of the UNet's resnets at that level.
    for level, width in enumerate(spec.channels):
        assert unet[f"model.diffusion_model.input_blocks.{3 * level + 1}.0.out_layers.3.weight"].shape[0] == width


def test_vae_is_in_taesd_layout_with_the_latent_normalisation():
    state = safetensors.torch.load_file(os.path.join(WEIGHTS, "toy_vae.safetensors"))
    assert state["taesd_decoder.1.weight"].shape[1] == 4  # ComfyUI's VAE class detects TAESD by this key
    assert any(k.startswith("taesd_encoder.") for k in state)
    # Model-space latent 4 * (colour - 0.09): (half the colour) / vae_scale + vae_shift, times SD1.5's 0.18215.
    colour = torch.tensor([0.0, 0.09, 0.5, 1.0])
    latent = (0.5 * colour / state["vae_scale"].float() + state["vae_shift"].float()) * 0.18215
    assert torch.allclose(latent, 4 * (colour - 0.09), atol=1e-4)


def test_clip_file_keeps_the_toy_words_rows_only():
    state = safetensors.torch.load_file(os.path.join(WEIGHTS, "toy_clip.safetensors"))
    ids = state["token_ids"]
    assert state["token_rows"].shape == (len(ids), 64)
    assert 49406 in ids.tolist() and 49407 in ids.tolist()  # CLIP's start and end tokens
    assert len(ids) == len(set(ids.tolist())) == 15  # a, an, eight colours, three shapes, start/end: not 49408 rows


def test_training_log_records_the_command_a_full_run_and_a_falling_loss():
    with open(os.path.join(WEIGHTS, "training_log.json")) as handle:
        log = json.load(handle)
    assert "train.py" in log["command"] and f"--steps {log['planned_steps']}" in log["command"]
    assert log["total_steps"] == log["planned_steps"] and not log["stopped_early"]
    losses = log["loss"]
    assert len(losses) >= 5 and min(losses[-3:]) < 0.5 * losses[0]
