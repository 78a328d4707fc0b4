"""Memory modes of the gradient pass on a real ComfyUI (tiny models): same latents, fewer bytes kept, auto's log."""

from __future__ import annotations

import logging
import weakref

import pytest
import safetensors.torch
import torch
from inversion_prompts import semantic_prompt
from prompts import guidance_ksampler_prompt, motionclone_prompt, plain_ddim_prompt

RECOMPUTING_MODES = ("balanced", "low")


def _load(path) -> torch.Tensor:
    return safetensors.torch.load_file(str(path))["samples"]


def _sampler_prompt(path, mode: str | None) -> dict:
    prompt = motionclone_prompt(str(path), steps=5, guided_steps=3)
    if mode is not None:
        prompt["sample"]["inputs"]["memory_mode"] = mode
    return prompt


def _guidance_prompt(path, mode: str | None) -> dict:
    prompt = guidance_ksampler_prompt(str(path), str(path) + ".json", weight=2000.0, steps=6)
    if mode is not None:
        prompt["guidance"]["inputs"]["memory_mode"] = mode
    return prompt


def _semantic_sampler_prompt(path, mode: str | None) -> dict:
    """Motion and location-aware semantic guidance with subject masks, on up_blocks.1 and .2: the gradient path
    then reaches the half-resolution output blocks (output_blocks 6-8), which balanced recomputes too."""
    prompt = semantic_prompt(str(path), semantic_weight=1000.0, motion_weight=2000.0, subjects=True)
    prompt["semantic"]["inputs"]["weight_up_blocks_2"] = 500.0
    if mode is not None:
        prompt["sample"]["inputs"]["memory_mode"] = mode
    return prompt


def _semantic_guidance_prompt(path, mode: str | None) -> dict:
    """The same guidance through 'MotionClone: Guidance' and SamplerCustom (ddim over MotionClone's schedule)."""
    prompt = _semantic_sampler_prompt(path, None)
    prompt["guidance"] = {"class_type": "MotionCloneGuidance", "inputs": {
        "model": prompt["sample"]["inputs"]["model"], "motion": ["extract", 0], "motion_weight": 2000.0,
        "guided_fraction": 0.3, "warm_up_steps": 1, "cool_down_steps": 1, "semantic_guidance": ["semantic", 0],
        **({"memory_mode": mode} if mode is not None else {})}}
    prompt["select"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}}
    prompt["schedule"] = {"class_type": "MotionCloneScheduler", "inputs": {
        "model": ["apply", 0], "steps": 6, "guided_steps": 3, "guided_fraction": 0.3}}
    prompt["sample"] = {"class_type": "SamplerCustom", "inputs": {
        "model": ["guidance", 0], "add_noise": True, "noise_seed": 5, "cfg": 8.5, "positive": ["new_text", 0],
        "negative": ["negative_text", 0], "sampler": ["select", 0], "sigmas": ["schedule", 0],
        "latent_image": ["empty", 0]}}
    return prompt


def _windowed_sampler_prompt(path, mode: str | None) -> dict:
    """A 20-frame clip in context windows of 8 (overlap 2): each window's gradient pass runs in `mode`."""
    from test_context_windows import with_frames, with_windows

    return with_windows(with_frames(_sampler_prompt(path, mode), 20), length=8, overlap=2)


PROMPTS = {
    "sampler": _sampler_prompt,
    "guidance + ksampler": _guidance_prompt,
    "sampler, semantic + subject masks": _semantic_sampler_prompt,
    "guidance + samplercustom, semantic + subject masks": _semantic_guidance_prompt,
    "sampler, 20 frames in context windows": _windowed_sampler_prompt,
}


@pytest.mark.parametrize("graph", list(PROMPTS))
def test_balanced_and_low_sample_the_same_latent_as_fast_bit_for_bit(comfyui, tmp_path, graph):
    make = PROMPTS[graph]
    comfyui.run_prompt(make(tmp_path / "fast.safetensors", "fast"))
    fast = _load(tmp_path / "fast.safetensors")
    for mode in RECOMPUTING_MODES:
        comfyui.run_prompt(make(tmp_path / f"{mode}.safetensors", mode))
        assert torch.equal(_load(tmp_path / f"{mode}.safetensors"), fast), mode


def test_weight_zero_in_low_mode_is_plain_ddim_bit_for_bit(comfyui, tmp_path):
    guided, plain = tmp_path / "guided.safetensors", tmp_path / "plain.safetensors"
    prompt = motionclone_prompt(str(guided), weight=0.0, steps=6, guided_steps=3)
    prompt["sample"]["inputs"]["memory_mode"] = "low"
    comfyui.run_prompt(prompt)
    comfyui.run_prompt(plain_ddim_prompt(str(plain), steps=6, guided_steps=3))
    assert torch.equal(_load(guided), _load(plain))


def _kept_for_backward(comfyui, prompt: dict) -> tuple[int, int]:
    """The most bytes autograd held saved for a backward at any moment of the prompt (distinct storages, other
    than the weights', which a linear layer saves as a transposed view): the peak over its gradient passes;
    and the bytes still held when the prompt has finished.

    An outer saved-tensor hook sees what a checkpoint keeps (its inputs), not what it recomputes. A saved
    tensor is held until its graph is freed; a finalizer on it tells when.
    """
    events: list[tuple[int, int, int]] = []  # (storage address, bytes, +1 saved / -1 released)

    def pack(tensor):
        storage = tensor.untyped_storage()
        events.append((storage.data_ptr(), storage.nbytes(), 1))
        weakref.finalize(tensor, events.append, (storage.data_ptr(), storage.nbytes(), -1))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        comfyui.run_prompt(prompt)
    import comfy.model_management

    weights = {t.untyped_storage().data_ptr() for loaded in comfy.model_management.current_loaded_models
               for t in (*loaded.model.model.parameters(), *loaded.model.model.buffers())}
    holders: dict[int, int] = {}  # storage address -> saved tensors holding it
    held = peak = 0
    for address, size, change in events:
        if address in weights:
            continue
        holders[address] = holders.get(address, 0) + change
        if change == 1 and holders[address] == 1:
            held += size
        elif change == -1 and holders[address] == 0:
            held -= size
        peak = max(peak, held)
    return peak, held


def test_recomputing_modes_keep_fewer_bytes_for_backward(comfyui, tmp_path):
    kept, left = {}, {}
    for mode in ("fast", "balanced", "low"):
        kept[mode], left[mode] = _kept_for_backward(comfyui, _sampler_prompt(tmp_path / f"{mode}.safetensors", mode))
    # measured (4 frames of 128x128, tiny UNet, 3 guided steps): fast 31.2 MiB, balanced 11.7 MiB, low 2.1 MiB
    assert left == {"fast": 0, "balanced": 0, "low": 0}  # each step's graph is freed (no reference cycle keeps it)
    assert kept["balanced"] < 0.6 * kept["fast"], kept
    assert kept["low"] < 0.25 * kept["balanced"], kept


def test_auto_picks_fast_when_memory_is_plentiful_and_logs_it(comfyui, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="MotionClone"):
        comfyui.run_prompt(_sampler_prompt(tmp_path / "auto.safetensors", "auto"))
    chosen = [r.getMessage() for r in caplog.records
              if r.name == "MotionClone" and "memory_mode auto chose" in r.getMessage()]
    assert len(chosen) == 1 and chosen[0].startswith("memory_mode auto chose fast for 4 frames of 16x16 latent"), chosen
