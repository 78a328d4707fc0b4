"""MotionClone on a real ComfyUI: extraction, motion files, the guided sampler and the guidance patch."""

from __future__ import annotations

import json
import os

import pytest
import safetensors.torch
from comfy_harness import PromptFailed
from prompts import extract_prompt, guidance_ksampler_prompt, motionclone_prompt, plain_ddim_prompt


def _latent(path: str):
    return safetensors.torch.load_file(path)["samples"]


def test_extract_save_load_sample(comfyui, tmp_path):
    comfyui.run_prompt(extract_prompt(filename_prefix="roundtrip"))
    saved = os.path.join(comfyui.models_dir, "motionclone", "roundtrip_00001_.safetensors")
    assert os.path.isfile(saved)
    from_file, direct = str(tmp_path / "file.safetensors"), str(tmp_path / "direct.safetensors")
    comfyui.run_prompt(motionclone_prompt(from_file, motion_file="roundtrip_00001_.safetensors"))
    outputs = comfyui.run_prompt(motionclone_prompt(direct))
    assert (_latent(from_file) == _latent(direct)).all()
    losses = outputs["sample"]["motion_loss"]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)



def test_weight_zero_is_plain_ddim_bit_for_bit(comfyui, tmp_path):
    guided, plain = str(tmp_path / "guided.safetensors"), str(tmp_path / "plain.safetensors")
    outputs = comfyui.run_prompt(motionclone_prompt(guided, weight=0.0, steps=6, guided_steps=3))
    comfyui.run_prompt(plain_ddim_prompt(plain, steps=6, guided_steps=3))
    assert _latent(guided).dtype == _latent(plain).dtype
    assert (_latent(guided) == _latent(plain)).all()
    assert len(outputs["sample"]["motion_loss"]) == 3  # still measured, for comparison


def test_guidance_lowers_the_motion_loss(comfyui, tmp_path):
    runs = {}
    for weight in (0.0, 2000.0):
        outputs = comfyui.run_prompt(motionclone_prompt(str(tmp_path / f"{weight}.safetensors"), weight=weight, steps=8,
                                                        guided_steps=5))
        runs[weight] = outputs["sample"]["motion_loss"]
    assert runs[0.0][0] == pytest.approx(runs[2000.0][0], rel=1e-5)  # same seed, same start
    assert runs[2000.0][-1] < 0.8 * runs[0.0][-1]


def test_guidance_patch_with_stock_ksampler_lowers_the_motion_loss(comfyui, tmp_path):
    final_losses = {}
    for weight in (0.0, 2000.0):
        report = tmp_path / f"probe_{weight}.json"
        comfyui.run_prompt(guidance_ksampler_prompt(str(tmp_path / "out.safetensors"), str(report), weight=weight,
                                                    steps=8))
        records = json.loads(report.read_text())
        assert len(records) == 8
        band = [r for r in records if _timestep(r["sigma"]) >= 500]  # guided_fraction 0.5
        assert len(band) == 4
        final_losses[weight] = band[-1]["loss"]
    assert final_losses[2000.0] < 0.8 * final_losses[0.0]


def _timestep(sigma: float) -> int:
    """Nearest training timestep of `sigma` under AnimateDiff's schedule (diffusers "linear" betas)."""
    import torch

    alpha_bar = torch.cumprod(1 - torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64), 0)
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()
    return int((sigmas.log() - torch.tensor(sigma, dtype=torch.float64).log()).abs().argmin())


def test_guidance_patch_with_euler_follows_the_sampler(comfyui, tmp_path):
    """For Euler/DDIM the wrapper's shifted estimate gives the official guided step: same trajectory."""
    sampler_path, patch_path = str(tmp_path / "sampler.safetensors"), str(tmp_path / "patch.safetensors")
    comfyui.run_prompt(motionclone_prompt(sampler_path, weight=2000.0, steps=6, guided_steps=3))
    prompt = motionclone_prompt(patch_path, weight=2000.0, steps=6, guided_steps=3)
    prompt.update({
        "guidance": {"class_type": "MotionCloneGuidance", "inputs": {
            "model": ["apply", 0], "motion": ["extract", 0], "motion_weight": 2000.0, "guided_fraction": 0.3,
            "warm_up_steps": 1, "cool_down_steps": 1}},
        "schedule": {"class_type": "MotionCloneScheduler", "inputs": {
            "model": ["apply", 0], "steps": 6, "guided_steps": 3, "guided_fraction": 0.3}},
        "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "sample": {"class_type": "SamplerCustom", "inputs": {
            "model": ["guidance", 0], "add_noise": True, "noise_seed": 5, "cfg": 8.5, "positive": ["positive", 0],
            "negative": ["negative", 0], "sampler": ["select", 0], "sigmas": ["schedule", 0],
            "latent_image": ["latent", 0]}},
    })
    comfyui.run_prompt(prompt)
    unguided = str(tmp_path / "unguided.safetensors")
    comfyui.run_prompt(motionclone_prompt(unguided, weight=0.0, steps=6, guided_steps=3))
    guided, patched, plain = _latent(sampler_path), _latent(patch_path), _latent(unguided)
    assert (guided - plain).abs().max() > 1e-2  # guidance changed the result ...
    assert (patched - guided).abs().max() < 1e-3 * (guided - plain).abs().max()  # ... and both forms agree


def test_mismatched_sizes_name_both_sizes(comfyui, tmp_path):
    prompt = motionclone_prompt(str(tmp_path / "x.safetensors"), latent_size=(3, 128, 96))
    with pytest.raises(PromptFailed) as failure:
        comfyui.run_prompt(prompt)
    message = str(failure.value)
    assert "MotionMismatchError" in message
    assert "4 frames of 128x128 px" in message and "3 frames of 128x96 px" in message
    assert "batch size" in message


def test_interrupt_inside_the_gradient_pass_leaves_the_model_reusable(comfyui, tmp_path):
    reference, again = str(tmp_path / "reference.safetensors"), str(tmp_path / "again.safetensors")
    comfyui.run_prompt(motionclone_prompt(reference))
    # UNet call 3 is the conditional (gradient) forward of the second guided step.
    with pytest.raises(PromptFailed) as failure:
        comfyui.run_prompt(motionclone_prompt(str(tmp_path / "never.safetensors"), interrupt_at_call=3))
    assert any(message[0] == "execution_interrupted" for message in failure.value.details)
    assert not os.path.exists(tmp_path / "never.safetensors")
    comfyui.run_prompt(motionclone_prompt(again))
    assert (_latent(reference) == _latent(again)).all()


@pytest.mark.parametrize("damage, expected", [
    ("newer", "Update the ComfyUI-MotionClone node pack"),
    ("truncated", "cannot be read"),
])
def test_load_motion_rejects_newer_or_damaged_files(comfyui, tmp_path, damage, expected):
    comfyui.run_prompt(extract_prompt(filename_prefix=f"source_{damage}"))
    folder = os.path.join(comfyui.models_dir, "motionclone")
    source = os.path.join(folder, f"source_{damage}_00001_.safetensors")
    target = os.path.join(folder, f"{damage}.safetensors")
    if damage == "newer":
        tensors = safetensors.torch.load_file(source)
        with safetensors.safe_open(source, framework="pt") as handle:
            header = dict(handle.metadata())
        header["motionclone.format"] = "99"
        safetensors.torch.save_file(tensors, target, metadata=header)
    else:
        with open(source, "rb") as f:
            data = f.read()
        with open(target, "wb") as f:
            f.write(data[: len(data) // 2])
    with pytest.raises(PromptFailed) as failure:
        comfyui.run_prompt(motionclone_prompt(str(tmp_path / "x.safetensors"), motion_file=f"{damage}.safetensors"))
    assert "MotionFileError" in str(failure.value) and expected in str(failure.value)


def test_gradient_pass_keeps_a_graph_only_up_to_the_guided_blocks(comfyui, tmp_path):
    report = tmp_path / "graph.json"
    comfyui.run_prompt(motionclone_prompt(str(tmp_path / "x.safetensors"), steps=4, guided_steps=2,
                                          graph_report=str(report)))
    calls = json.loads(report.read_text())
    assert len(calls) == 2 * 2 + 2  # guided steps: cond (gradient) and uncond calls; plain steps: one batched call
    for record in (calls[0], calls[2]):  # up_blocks.1 = output_blocks 3..5; its last motion module ends the graph
        assert [record[str(i)] for i in range(12)] == [True] * 5 + [False] * 7
    for record in (calls[1], calls[3], calls[4], calls[5]):
        assert not any(record.values())


def test_progress_bar_advances_once_per_step(comfyui, tmp_path):
    import comfy.utils

    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        comfyui.run_prompt(motionclone_prompt(str(tmp_path / "x.safetensors"), steps=5, guided_steps=2))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert updates[-5:] == [(i, 5) for i in range(1, 6)]


def test_extraction_without_clip_or_conditioning_says_what_to_connect(comfyui, tmp_path):
    prompt = motionclone_prompt(str(tmp_path / "x.safetensors"))
    del prompt["extract"]["inputs"]["conditioning"]
    with pytest.raises(PromptFailed, match="Connect 'clip'"):
        comfyui.run_prompt(prompt)


def test_crop_and_stretch_extract_different_motions_of_the_same_size(comfyui, tmp_path):
    losses = {}
    for resize in ("stretch", "crop"):
        outputs = comfyui.run_prompt(motionclone_prompt(str(tmp_path / f"{resize}.safetensors"), weight=0.0,
                                                        resize=resize))
        losses[resize] = outputs["sample"]["motion_loss"]
        assert "latent 16x16" in outputs["extract"]["text"][0]
    assert losses["stretch"] != losses["crop"]
