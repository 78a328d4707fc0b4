"""Memory of the gradient pass: memory modes, and the classic model loading guided runs take gradients on.

Memory modes (`with_memory_mode`): object patches on the `forward` of UNet layers, and the `RECOMPUTE_KEY`
entry for motion modules, make the gradient pass recompute those layers' activations during the backward
(non-reentrant gradient checkpointing) instead of keeping them; forwards without autograd are untouched.
The gradient is the same, bit for bit, in every mode (`motionclone.memory` holds the arithmetic).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from functools import partial

import comfy.model_management
import comfy.model_patcher
import torch
import torch.utils.checkpoint
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from ...motionclone import AnimateDiffMotionModel, AttentionCapture, MotionModule
from ...motionclone.errors import IncompatibleModelError
from ...motionclone.layout import comfy_block_of, resolution_level
from ...motionclone.memory import AUTO, BALANCED, FAST, LOW, choose_memory_mode, estimate
from .run import BLOCK_LAYER_FORWARD_KEY, CAPTURE_KEY, MIDDLE_LAYER_FORWARD_KEY, PATCH_KEY, frames_per_forward

logger = logging.getLogger("MotionClone")

# UNet resolution levels (0 = latent resolution, 1 = half, ...; "middle" = the middle block) whose activations
# on the gradient path are recomputed in the backward, per memory mode.
RECOMPUTED_LEVELS = {FAST: (), BALANCED: (0, 1), LOW: (0, 1, 2, 3, "middle")}


def autograd_records(x: torch.Tensor) -> bool:
    """Whether autograd records the layer that takes `x`: the gradient pass of a guided step."""
    return torch.is_grad_enabled() and x.requires_grad


def recompute_in_backward(function, *args, capture: AttentionCapture | None = None, **kwargs):
    """Non-reentrant gradient checkpointing; the recomputation runs in `capture.replaying()`.

    The UNet draws no random numbers (dropout 0), so the RNG state need not be saved and restored.
    """
    contexts = partial(_recompute_contexts, capture)
    return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False, preserve_rng_state=False,
                                             context_fn=contexts, **kwargs)


def _recompute_contexts(capture: AttentionCapture | None):
    return nullcontext(), capture.replaying() if capture is not None else nullcontext()


class _RecomputedForward:
    """Object patch of a UNet layer's `forward`: when autograd records it (the gradient pass of a guided step)
    its activations are recomputed in the backward instead of kept; any other call is the layer's own forward."""

    def __init__(self, layer: torch.nn.Module):
        self.layer = layer

    def __call__(self, x: torch.Tensor, *args, **kwargs):
        forward = type(self.layer).forward.__get__(self.layer)
        if not autograd_records(x):
            return forward(x, *args, **kwargs)
        return recompute_in_backward(forward, x, *args, **kwargs)


class _RecomputedTransformer(_RecomputedForward):
    """`_RecomputedForward` of a SpatialTransformer, which reads the forward's `transformer_options`.

    By the time of the backward the UNet has moved that dict on (its "block" entry names the last block), and
    attention patches are looked up by block: the recomputation gets a copy taken when the layer ran.
    """

    def __call__(self, x: torch.Tensor, context=None, transformer_options={}):  # noqa: B006 - ComfyUI's signature
        forward = type(self.layer).forward.__get__(self.layer)
        if not autograd_records(x):
            return forward(x, context, transformer_options)
        snapshot = dict(transformer_options)

        def run(x: torch.Tensor, context):
            options = dict(snapshot)
            return forward(x, context, options), options

        out, written = recompute_in_backward(run, x, context, capture=snapshot.get(CAPTURE_KEY))
        transformer_options.update(written)  # what the layer writes there (its block_index...), as without us
        return out


def with_memory_mode(model: comfy.model_patcher.ModelPatcher, mode: str) -> comfy.model_patcher.ModelPatcher:
    """`model` whose UNet layers in `mode`'s `RECOMPUTED_LEVELS` recompute their activations in the gradient
    pass; `model` itself when there is nothing to change (fast on a MODEL without such patches), else a clone.

    Balanced patches the ResBlocks and SpatialTransformers of those levels; low every layer (convolutions,
    down- and up-samplers too). The motion modules of the same levels follow `recomputed_motion_modules`.
    """
    ours = [key for key, value in model.object_patches.items() if isinstance(value, _RecomputedForward)]
    if mode == FAST and not ours:
        return model
    patched = model.clone()
    for key in ours:
        del patched.object_patches[key]
    for key, patch in _recompute_patches(model.model.diffusion_model, mode).items():
        patched.add_object_patch(key, patch)
    return patched


def resolve_memory_mode(mode: str, model: comfy.model_patcher.ModelPatcher, frames: int, latent_height: int,
                        latent_width: int) -> str:
    """`mode`, or for auto the mode `choose_memory_mode` picks from the sampling device's free memory (logged)."""
    if mode != AUTO:
        return mode
    device = model.load_device
    free = comfy.model_management.get_free_memory(device)
    patchers = (model, *model.get_additional_models_with_key(PATCH_KEY))
    # Weights already on the device count in neither; on a CPU they are in RAM however "loaded".
    to_load = 0 if device == model.offload_device else sum(p.model_size() - p.loaded_size() for p in patchers)
    dtype = model.model_dtype() or torch.float32
    chosen = choose_memory_mode(free, frames, latent_height, latent_width, dtype.itemsize, to_load)
    need = estimate(chosen, frames, latent_height, latent_width, dtype.itemsize)
    logger.info("memory_mode auto chose %s for %d frames of %dx%d latent (%s): about %.2f GiB kept for the backward "
                "plus %.2f GiB working memory, %.2f GiB free on %s, %.2f GiB of weights still to load", chosen, frames,
                latent_width, latent_height, str(dtype).replace("torch.", ""), need.kept / 2**30, need.working / 2**30,
                free / 2**30, device, to_load / 2**30)
    return chosen


def memory_mode_for(mode: str, model: comfy.model_patcher.ModelPatcher, motion) -> str:
    """The concrete mode (auto resolved for the frames of one gradient pass and the MOTION's latent size).

    Through context windows a gradient pass covers one window, so its memory is a window's, whatever the clip.
    """
    meta = motion.metadata
    frames = frames_per_forward(model.model_options, meta.frames)
    return resolve_memory_mode(mode, model, frames, meta.latent_height, meta.latent_width)


def _recompute_patches(unet, mode: str) -> dict[str, _RecomputedForward]:
    levels = RECOMPUTED_LEVELS[mode]
    blocks = [("input", i, block) for i, block in enumerate(unet.input_blocks)]
    blocks += [("middle", 0, unet.middle_block)]
    blocks += [("output", i, block) for i, block in enumerate(unet.output_blocks)]
    patches = {}
    for kind, index, block in blocks:
        if resolution_level(kind, index) not in levels:
            continue
        layers = [layer for layer in block if not isinstance(layer, MotionModule)]  # the UNet without injections
        for position, layer in enumerate(layers):
            if mode != LOW and not isinstance(layer, (ResBlock, SpatialTransformer)):
                continue
            key = (MIDDLE_LAYER_FORWARD_KEY.format(layer=position) if kind == "middle"
                   else BLOCK_LAYER_FORWARD_KEY.format(kind=kind, block=index, layer=position))
            patches[key] = (
                _RecomputedTransformer if isinstance(layer, SpatialTransformer) else _RecomputedForward
            )(layer)
    return patches


def recomputed_motion_modules(motion_model: AnimateDiffMotionModel, mode: str) -> frozenset[str]:
    """Names of the motion modules whose activations the gradient pass recomputes in `mode` (`RECOMPUTE_KEY`)."""
    levels = RECOMPUTED_LEVELS[mode]
    return frozenset(module.name for module in motion_model.modules_in_forward_order()
                     if resolution_level(*comfy_block_of(module.name)) in levels)


def saved_for_backward_offload(mode: str, device: torch.device):
    """Low mode on CUDA keeps what the backward needs (the checkpoints' inputs) in pinned CPU memory."""
    if mode == LOW and device.type == "cuda":
        return torch.autograd.graph.save_on_cpu(pin_memory=True)
    return nullcontext()


def without_dynamic_vram(model: comfy.model_patcher.ModelPatcher, node: str) -> comfy.model_patcher.ModelPatcher:
    """`model`, or its classic delegate where ComfyUI loads it with dynamic VRAM (`ModelPatcherDynamic`, the
    default on NVIDIA since ComfyUI 0.16), for a node whose sampling takes gradients through the UNet.

    Dynamic VRAM (comfy-aimdo) streams weights into the GPU layer by layer, a path no backward has been shown to
    be safe on: ComfyUI's own trainer never differentiates through it, it rebuilds a non-dynamic model first. The
    delegate is ComfyUI's
    own (`get_non_dynamic_delegate`, the one hooked conditioning uses): the same checkpoint reloaded by its
    loader on the classic patcher, with every patch, option, wrapper and additional model of `model`; ComfyUI
    keeps the reloaded weights on `model` for the next run. Feature-detected: older ComfyUIs have no dynamic VRAM.
    """
    is_dynamic = getattr(model, "is_dynamic", None)
    if is_dynamic is None or not is_dynamic():
        return model
    try:
        return model.get_non_dynamic_delegate()
    except RuntimeError as error:  # a loader that registered no reload factory (cached_patcher_init)
        raise IncompatibleModelError(
            f"'{node}' takes gradients through the UNet, which runs on ComfyUI's classic model loading, but this "
            f"MODEL was loaded with dynamic VRAM by a loader that cannot reload it without ({error}). Load the "
            "checkpoint with a core loader (Load Checkpoint, Load Diffusion Model), or start ComfyUI with "
            "--disable-dynamic-vram."
        ) from None
