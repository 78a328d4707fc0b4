"""DDIM inversion, subject masks and location-aware semantic guidance on a real ComfyUI (tiny models)."""

from __future__ import annotations

import pytest
import safetensors.torch
from comfy_harness import PromptFailed
from inversion_prompts import (
    NEW_TEXT,
    REFERENCE_TEXT,
    _reference_nodes,
    mask_nodes,
    reconstruction_prompt,
    semantic_prompt,
)
from prompts import FRAMES, HEIGHT, WIDTH


def _load(path, key="samples"):
    return safetensors.torch.load_file(str(path))[key]


def test_inversion_then_ddim_sampling_reconstructs_the_clip(comfyui, tmp_path):
    errors = {}
    for steps in (8, 32, 128):
        paths = [tmp_path / f"{name}_{steps}.safetensors" for name in ("clip", "noised", "back")]
        # A random UNet's eps swings wildly with its input; scaled down it is smooth enough for the round trip
        # to converge (at output_scale 1 the error stays ~5x the clip at any step count).
        comfyui.run_prompt(reconstruction_prompt(*map(str, paths), steps=steps, output_scale=0.02))
        clip, noised, back = (_load(p) for p in paths)
        assert (noised - clip).abs().mean() > 0.5 * clip.abs().mean()  # the inversion really noised it
        errors[steps] = ((back - clip).abs().mean() / clip.abs().mean()).item()
    # The inversion evaluates eps at the previous latent (official next_step), sampling at the current one:
    # the mismatch is first order in the step size, so the error shrinks as steps grow.
    assert errors[8] > errors[32] > errors[128], errors
    assert errors[128] < 0.04, errors  # measured: 8 steps 0.14, 32: 0.08, 128: 0.017 (relative mean error)


def test_mask_node_gives_a_previewable_mask_of_the_clip(comfyui, tmp_path):
    prompt: dict = {}
    model, clip, latent = _reference_nodes(prompt)
    mask_nodes(prompt, model, clip, {"latent": latent}, name="mask", text=REFERENCE_TEXT, subject="square",
               blur_kernel_size=3)
    prompt["save"] = {"class_type": "MotionCloneTestSaveMask",
                      "inputs": {"mask": ["mask", 0], "path": str(tmp_path / "m.safetensors")}}
    outputs = comfyui.run_prompt(prompt)
    mask = _load(tmp_path / "m.safetensors", "mask")
    assert mask.shape == (FRAMES, HEIGHT, WIDTH)
    assert mask.min() >= 0 and mask.max() <= 1 and mask.max() > 0
    images = outputs["mask"]["images"]
    assert len(images) == FRAMES and all(image["filename"].endswith(".png") for image in images)


def test_subject_word_lookup_uses_the_real_tokenizer(comfyui):
    prompt: dict = {}
    model, clip, _ = _reference_nodes(prompt)
    mask_nodes(prompt, model, clip, None, name="mask", text="a zorblaxian cat", subject="zorblaxian, cat")
    prompt["save"] = {"class_type": "MotionCloneTestSaveMask", "inputs": {"mask": ["mask", 0], "path": "/dev/null"}}
    text = comfyui.run_prompt(prompt)["mask"]["text"][0]
    positions = [int(p) for p in text.split("tokens [")[1].split("]")[0].split(",")]
    assert positions[0] == 2 and len(positions) >= 3 and positions == list(range(2, 2 + len(positions)))

    mask_nodes(prompt, model, clip, None, name="mask", text=NEW_TEXT, subject="cat")
    with pytest.raises(PromptFailed, match="'cat' is not in the prompt.*a, ball, rolling, on, grass"):
        comfyui.run_prompt(prompt)


def test_semantic_guidance_lowers_its_own_loss(comfyui, tmp_path):
    losses = {}
    for weight in (0.0, 1000.0):
        outputs = comfyui.run_prompt(semantic_prompt(str(tmp_path / f"{weight}.safetensors"), semantic_weight=weight,
                                                     steps=8, guided_steps=5))
        losses[weight] = outputs["sample"]["semantic_loss"]
        assert len(losses[weight]) == 5
    assert losses[0.0][0] == pytest.approx(losses[1000.0][0], rel=1e-5)  # same seed, same start
    # measured: unguided 0.200 .. 0.240, guided 0.200 .. 0.189 (the targets move with the appearance branch)
    assert losses[1000.0][-1] < 0.85 * losses[0.0][-1], losses


def test_global_mode_lowers_its_own_loss(comfyui, tmp_path):
    losses = {}
    for weight in (0.0, 5000.0):
        outputs = comfyui.run_prompt(semantic_prompt(str(tmp_path / f"{weight}.safetensors"), semantic_weight=weight,
                                                     subjects=False, steps=8, guided_steps=5))
        losses[weight] = outputs["sample"]["semantic_loss"]
    assert losses[5000.0][-1] < 0.8 * losses[0.0][-1], losses


def test_semantic_weight_zero_is_motion_guidance_only_bit_for_bit(comfyui, tmp_path):
    with_node, without = tmp_path / "with.safetensors", tmp_path / "without.safetensors"
    comfyui.run_prompt(semantic_prompt(str(with_node), semantic_weight=0.0, motion_weight=2000.0))
    comfyui.run_prompt(semantic_prompt(str(without), semantic_weight=0.0, motion_weight=2000.0, semantic=False))
    assert (_load(with_node) == _load(without)).all()


def test_motion_from_an_inversion_needs_the_samplers_schedule(comfyui, tmp_path):
    prompt = semantic_prompt(str(tmp_path / "x.safetensors"), semantic_weight=0.0, motion_weight=2000.0, semantic=False)
    outputs = comfyui.run_prompt(prompt)
    assert len(outputs["sample"]["motion_loss"]) == 3
    prompt["extract"]["inputs"]["guided_steps"] = 4
    with pytest.raises(PromptFailed, match=r"holds entries for 4 guided timesteps \(t=999..700\), "
                                           r"but this sampler guides 3.*same steps, guided_steps"):
        comfyui.run_prompt(prompt)


def test_guidance_patch_takes_semantic_guidance_with_a_stock_ksampler(comfyui, tmp_path):
    outputs = {}
    for name, semantic in (("with", True), ("without", False)):
        prompt = semantic_prompt(str(tmp_path / f"{name}.safetensors"), semantic_weight=1000.0, semantic=semantic,
                                 subjects=True, motion_weight=0.0)
        prompt["guidance"] = {"class_type": "MotionCloneGuidance", "inputs": {
            "model": prompt["sample"]["inputs"]["model"], "motion": ["extract", 0], "motion_weight": 0.0,
            "guided_fraction": 0.3, "warm_up_steps": 1, "cool_down_steps": 1,
            **({"semantic_guidance": ["semantic", 0]} if semantic else {})}}
        prompt["sample"] = {"class_type": "SamplerCustom", "inputs": {
            "model": ["guidance", 0], "add_noise": True, "noise_seed": 5, "cfg": 8.5, "positive": ["new_text", 0],
            "negative": ["negative_text", 0], "sampler": ["select", 0], "sigmas": ["schedule", 0],
            "latent_image": ["empty", 0]}}
        prompt["select"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
        prompt["schedule"] = {"class_type": "MotionCloneScheduler", "inputs": {
            "model": ["apply", 0], "steps": 6, "guided_steps": 3, "guided_fraction": 0.3}}
        comfyui.run_prompt(prompt)
        outputs[name] = _load(tmp_path / f"{name}.safetensors")
    effect = (outputs["with"] - outputs["without"]).abs().max()
    assert effect > 1e-3  # the semantic term moved the latent
    sampler_path = tmp_path / "sampler.safetensors"
    comfyui.run_prompt(semantic_prompt(str(sampler_path), semantic_weight=1000.0, motion_weight=0.0))
    # With ddim over MotionClone's schedule the patch takes the sampler's guided steps exactly.
    assert (outputs["with"] - _load(sampler_path)).abs().max() < 1e-3 * effect
