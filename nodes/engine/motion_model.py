"""How AnimateDiff reaches a ComfyUI MODEL, through ComfyUI's model-patching API only.

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
- an OUTER_SAMPLE wrapper creates one `SamplingRun` per sampling run and releases it in `finally`.
"""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.ops
import comfy.patcher_extension
import comfy.supported_models
import torch
from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

from ...motionclone import (
    AnimateDiffMotionModel,
    AttentionCapture,
    ForwardStopped,
    MotionModule,
    MotionModuleSpec,
    convert_motion_model,
    load_motion_module,
)
from ...motionclone.errors import IncompatibleModelError
from ...motionclone.layout import SD15_INPUT_BLOCKS, SD15_OUTPUT_BLOCKS, comfy_block_of
from .checks import check_latent_frames
from .memory import autograd_records, recompute_in_backward
from .run import (
    ADE_KEY,
    CAPTURE_KEY,
    PATCH_KEY,
    RECOMPUTE_KEY,
    RUN_STATE_KEY,
    SamplingRun,
    motion_model_of,
)

BETA_SCHEDULES = {
    # AnimateDiff's training schedule: diffusers "linear" is ComfyUI "sqrt_linear".
    "sqrt_linear": {"beta_schedule": "sqrt_linear", "linear_start": 0.00085, "linear_end": 0.012},
    # SD1.5's own schedule (diffusers "scaled_linear").
    "linear": {"beta_schedule": "linear", "linear_start": 0.00085, "linear_end": 0.012},
}
KEEP_MODEL_SCHEDULE = "keep MODEL's"


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
    converted = convert_motion_model(
        motion.model, motion_operations(weight_dtype, manual_cast), weight_dtype, manual_cast
    )
    return wrap_motion_model(converted.to(comfy.model_management.unet_offload_device()))


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
    if layer.name not in transformer_options.get(RECOMPUTE_KEY, ()) or not autograd_records(x):
        return layer(x, frames, capture)
    stopped = []

    def run(x: torch.Tensor) -> torch.Tensor:
        try:
            return layer(x, frames, capture)
        except ForwardStopped:
            stopped.append(layer.name)
            return x  # the forward ends here; its output is never used

    out = recompute_in_backward(run, x, capture=capture)
    if stopped:
        raise ForwardStopped(layer.name)
    return out


def _outer_sample(executor, *args, **kwargs):
    """Create the run's `SamplingRun`, check the frame count, and release the state in `finally`."""
    guider = executor.class_obj
    latent = args[1] if len(args) > 1 else kwargs["latent_image"]
    motion_model = motion_model_of(guider.model_patcher)
    frames = int(latent.shape[0])
    check_latent_frames(motion_model, frames, guider.model_options)
    transformer_options = guider.model_options.setdefault("transformer_options", {})
    run = transformer_options[RUN_STATE_KEY] = SamplingRun(motion_model, frames)
    try:
        return executor(*args, **kwargs)
    finally:
        run.release_aliases()
        transformer_options.pop(RUN_STATE_KEY, None)


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
