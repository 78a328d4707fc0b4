"""All ModelPatcher wiring of the pack, with its keys as constants.

How AnimateDiff reaches a ComfyUI MODEL (no monkeypatching, nothing global):
- the motion model is built from ComfyUI's layer classes (`comfy.ops`), in the weight and compute dtypes
  ComfyUI gives an SD1.5 UNet, and follows the MODEL's own dtypes at 'Apply AnimateDiff' (a converted
  copy when they differ), so fp16/fp8 storage, manual casting and low-VRAM loading work as for the UNet;
- the motion model rides along as an *additional model* of the patched clone, so ComfyUI loads and
  offloads it together with the UNet;
- a `PatcherInjection` inserts its motion modules into the UNet blocks when ComfyUI patches the model
  for sampling, and removes them when the model is unpatched or another clone is loaded;
- a `forward_timestep_embed_patch` tells ComfyUI's UNet how to call them (with the frame count and the
  per-forward `AttentionCapture`, both read from `transformer_options`);
- a `model_sampling` object patch switches to the beta schedule AnimateDiff was trained with;
- an OUTER_SAMPLE wrapper creates one `SamplingRun` per sampling run and removes it in `finally`, with the
  weights the gradient pass aliased put back: patch objects are shared between a MODEL's clones (ComfyUI
  0.14 and newer) and hold nothing of a run, so none needs ComfyUI's after-sampling `cleanup()`;
- 'MotionClone: Guidance' adds a PREDICT_NOISE wrapper that applies motion guidance in any sampler;
- 'MotionClone: Context Windows' puts its `ContextWindows` into `transformer_options[WINDOWS_KEY]` and adds
  a CALC_COND_BATCH wrapper that runs every forward over more frames than a window window by window;
- forwards that record attention get a copy of the model options with the run's `AttentionCapture`
  (`with_capture`), `attn2` replace patches for cross-attention, and, in the gradient pass, an attention
  override to PyTorch's SDPA (some kernels ComfyUI can be started with have no backward);
- the gradient pass of a guided step runs in `gradient_recording()`, on weights made autograd-ready by
  `prepare_gradient_path` (ordinary aliases of the same memory, no copies), and autograd is switched off
  after the last guided motion module;
- memory modes (`with_memory_mode`): object patches on the `forward` of UNet layers, and the `RECOMPUTE_KEY`
  entry for motion modules, make the gradient pass recompute those layers' activations during the backward
  (non-reentrant gradient checkpointing) instead of keeping them; forwards without autograd are untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import comfy.ldm.modules.attention
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.ops
import comfy.patcher_extension
import comfy.supported_models
import torch
import torch.utils.checkpoint
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from ..motionclone import (
    AnimateDiffMotionModel,
    AttentionCapture,
    ForwardStopped,
    MotionModule,
    MotionModuleSpec,
    attend,
    attention_probs,
    convert_motion_model,
    load_motion_module,
)
from ..motionclone.errors import FrameCountError, IncompatibleModelError
from ..motionclone.layout import SD15_INPUT_BLOCKS, SD15_OUTPUT_BLOCKS, comfy_block_of
from ..motionclone.windows import ContextWindows
from ..motionclone.memory import AUTO, BALANCED, FAST, LOW, choose_memory_mode, estimate

if TYPE_CHECKING:
    from .guided_step import GuidanceRun

logger = logging.getLogger("MotionClone")

PATCH_KEY = "motionclone"  # wrappers, injections and additional models of this pack
RUN_STATE_KEY = "motionclone_run"  # transformer_options entry holding the SamplingRun of a sampling run
CAPTURE_KEY = "motionclone_capture"  # transformer_options entry holding the AttentionCapture of one forward
GUIDANCE_KEY = "motionclone_guidance"  # PREDICT_NOISE wrapper of 'MotionClone: Guidance'
ADE_KEY = "ADE"  # AnimateDiff-Evolved's key for its injections, wrappers and additional models
ATTENTION_OVERRIDE_KEY = "optimized_attention_override"  # transformer_options entry ComfyUI's attention obeys
WINDOWS_KEY = "motionclone_windows"  # transformer_options entry and CALC_COND_BATCH wrapper of 'Context Windows'
CORE_CONTEXT_KEY = "context_handler"  # model_options entry of ComfyUI's own context-window nodes
MULTIGPU_KEY = "multigpu"  # additional models of ComfyUI's 'MultiGPU Work Units': a MODEL's clones for other GPUs
MULTIGPU_CLONES_KEY = "multigpu_clones"  # model_options entry of a sampling run that spreads forwards over GPUs
RECOMPUTE_KEY = "motionclone_recompute"  # transformer_options entry: motion modules the gradient pass recomputes
# Object-patch keys of UNet layers' forwards, indexed as in the UNet without motion modules: ComfyUI applies
# object patches with injections ejected (ModelPatcher.patch_model's `use_ejected`).
BLOCK_LAYER_FORWARD_KEY = "diffusion_model.{kind}_blocks.{block}.{layer}.forward"
MIDDLE_LAYER_FORWARD_KEY = "diffusion_model.middle_block.{layer}.forward"

# UNet resolution levels (0 = latent resolution, 1 = half, ...; "middle" = the middle block) whose activations
# on the gradient path are recomputed in the backward, per memory mode.
RECOMPUTED_LEVELS = {FAST: (), BALANCED: (0, 1), LOW: (0, 1, 2, 3, "middle")}

BETA_SCHEDULES = {
    # AnimateDiff's training schedule: diffusers "linear" is ComfyUI "sqrt_linear".
    "sqrt_linear": {"beta_schedule": "sqrt_linear", "linear_start": 0.00085, "linear_end": 0.012},
    # SD1.5's own schedule (diffusers "scaled_linear").
    "linear": {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012},
}
KEEP_MODEL_SCHEDULE = "keep MODEL's"


@dataclass
class SamplingRun:
    """Per-run state of a motion-patched MODEL; lives in `transformer_options[RUN_STATE_KEY]`.

    Created by the OUTER_SAMPLE wrapper for each sampling run and removed in its `finally`, so nothing
    outlives the run. `guidance` is the state of the run's motion guidance, made at its first guided step;
    `aliases` the weights `prepare_gradient_path` replaced, put back by `release_gradient_path`.
    """

    motion_model: AnimateDiffMotionModel
    frames: int
    guidance: GuidanceRun | None = None
    aliases: list[WeightAlias] = field(default_factory=list)


@dataclass(frozen=True)
class WeightAlias:
    """A weight of `table` (a module's `_parameters` or `_buffers`) replaced by an ordinary alias of its memory;
    `address` is where the alias's data lay when it was made (moved since, it is no longer the original's)."""

    table: dict
    name: str
    original: torch.Tensor
    alias: torch.Tensor
    address: tuple[torch.device, int]


def wrap_motion_model(motion_model: AnimateDiffMotionModel) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher that lets ComfyUI's memory manager move the motion model with the UNet."""
    return comfy.model_patcher.ModelPatcher(
        motion_model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def load_motion_model(path: str) -> tuple[comfy.model_patcher.ModelPatcher, MotionModuleSpec]:
    """Read a motion-module file into ComfyUI's layer classes, in the dtypes ComfyUI would give an SD1.5 UNet.

    The weight dtype is `unet_dtype` (its flags first: --fp16-unet, --fp8_e4m3fn-unet, ...), the compute
    dtype `unet_manual_cast` of it (None: the weights' own), both for the device the model will run on.
    """
    load_device = comfy.model_management.get_torch_device()
    supported = comfy.supported_models.SD15.supported_inference_dtypes
    weight_dtype = comfy.model_management.unet_dtype(device=load_device, supported_dtypes=supported)
    compute_dtype = comfy.model_management.unet_manual_cast(weight_dtype, load_device, supported)
    model, spec = load_motion_module(path, motion_operations(weight_dtype, compute_dtype), weight_dtype, compute_dtype)
    return wrap_motion_model(model), spec


def motion_operations(weight_dtype: torch.dtype, compute_dtype: torch.dtype | None):
    """ComfyUI's layer classes for weights stored in `weight_dtype` and computed in `compute_dtype`.

    `manual_cast` casts the weights per call; `disable_weight_init` computes in the weights' dtype unless
    ComfyUI's low-VRAM loading switches casting on. Not `pick_operations`' fast fp8 or cuBLAS layers: the
    gradient pass differentiates through the motion modules, and torch's scaled fp8 matmul has no backward.
    """
    if compute_dtype is None or compute_dtype == weight_dtype:
        return comfy.ops.disable_weight_init
    return comfy.ops.manual_cast


def _dtypes_of_motion_model(motion_model: AnimateDiffMotionModel) -> tuple[torch.dtype, torch.dtype]:
    return motion_model.weight_dtype, motion_model.compute_dtype or motion_model.weight_dtype


def _dtypes_of_unet(model: comfy.model_patcher.ModelPatcher) -> tuple[torch.dtype, torch.dtype]:
    weight_dtype = model.model.get_dtype()
    return weight_dtype, model.model.manual_cast_dtype or weight_dtype


def motion_model_for(
    model: comfy.model_patcher.ModelPatcher, motion: comfy.model_patcher.ModelPatcher
) -> comfy.model_patcher.ModelPatcher:
    """The motion model in the MODEL's weight and compute dtypes: a clone of `motion` when they match, else
    a converted copy (e.g. a UNet loaded with weight_dtype fp8_e4m3fn gets fp8 motion modules)."""
    weight_dtype, compute_dtype = _dtypes_of_unet(model)
    if _dtypes_of_motion_model(motion.model) == (weight_dtype, compute_dtype):
        return motion.clone()
    manual_cast = compute_dtype if compute_dtype != weight_dtype else None
    converted = convert_motion_model(motion.model, motion_operations(weight_dtype, manual_cast), weight_dtype, manual_cast)
    return wrap_motion_model(converted.to(comfy.model_management.unet_offload_device()))


def require_motion_model(model: comfy.model_patcher.ModelPatcher) -> AnimateDiffMotionModel:
    """The motion model of a node's 'model' input; a clear error when it was not patched with AnimateDiff."""
    motion_model = motion_model_of(model)
    if motion_model is None:
        raise IncompatibleModelError(
            "'model' has no motion modules. Connect the MODEL from 'MotionClone: Apply AnimateDiff'."
        )
    return motion_model


def motion_model_of(model: comfy.model_patcher.ModelPatcher) -> AnimateDiffMotionModel | None:
    patchers = model.get_additional_models_with_key(PATCH_KEY)
    return patchers[0].model if patchers else None


def apply_motion_model(
    model: comfy.model_patcher.ModelPatcher, motion: comfy.model_patcher.ModelPatcher, beta_schedule: str
) -> comfy.model_patcher.ModelPatcher:
    """Clone `model` and attach the motion modules; `model` itself is left untouched."""
    motion_model: AnimateDiffMotionModel = motion.model
    _check_can_animate(model, motion_model)
    patched = model.clone()
    patched.set_additional_models(PATCH_KEY, [motion_model_for(model, motion)])
    patched.set_injections(PATCH_KEY, [comfy.patcher_extension.PatcherInjection(_inject, _eject)])
    patched.set_model_forward_timestep_embed_patch((MotionModule, _run_motion_module))
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, PATCH_KEY, _outer_sample)
    if beta_schedule != KEEP_MODEL_SCHEDULE:
        patched.add_object_patch("model_sampling", _model_sampling(model, BETA_SCHEDULES[beta_schedule]))
    return patched


def _check_can_animate(model: comfy.model_patcher.ModelPatcher, motion_model: AnimateDiffMotionModel) -> None:
    config = model.model.model_config
    if not isinstance(config, comfy.supported_models.SD15):
        raise IncompatibleModelError(
            f"AnimateDiff SD1.5 motion modules need an SD1.5 MODEL; this MODEL is {type(config).__name__}. "
            "Load an SD1.5 checkpoint (or a fine-tune of it) instead."
        )
    if model.get_additional_models_with_key(PATCH_KEY) or PATCH_KEY in model.injections:
        raise IncompatibleModelError(
            "This MODEL already carries MotionClone motion modules. Connect the plain checkpoint MODEL "
            "(before 'Apply AnimateDiff') instead of applying twice."
        )
    if ADE_KEY in model.injections or model.get_additional_models_with_key(ADE_KEY):
        raise IncompatibleModelError(
            "This MODEL already carries AnimateDiff-Evolved motion modules. Use the MODEL from before the "
            "AnimateDiff-Evolved nodes: MotionClone needs its own motion modules to read temporal attention."
        )
    unet = model.model.diffusion_model
    if len(unet.input_blocks) != SD15_INPUT_BLOCKS or len(unet.output_blocks) != SD15_OUTPUT_BLOCKS:
        raise IncompatibleModelError(
            f"The MODEL's UNet has {len(unet.input_blocks)} input blocks; SD1.5 has {SD15_INPUT_BLOCKS}."
        )
    for module in motion_model.modules_in_forward_order():
        block = _block(unet, module.name)
        width = _block_width(block)
        if width != module.channels:
            raise IncompatibleModelError(
                f"Motion module {module.name} has {module.channels} channels but the UNet block it goes into "
                f"({comfy_block_of(module.name)}) has {width}. The motion module does not belong to this model family."
            )


def _block(unet, module_name: str):
    kind, index = comfy_block_of(module_name)
    return unet.middle_block if kind == "middle" else getattr(unet, f"{kind}_blocks")[index]


def _block_width(block) -> int | None:
    layers = list(block)
    transformers = [layer for layer in layers if isinstance(layer, SpatialTransformer)]
    if transformers:
        return transformers[-1].in_channels
    resblocks = [layer for layer in layers if isinstance(layer, ResBlock)]
    return resblocks[-1].out_channels if resblocks else None


def _insert_position(block) -> int:
    """After the last spatial transformer, else after the first resnet (AnimateDiff's placement)."""
    layers = list(block)
    transformers = [i for i, layer in enumerate(layers) if isinstance(layer, SpatialTransformer)]
    if transformers:
        return transformers[-1] + 1
    return next(i for i, layer in enumerate(layers) if isinstance(layer, ResBlock)) + 1


def _inject(patcher: comfy.model_patcher.ModelPatcher) -> None:
    unet = patcher.model.diffusion_model
    for module in motion_model_of(patcher).modules_in_forward_order():
        block = _block(unet, module.name)
        block.insert(_insert_position(block), module)


def _eject(patcher: comfy.model_patcher.ModelPatcher) -> None:
    unet = patcher.model.diffusion_model
    for module in motion_model_of(patcher).modules_in_forward_order():
        block = _block(unet, module.name)
        for index, layer in enumerate(block):
            if layer is module:
                del block[index]
                break


def _run_motion_module(layer: MotionModule, x, emb, context, transformer_options, *args, **kwargs):
    """`forward_timestep_embed_patch` handler: ComfyUI calls it for every inserted MotionModule."""
    capture: AttentionCapture | None = transformer_options.get(CAPTURE_KEY)
    if capture is not None:
        comfy.model_management.throw_exception_if_processing_interrupted()
    chunks = len(transformer_options.get("cond_or_uncond") or [None])
    # Layers that cast their weights per call compute in the input's dtype: never feed them fp8 storage's.
    compute_dtype = layer.compute_dtype or layer.temporal_transformer.proj_in.weight.dtype
    out = _forward_motion_module(layer, x.to(compute_dtype), x.shape[0] // chunks, capture, transformer_options)
    if capture is not None and capture.gradient_recording_ends_after(layer.name):
        torch.set_grad_enabled(False)  # the rest of the UNet is not on the loss's path; `resume_gradient_recording`
    return out.to(x.dtype)


def _forward_motion_module(layer: MotionModule, x: torch.Tensor, frames: int, capture: AttentionCapture | None,
                           transformer_options: dict) -> torch.Tensor:
    """`layer(x, frames, capture)`, its activations recomputed in the backward when `RECOMPUTE_KEY` names it.

    A capture's `ForwardStopped` is caught inside the checkpointed region and raised again outside it, so the
    checkpoint sees a completed forward; the recomputation runs in `capture.replaying()` (no second record,
    no stop).
    """
    if layer.name not in transformer_options.get(RECOMPUTE_KEY, ()) or not _recorded(x):
        return layer(x, frames, capture)
    stopped = []

    def run(x: torch.Tensor) -> torch.Tensor:
        try:
            return layer(x, frames, capture)
        except ForwardStopped:
            stopped.append(layer.name)
            return x  # the forward ends here; its output is never used

    out = _checkpoint(run, x, capture=capture)
    if stopped:
        raise ForwardStopped(layer.name)
    return out


def _recorded(x: torch.Tensor) -> bool:
    """Whether autograd records the layer that takes `x`: the gradient pass of a guided step."""
    return torch.is_grad_enabled() and x.requires_grad


def _checkpoint(function, *args, capture: AttentionCapture | None = None, **kwargs):
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
        if not _recorded(x):
            return forward(x, *args, **kwargs)
        return _checkpoint(forward, x, *args, **kwargs)


class _RecomputedTransformer(_RecomputedForward):
    """`_RecomputedForward` of a SpatialTransformer, which reads the forward's `transformer_options`.

    By the time of the backward the UNet has moved that dict on (its "block" entry names the last block), and
    attention patches are looked up by block: the recomputation gets a copy taken when the layer ran.
    """

    def __call__(self, x: torch.Tensor, context=None, transformer_options={}):  # noqa: B006 - ComfyUI's signature
        forward = type(self.layer).forward.__get__(self.layer)
        if not _recorded(x):
            return forward(x, context, transformer_options)
        snapshot = dict(transformer_options)

        def run(x: torch.Tensor, context):
            options = dict(snapshot)
            return forward(x, context, options), options

        out, written = _checkpoint(run, x, context, capture=snapshot.get(CAPTURE_KEY))
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


def _recompute_patches(unet, mode: str) -> dict[str, _RecomputedForward]:
    levels = RECOMPUTED_LEVELS[mode]
    blocks = [("input", i, block) for i, block in enumerate(unet.input_blocks)]
    blocks += [("middle", 0, unet.middle_block)]
    blocks += [("output", i, block) for i, block in enumerate(unet.output_blocks)]
    patches = {}
    for kind, index, block in blocks:
        if _level(kind, index) not in levels:
            continue
        layers = [layer for layer in block if not isinstance(layer, MotionModule)]  # the UNet without injections
        for position, layer in enumerate(layers):
            if mode != LOW and not isinstance(layer, (ResBlock, SpatialTransformer)):
                continue
            key = (MIDDLE_LAYER_FORWARD_KEY.format(layer=position) if kind == "middle"
                   else BLOCK_LAYER_FORWARD_KEY.format(kind=kind, block=index, layer=position))
            patches[key] = (_RecomputedTransformer if isinstance(layer, SpatialTransformer) else _RecomputedForward)(layer)
    return patches


def _level(kind: str, index: int) -> int | str:
    """Resolution level of an SD1.5 block: input 0 (conv_in) and 1-3 are level 0, ...; output 0-2 are level 3."""
    if kind == "middle":
        return "middle"
    if kind == "input":
        return max(index - 1, 0) // 3
    return 3 - index // 3


def recomputed_motion_modules(motion_model: AnimateDiffMotionModel, mode: str) -> frozenset[str]:
    """Names of the motion modules whose activations the gradient pass recomputes in `mode` (`RECOMPUTE_KEY`)."""
    levels = RECOMPUTED_LEVELS[mode]
    return frozenset(module.name for module in motion_model.modules_in_forward_order()
                     if _level(*comfy_block_of(module.name)) in levels)


def saved_for_backward_offload(mode: str, device: torch.device):
    """Low mode on CUDA keeps what the backward needs (the checkpoints' inputs) in pinned CPU memory."""
    if mode == LOW and device.type == "cuda":
        return torch.autograd.graph.save_on_cpu(pin_memory=True)
    return nullcontext()


def _outer_sample(executor, *args, **kwargs):
    """Create the run's `SamplingRun`, check the frame count, and release the state in `finally`."""
    guider = executor.class_obj
    latent = args[1] if len(args) > 1 else kwargs["latent_image"]
    motion_model = motion_model_of(guider.model_patcher)
    frames = int(latent.shape[0])
    windows = context_windows_of(guider.model_options)
    if windows is not None:
        refuse_core_context_windows(guider.model_options)
    per_forward = min(frames, windows.length) if windows is not None else frames
    # With ComfyUI's context windows each window is checked by the motion modules themselves.
    if per_forward > motion_model.max_frames and CORE_CONTEXT_KEY not in guider.model_options:
        raise FrameCountError(
            f"The latent batch has {frames} frames but the motion module supports at most "
            f"{motion_model.max_frames}. Set the latent batch size (frame count) to {motion_model.max_frames} or fewer, "
            "or sample through 'MotionClone: Context Windows' (windows of at most that many frames)."
        )
    transformer_options = guider.model_options.setdefault("transformer_options", {})
    run = transformer_options[RUN_STATE_KEY] = SamplingRun(motion_model, frames)
    try:
        return executor(*args, **kwargs)
    finally:
        release_gradient_path(run)
        transformer_options.pop(RUN_STATE_KEY, None)


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


def apply_motion_guidance(model: comfy.model_patcher.ModelPatcher, wrapper) -> comfy.model_patcher.ModelPatcher:
    """Clone `model` with `wrapper` around every noise prediction; one guidance per MODEL (the key replaces)."""
    patched = model.clone()
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, GUIDANCE_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, GUIDANCE_KEY, wrapper)
    return patched


def apply_context_windows(model: comfy.model_patcher.ModelPatcher, windows: ContextWindows,
                          wrapper) -> comfy.model_patcher.ModelPatcher:
    """Clone `model` with `windows` in its transformer options and `wrapper` around every `calc_cond_batch`.

    Every node downstream (extraction, inversion, the samplers) reads the same layout from the MODEL.
    """
    patched = model.clone()
    patched.model_options["transformer_options"] = {**patched.model_options.get("transformer_options", {}), WINDOWS_KEY: windows}
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WINDOWS_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WINDOWS_KEY, wrapper)
    return patched


def context_windows_of(model_options: dict) -> ContextWindows | None:
    """The `ContextWindows` of 'MotionClone: Context Windows' on a MODEL's (or a run's) model options."""
    return model_options.get("transformer_options", {}).get(WINDOWS_KEY)


def refuse_core_context_windows(model_options: dict) -> None:
    """Our windows and ComfyUI's would split the same forward twice (and 0.3.x's fail on per-frame timesteps)."""
    if model_options.get(CORE_CONTEXT_KEY) is not None:
        raise IncompatibleModelError(
            "This MODEL has both 'MotionClone: Context Windows' and ComfyUI's own context windows (a 'Context "
            "Windows' node), which would split every forward twice. Remove ComfyUI's context-windows node: "
            "'MotionClone: Context Windows' does the same for sampling and also windows motion extraction and guidance."
        )


def current_run(model_options: dict) -> SamplingRun:
    """The `SamplingRun` of the sampling run these `model_options` belong to."""
    run = model_options.get("transformer_options", {}).get(RUN_STATE_KEY)
    if run is None:
        raise IncompatibleModelError(
            "This MODEL has no AnimateDiff motion modules. Connect it through 'MotionClone: Apply AnimateDiff' first."
        )
    return run


def with_capture(model_options: dict, capture: AttentionCapture, differentiable: bool = False,
                 recompute: frozenset[str] = frozenset()) -> dict:
    """A copy of `model_options` whose forwards record into `capture` (other entries shared).

    Cross-attention is recorded through `attn2` replace patches of the capture's `cross_blocks`, added to
    this copy only: forwards without a capture keep ComfyUI's own attention. `differentiable` forces spatial
    attention to PyTorch's SDPA, for the gradient pass (sage or flash attention have no backward). `recompute`
    names the motion modules whose activations the gradient pass recomputes (`recomputed_motion_modules`).
    """
    options = dict(model_options)
    merged = {**model_options.get("transformer_options", {}), CAPTURE_KEY: capture}
    if differentiable:
        merged[ATTENTION_OVERRIDE_KEY] = _differentiable_attention
    if recompute:
        merged[RECOMPUTE_KEY] = recompute
    if capture.cross_blocks:
        replace = {kind: dict(patches) for kind, patches in merged.get("patches_replace", {}).items()}
        for kind, index in capture.cross_blocks:
            replace.setdefault("attn2", {})[(kind, index, 0)] = _record_cross_attention
        merged["patches_replace"] = replace
    options["transformer_options"] = merged
    return options


def _differentiable_attention(kernel, *args, **kwargs):
    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


@contextmanager
def gradient_recording() -> Iterator[None]:
    """Autograd on for the gradient pass of a guided step, inside ComfyUI's inference-mode node execution.

    ComfyUI runs every node under `torch.inference_mode()`, whose tensors autograd refuses to save for
    backward. Inside this block new tensors are ordinary; the weights on the path need
    `prepare_gradient_path`, and the latent and sigma fresh copies made inside the block.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


def resume_gradient_recording() -> None:
    """Autograd back on after a forward that switched it off past its last guided motion module."""
    torch.set_grad_enabled(True)


def prepare_gradient_path(run: SamplingRun, inner_model, blocks: tuple[str, ...]) -> None:
    """Make the weights a gradient pass through `blocks` meets autograd-ready (call in `gradient_recording`).

    Weights loaded by the checkpoint loader, and those ComfyUI re-creates when it merges LoRA patches while
    loading the model for sampling, are inference tensors; the backward of every matmul on the path needs
    them. Each is replaced by an ordinary tensor over the same memory (`ordinary_alias`): no weight is
    copied, and outputs and gradients stay bit-identical. It runs at every gradient pass because a run may
    have reloaded (and re-patched) the weights; once the aliases exist it costs one `is_inference()` check
    per tensor. The run records each replacement, and `release_gradient_path` puts the originals back when
    the run ends: the MODEL leaves the run with the weights it came with.
    """
    for root in _modules_on_path(run, inner_model, blocks):
        for module in root.modules():
            for table, make in ((module._parameters, _parameter_alias), (module._buffers, ordinary_alias)):
                for name, weight in table.items():
                    if weight is not None and weight.is_inference():
                        alias = table[name] = make(weight)
                        run.aliases.append(WeightAlias(table, name, weight, alias, _address(alias)))


def release_gradient_path(run: SamplingRun) -> None:
    """Put back the weights `prepare_gradient_path` replaced in this run, unless ComfyUI replaced or moved them
    since (then what it put there stays: the original would be stale)."""
    for alias in reversed(run.aliases):
        if alias.table.get(alias.name) is alias.alias and _address(alias.alias) == alias.address:
            alias.table[alias.name] = alias.original
    run.aliases.clear()


def _address(tensor: torch.Tensor) -> tuple[torch.device, int]:
    return tensor.device, tensor.data_ptr()


def _parameter_alias(param: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(ordinary_alias(param), requires_grad=False)


def ordinary_alias(tensor: torch.Tensor) -> torch.Tensor:
    """An ordinary (non-inference) tensor viewing `tensor`'s memory; call outside inference mode.

    Autograd refuses to save inference tensors because they carry no version counter to detect in-place
    writes; the weights are not written during a gradient pass, whose graph is freed before the step ends.
    Tensor subclasses (e.g. quantized weights) get a copy instead: they have no plain storage to share.
    """
    plain = tensor.data
    if type(plain) is not torch.Tensor:
        return plain.clone()
    alias = torch.empty(0, dtype=plain.dtype, device=plain.device)
    return alias.set_(plain.untyped_storage(), plain.storage_offset(), plain.size(), plain.stride())


def _modules_on_path(run: SamplingRun, inner_model, blocks: tuple[str, ...]) -> list[torch.nn.Module]:
    """The UNet parts a forward stopped after `blocks` runs through (the injected motion modules included)."""
    unet = inner_model.diffusion_model
    last = run.motion_model.last_module_in(blocks)
    kind, index = comfy_block_of(last) if last else ("output", len(unet.output_blocks) - 1)
    path: list[torch.nn.Module] = [unet.time_embed, unet.input_blocks]
    if kind != "input":
        path.append(unet.middle_block)
    if kind == "output":
        path.extend(unet.output_blocks[: index + 1])
    return path


def _record_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """`attn2` replace patch: explicit softmax attention whose probabilities go to the forward's capture.

    Records `(B*F, heads, H, W, T)` float32 for the block in `extra_options["block"]`.
    """
    probs = attention_probs(q, k, extra_options["n_heads"])
    height, width = extra_options["activations_shape"][-2:]
    extra_options[CAPTURE_KEY].record_cross(tuple(extra_options["block"]), probs.unflatten(2, (height, width)))
    return attend(probs, v)


class _EpsSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
    pass


class _VPredictionSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.V_PREDICTION):
    pass


class _SamplingConfig:
    def __init__(self, sampling_settings: dict):
        self.sampling_settings = sampling_settings


def _model_sampling(model: comfy.model_patcher.ModelPatcher, settings: dict):
    """A `model_sampling` with the given beta schedule and the MODEL's own prediction type."""
    current = model.get_model_object("model_sampling")
    v_prediction = isinstance(current, comfy.model_sampling.V_PREDICTION)
    return (_VPredictionSampling if v_prediction else _EpsSampling)(_SamplingConfig(settings))
