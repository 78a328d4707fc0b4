"""The gradient pass's weights: ordinary aliases of ComfyUI's inference-mode tensors, never a second copy."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch
from comfy_harness import loaded_pack_module
from prompts import FRAMES

BLOCKS = ("up_blocks.1",)


def _write_lora(path):
    """A rank-2 LoRA on attention layers before and inside up_blocks.1 (ComfyUI re-creates those weights at load)."""
    generator = torch.Generator().manual_seed(5)
    state = {}
    for block, width in (("input_blocks.1.1", 32), ("output_blocks.3.1", 128), ("output_blocks.4.1", 128)):
        base = f"diffusion_model.{block}.transformer_blocks.0.attn1.to_q"
        state[f"{base}.lora_up.weight"] = torch.randn(width, 2, generator=generator) * 0.1
        state[f"{base}.lora_down.weight"] = torch.randn(2, width, generator=generator) * 0.1
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors.torch.save_file(state, path)


def _weights(patcher, motion_model):
    """(module, name) -> tensor of every parameter and buffer of the UNet and the motion model."""
    found = {}
    for root in (patcher.model.diffusion_model, motion_model):
        for module in root.modules():
            for name, tensor in (*module._parameters.items(), *module._buffers.items()):
                if tensor is not None:
                    found[(id(module), name)] = tensor
    return found


def _copy_like_the_old_pass(patching, run, inner_model):
    """The gradient pass before aliases: every inference tensor on the path replaced by a copy (the reference)."""
    with torch.inference_mode(False):
        for root in loaded_pack_module("nodes.engine.gradient")._modules_on_path(run, inner_model, BLOCKS):
            for module in root.modules():
                for name, param in module._parameters.items():
                    if param is not None and param.is_inference():
                        module._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                for name, buffer in module._buffers.items():
                    if buffer is not None and buffer.is_inference():
                        module._buffers[name] = buffer.clone()


def _first_gradient(comfyui, lora: str | None, copy_first: bool) -> dict:
    import comfy.patcher_extension

    gradient, patching = loaded_pack_module("nodes.engine.gradient"), loaded_pack_module("nodes.engine.run")
    found: dict = {}

    def loss_fn(capture):
        return sum(((p - torch.eye(p.shape[-1])) ** 2).mean() for p in capture.probs.values())

    def predict_noise(executor, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        if "grad" not in found:
            guider = executor.class_obj
            run = patching.current_run(model_options)
            found["loaded"] = _weights(guider.model_patcher, run.motion_model)
            if copy_first:
                _copy_like_the_old_pass(patching, run, guider.inner_model)
            before = _weights(guider.model_patcher, run.motion_model)
            _, loss, grad = gradient.attention_gradient(run, guider.inner_model, guider.conds["positive"], x, timestep,
                                                        model_options, BLOCKS, loss_fn)
            found.update(loss=loss, grad=grad, before=before, after=_weights(guider.model_patcher, run.motion_model))
        return executor(x, timestep, model_options, seed)

    with torch.inference_mode():
        model = comfyui.node("MotionCloneTestTinySD15")().build(seed=1)[0]
        if lora:
            model = comfyui.node("LoraLoaderModelOnly")().load_lora_model_only(model, lora, 1.0)[0]
        motion = comfyui.node("MotionCloneLoadAnimateDiff").execute(motion_module="tiny_v3.safetensors").args[0]
        patched = comfyui.node("MotionCloneApplyAnimateDiff").execute(
            model=model, motion_model=motion, beta_schedule="sqrt_linear"
        ).args[0]
        patched.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.PREDICT_NOISE, "motionclone_test_weights", predict_noise
        )
        positive = comfyui.node("MotionCloneTestRandomConditioning")().build(2)[0]
        negative = comfyui.node("MotionCloneTestRandomConditioning")().build(3)[0]
        latent = {"samples": torch.zeros(FRAMES, 4, 16, 16)}
        comfyui.node("KSampler")().sample(patched, 3, 1, 7.5, "ddim", "ddim_uniform", positive, negative, latent)
    return found


def _storages(weights: dict) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in weights.values()}


@pytest.mark.parametrize("lora", [None, "tiny_weights_lora.safetensors"])
def test_gradient_pass_aliases_the_weights_and_keeps_the_gradient_bit_identical(comfyui, lora):
    if lora:
        _write_lora(os.path.join(comfyui.models_dir, "loras", lora))
    aliased = _first_gradient(comfyui, lora, copy_first=False)
    copied = _first_gradient(comfyui, lora, copy_first=True)
    assert torch.isfinite(aliased["grad"]).all() and aliased["grad"].abs().sum() > 0
    assert torch.equal(aliased["grad"], copied["grad"]) and torch.equal(aliased["loss"], copied["loss"])

    before, after = aliased["before"], aliased["after"]
    swapped = [key for key in before if after[key] is not before[key]]
    assert len(swapped) > 100 and all(before[key].is_inference() and not after[key].is_inference() for key in swapped)
    # Every swapped tensor views the memory of the one it replaced: no byte of weights was copied.
    assert all(after[key].data_ptr() == before[key].data_ptr() for key in swapped)
    assert _storages(after) == _storages(before)
    # The old pass's copies had memory of their own: the check above catches a copy.
    copies = [key for key in copied["loaded"] if copied["before"][key] is not copied["loaded"][key]]
    assert len(copies) == len(swapped)
    assert all(copied["before"][key].data_ptr() != copied["loaded"][key].data_ptr() for key in copies)
