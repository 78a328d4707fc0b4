"""'MotionClone: Context Windows' on a real ComfyUI: windowed forwards, extraction, guided sampling, refusals."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from comfy_harness import PromptFailed, loaded_pack_module
from long_video_runs import kept_for_backward_of_a_guided_run, tiny_models
from prompts import (
    extract_prompt,
    guidance_ksampler_prompt,
    motionclone_prompt,
    video_prompt,
)


def _latent(path) -> torch.Tensor:
    return safetensors.torch.load_file(str(path))["samples"]


def with_windows(prompt: dict, length: int = 16, overlap: int = 4, schedule: str = "uniform", fusion: str = "pyramid",
                 after: str = "apply") -> dict:
    """The prompt with a Context Windows node after `after`, feeding every node that used `after`'s MODEL."""
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if value == [after, 0]:
                node["inputs"][name] = ["context", 0]
    prompt["context"] = {"class_type": "MotionCloneContextWindows", "inputs": {
        "model": [after, 0], "length": length, "overlap": overlap, "schedule": schedule, "fusion": fusion}}
    return prompt


def with_frames(prompt: dict, frames: int) -> dict:
    prompt["latent"]["inputs"]["batch_size"] = frames
    if "clip" in prompt:
        prompt["clip"]["inputs"]["frames"] = frames
    return prompt


def _one_step(model, noise, positive, negative, sigma, cfg=7.5):
    """One euler step from sigma to 0: the sampler's clean estimate of `noise * sigma`, i.e. one forward pair."""
    import comfy.sample
    import comfy.samplers

    sampler = comfy.samplers.ksampler("euler")
    sigmas = torch.tensor([sigma, 0.0])
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative, torch.zeros_like(noise),
                                      disable_pbar=True)


@pytest.mark.parametrize("schedule,fusion", [("uniform", "pyramid"), ("looped", "flat")])
def test_a_windowed_forward_is_the_fusion_of_its_windows_forwards(comfyui, schedule, fusion):
    windows = loaded_pack_module("motionclone.windows")
    with torch.inference_mode():
        plain, windowed = tiny_models(comfyui, 8, 3, schedule, fusion)
        positive = comfyui.node("MotionCloneTestRandomConditioning")().build(2)[0]
        negative = comfyui.node("MotionCloneTestRandomConditioning")().build(3)[0]
        noise = torch.randn(20, 4, 16, 16, generator=torch.Generator().manual_seed(0))
        whole = _one_step(windowed, noise, positive, negative, 5.0)
        layout = windows.ContextWindows(8, 3, schedule, fusion).windows_for(20)
        per_window = [_one_step(plain, noise[w], positive, negative, 5.0) for w in layout]
        window_free = _one_step(plain, noise, positive, negative, 5.0)
    expected = windows.fuse(per_window, layout, 20, fusion)
    assert len(layout) == 4 and whole.shape == noise.shape
    assert torch.allclose(whole, expected, rtol=1e-4, atol=1e-5), (whole - expected).abs().max()
    # Not a window-free forward of all 20 frames: the motion modules saw 8 frames at a time.
    assert not torch.allclose(whole, window_free, atol=1e-4)


def test_stock_ksampler_samples_40_frames_in_windows_on_both_versions(comfyui, tmp_path):
    video = tmp_path / "long.safetensors"
    comfyui.run_prompt(with_windows(video_prompt(str(video), motion_module="tiny_v3.safetensors", frames=40, steps=2)))
    assert _latent(video).shape == (40, 4, 16, 16) and torch.isfinite(_latent(video)).all()


def test_without_windows_40_frames_are_refused_and_the_error_names_the_node(comfyui, tmp_path):
    with pytest.raises(PromptFailed,
                       match="40 frames but the motion module supports at most 32.*'MotionClone: Context Windows'"):
        comfyui.run_prompt(video_prompt(str(tmp_path / "x.safetensors"), motion_module="tiny_v3.safetensors",
                                        frames=40, steps=1))
    with pytest.raises(PromptFailed, match="'length' is 33 frames, but the motion module .* at most 32"):
        comfyui.run_prompt(with_windows(video_prompt(str(tmp_path / "x.safetensors"),
                                                     motion_module="tiny_v3.safetensors", frames=40, steps=1),
                                        length=33))


def test_windowed_extraction_holds_one_entry_per_window_and_guides_a_long_clip(comfyui, tmp_path):
    out = tmp_path / "guided.safetensors"
    prompt = with_windows(with_frames(motionclone_prompt(str(out), steps=4, guided_steps=2), 40))
    outputs = comfyui.run_prompt(prompt)
    assert _latent(out).shape == (40, 4, 16, 16) and torch.isfinite(_latent(out)).all()
    losses = outputs["sample"]["motion_loss"]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    comfyui.run_prompt(with_windows(with_frames(extract_prompt(filename_prefix="windowed40"), 40)))
    loaded = loaded_pack_module("motionclone.motion_file").load_motion(
        f"{comfyui.models_dir}/motionclone/windowed40_00001_.safetensors")
    meta = loaded.metadata
    assert meta.windowed and meta.windows == [tuple(range(16)), tuple(range(12, 28)), tuple(range(24, 40))]
    assert next(iter(loaded.values.values())).shape[0] == 3 and next(iter(loaded.values.values())).shape[-2] == 16


def test_guidance_and_ksampler_guide_a_long_clip_window_by_window(comfyui, tmp_path):
    runs = {}
    for weight in (0.0, 2000.0):
        prompt = guidance_ksampler_prompt(str(tmp_path / f"{weight}.safetensors"), str(tmp_path / "r.json"),
                                          weight=weight, steps=4)
        prompt["sample"]["inputs"]["model"] = ["guidance", 0]  # the loss probe reads all frames at once
        del prompt["probe"]
        comfyui.run_prompt(with_windows(with_frames(prompt, 40)))
        runs[weight] = _latent(tmp_path / f"{weight}.safetensors")
    assert runs[0.0].shape == (40, 4, 16, 16) and not torch.equal(runs[0.0], runs[2000.0])
    # Every window is guided: frames in each window change.
    changed = (runs[0.0] - runs[2000.0]).flatten(1).abs().amax(1)
    assert bool((changed > 0).all()), changed


def test_a_motion_read_in_other_windows_is_refused_naming_both_layouts_and_the_fix(comfyui, tmp_path):
    prompt = with_frames(motionclone_prompt(str(tmp_path / "x.safetensors"), steps=2, guided_steps=1), 40)
    prompt = with_windows(prompt, length=16, overlap=4)
    prompt["extract"]["inputs"]["model"] = ["windows2", 0]
    prompt["windows2"] = {"class_type": "MotionCloneContextWindows", "inputs": {
        "model": ["apply", 0], "length": 16, "overlap": 8, "schedule": "uniform", "fusion": "pyramid"}}
    with pytest.raises(PromptFailed, match=r"read in 4 windows of 16 frames \(overlap 8, uniform\) of its 40 frames, "
                       r"but this MODEL samples its 40 frames in 3 windows of 16 frames \(overlap 4, uniform\)\. "
                       "Wire the same "
                       "'MotionClone: Context Windows' node before both 'Extract Motion' and the sampler") as error:
        comfyui.run_prompt(prompt)
    assert error.value.details["exception_type"].endswith("MotionMismatchError")


@pytest.mark.parametrize("face", ["sampler", "guidance"])
def test_one_window_covering_the_clip_is_bit_identical_to_window_free_sampling(comfyui, tmp_path, face):
    latents = {}
    for windowed in (False, True):
        path = tmp_path / f"{face}_{windowed}.safetensors"
        if face == "sampler":
            prompt = motionclone_prompt(str(path), steps=4, guided_steps=2)
        else:
            prompt = guidance_ksampler_prompt(str(path), str(tmp_path / f"r{windowed}.json"), weight=2000.0, steps=4)
        if windowed:
            prompt = with_windows(prompt, length=4, overlap=2)  # the prompts' clips have 4 frames: one window
        comfyui.run_prompt(prompt)
        latents[windowed] = _latent(path)
    assert torch.equal(latents[False], latents[True])


def test_ksampler_with_one_window_is_bit_identical_to_window_free(comfyui, tmp_path):
    plain, windowed = tmp_path / "plain.safetensors", tmp_path / "windowed.safetensors"
    comfyui.run_prompt(video_prompt(str(plain), motion_module="tiny_v3.safetensors", frames=16, steps=2))
    comfyui.run_prompt(
        with_windows(video_prompt(str(windowed), motion_module="tiny_v3.safetensors", frames=16, steps=2))
    )
    assert torch.equal(_latent(plain), _latent(windowed))


def test_core_context_windows_and_ours_on_one_model_are_refused(comfyui, tmp_path):
    if "ContextWindowsManual" not in comfyui.nodes.NODE_CLASS_MAPPINGS:
        pytest.skip("this ComfyUI has no core context-window nodes")
    prompt = video_prompt(str(tmp_path / "x.safetensors"), motion_module="tiny_v3.safetensors", frames=40,
                          context_length=16, steps=1)
    prompt = with_windows(prompt, after="apply")  # ours before core's
    with pytest.raises(PromptFailed, match="both 'MotionClone: Context Windows' and ComfyUI's own context windows"):
        comfyui.run_prompt(prompt)


def test_a_64_frame_windowed_guided_step_keeps_what_a_16_frame_step_keeps_for_backward(comfyui):
    with torch.inference_mode():
        plain, windowed = tiny_models(comfyui, 16, 4)
        sixteen = kept_for_backward_of_a_guided_run(comfyui, plain, 16)
        thirty_two = kept_for_backward_of_a_guided_run(comfyui, plain, 32)
        sixty_four = kept_for_backward_of_a_guided_run(comfyui, windowed, 64)
    # The measure grows with the frames of one gradient pass (window-free 32 frames: about twice 16's) ...
    assert thirty_two > 1.8 * sixteen, (sixteen, thirty_two)
    # ... and 64 frames in 5 windows of 16 keep one window's worth.
    assert abs(sixty_four - sixteen) <= 0.1 * sixteen, (sixteen, sixty_four)
