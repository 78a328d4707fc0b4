"""Every refusal of the pack, written once: at a node's door, before any UNet call, and at a run's start.

Bad input is refused with the input named, what was expected, what was found and the fix. The checks on
tensors and files live in `motionclone.validation`; here they meet ComfyUI's containers (CONDITIONING
lists, LATENT dicts, MODELs). Warnings a user must see are returned as text for the node's UI as well as
logged, and are bounded (`excerpt`).
"""

from __future__ import annotations

import logging

import comfy.model_patcher
import comfy.patcher_extension
import torch

from ...motionclone import (
    AnimateDiffMotionModel,
    FrameCountError,
    MotionCloneError,
    MotionMismatchError,
    MotionRepresentation,
)
from ...motionclone.errors import IncompatibleModelError
from ...motionclone.validation import excerpt, require_finite, validate_representation
from .run import (
    CORE_CONTEXT_KEY,
    GUIDANCE_KEY,
    MULTIGPU_CLONES_KEY,
    MULTIGPU_KEY,
    NO_MOTION_MODULES,
    Guidance,
    SamplingRun,
    active_windows,
    context_windows_of,
    frames_per_forward,
    layout_of,
    motion_model_of,
)

logger = logging.getLogger("MotionClone")


def require_motion_model(model: comfy.model_patcher.ModelPatcher) -> AnimateDiffMotionModel:
    """The motion model of a node's 'model' input; a clear error when it was not patched with AnimateDiff."""
    motion_model = motion_model_of(model)
    if motion_model is None:
        raise IncompatibleModelError(NO_MOTION_MODULES)
    return motion_model


def require_attention_model(model: comfy.model_patcher.ModelPatcher, node: str) -> AnimateDiffMotionModel:
    """The motion model of the MODEL whose temporal attention `node` reads or guides, refusing MODELs whose
    forwards ComfyUI splits out of the pack's sight (`refuse_split_forwards`)."""
    motion_model = require_motion_model(model)
    refuse_split_forwards(model.model_options, node, multigpu=bool(model.get_additional_models_with_key(MULTIGPU_KEY)))
    return motion_model


def refuse_split_forwards(model_options: dict, node: str, multigpu: bool = False) -> None:
    """Refuse ComfyUI's own context windows and multi-GPU work units, at a node's door (its MODEL's options) and
    before a guided run's first forward (the run's options, which see what nodes after 'MotionClone: Guidance'
    added).

    Both split one UNet forward into several behind the pack's back: the motion would be read from one
    window's or one device's share of the clip, and multi-GPU forwards run in worker threads without autograd.
    """
    if model_options.get(CORE_CONTEXT_KEY) is not None:
        raise IncompatibleModelError(
            f"'{node}' cannot read or guide motion through ComfyUI's own context windows (a 'Context Windows "
            "(Manual)' node on this MODEL): they split every UNet forward into windows the motion cannot follow, so "
            "it would be read from one window only and guided with the wrong frames. Remove that node and wire "
            "'MotionClone: Context Windows' in its place, before 'MotionClone: Extract Motion' and the sampler: it "
            "takes the same length and overlap, and windows plain sampling too."
        )
    if multigpu or MULTIGPU_CLONES_KEY in model_options:
        raise IncompatibleModelError(
            f"'{node}' cannot read or guide motion on a MODEL set up for several GPUs ('MultiGPU Work Units'): "
            "ComfyUI spreads its UNet forwards over worker threads that run without gradients, so the motion "
            "guidance cannot be taken and the motion would be read from one GPU's share. Remove 'MultiGPU Work "
            "Units' from this MODEL's path; MotionClone runs on one GPU."
        )


def refuse_core_context_windows(model_options: dict) -> None:
    """Our windows and ComfyUI's would split the same forward twice (and 0.3.x's fail on per-frame timesteps)."""
    if model_options.get(CORE_CONTEXT_KEY) is not None:
        raise IncompatibleModelError(
            "This MODEL has both 'MotionClone: Context Windows' and ComfyUI's own context windows (a 'Context "
            "Windows' node), which would split every forward twice. Remove ComfyUI's context-windows node: "
            "'MotionClone: Context Windows' does the same for sampling and also windows motion extraction and guidance."
        )


def refuse_stacked_guidance(model: comfy.model_patcher.ModelPatcher) -> None:
    """MotionClone Sampler guides by itself: a MODEL that also carries 'MotionClone: Guidance' would be guided twice."""
    if is_guided(model):
        raise MotionCloneError(
            "The MODEL connected to 'model' already carries 'MotionClone: Guidance', and MotionClone Sampler guides by "
            "itself: its unguided steps would be guided a second time. Connect the MODEL from before 'MotionClone: "
            "Guidance' (or sample the guided MODEL with a stock sampler such as KSampler)."
        )


def checked_motion(motion, input_name: str = "motion") -> MotionRepresentation:
    """The MOTION of a node input, validated like a motion file (all axes, dtypes, ranges, finiteness)."""
    if not isinstance(motion, MotionRepresentation):
        raise MotionCloneError(f"'{input_name}' is a {type(motion).__name__}, not a MotionClone motion. Connect "
                               "'MotionClone: Extract Motion' or 'MotionClone: Load Motion'.")
    return validate_representation(motion, f"The MOTION connected to '{input_name}'")


def check_conditioning(conditioning, input_name: str) -> None:
    """Every tensor of a CONDITIONING finite (NaN prompts give NaN video and a misleading fp16 message later)."""
    for tensor, extras in conditioning:
        require_finite(tensor, f"'{input_name}'", f"Re-encode the prompt with CLIP Text Encode; check the nodes "
                       f"between it and '{input_name}'.")
        pooled = extras.get("pooled_output") if isinstance(extras, dict) else None
        if pooled is not None:
            require_finite(pooled, f"'{input_name}' (pooled output)", "Re-encode the prompt with CLIP Text Encode.")


def check_frame_limit(motion_model: AnimateDiffMotionModel, frames: int, input_name: str, fix: str) -> None:
    """Refuse more frames than the motion module's positional encoding holds, naming the input at fault."""
    if frames > motion_model.max_frames:
        raise FrameCountError(
            f"'{input_name}' has {frames} frames, but the motion module ({motion_model.family}) supports at most "
            f"{motion_model.max_frames}. {fix}"
        )


def check_latent_frames(motion_model: AnimateDiffMotionModel, frames: int, model_options: dict) -> None:
    """At a run's start: the frames of one forward within the motion module's limit (`check_frame_limit` at the
    nodes' door names the input; a stock sampler has none but its latent)."""
    windows = context_windows_of(model_options)
    if windows is not None:
        refuse_core_context_windows(model_options)
    # With ComfyUI's context windows each window is checked by the motion modules themselves.
    if frames_per_forward(model_options, frames) > motion_model.max_frames and CORE_CONTEXT_KEY not in model_options:
        raise FrameCountError(
            f"The latent batch has {frames} frames but the motion module supports at most "
            f"{motion_model.max_frames}. Set the latent batch size (frame count) to {motion_model.max_frames} or "
            "fewer, or sample through 'MotionClone: Context Windows' (windows of at most that many frames)."
        )


def check_window_length(motion_model: AnimateDiffMotionModel, length: int, trained_length: int) -> None:
    """'MotionClone: Context Windows' refuses windows longer than the motion module's positional encoding."""
    if length > motion_model.max_frames:
        raise FrameCountError(
            f"'length' is {length} frames, but the motion module ({motion_model.family}) supports at most "
            f"{motion_model.max_frames} frames per forward. Set 'length' to "
            f"{min(trained_length, motion_model.max_frames)} (what the module was trained on) or at most "
            f"{motion_model.max_frames}."
        )


def family_warning(motion_model: AnimateDiffMotionModel, representation: MotionRepresentation) -> str | None:
    """A warning (also logged) when the MOTION was extracted with another motion-module family; else None."""
    extracted = representation.metadata.model_family
    if extracted == motion_model.family:
        return None
    text = (f"Warning: the MOTION was extracted with {excerpt(extracted)}, but this MODEL carries "
            f"{excerpt(motion_model.family)}. Extract with the motion module you sample with for faithful motion.")
    logger.warning(text)
    return text


def check_fits(representation: MotionRepresentation, frames: int, latent_height: int, latent_width: int) -> None:
    """Raise `MotionMismatchError` unless the motion was extracted at this frame count and latent size."""
    meta = representation.metadata
    if (meta.frames, meta.latent_height, meta.latent_width) == (frames, latent_height, latent_width):
        return
    raise MotionMismatchError(
        f"The MOTION was extracted from {meta.frames} frames of {meta.latent_width * 8}x{meta.latent_height * 8} px "
        f"(latent {meta.latent_width}x{meta.latent_height}), but the latent to sample has {frames} frames of "
        f"{latent_width * 8}x{latent_height * 8} px (latent {latent_width}x{latent_height}). Set the empty latent's "
        f"width, height and batch size to {meta.latent_width * 8}, {meta.latent_height * 8} and {meta.frames}, or "
        "extract the motion again with the size and frame count you want to generate."
    )


def check_schedule(representation: MotionRepresentation, guided_timesteps: tuple[int, ...]) -> None:
    """Raise `MotionMismatchError` unless a per-timestep MOTION holds exactly these guided timesteps."""
    stamps = representation.metadata.timesteps
    if not stamps or tuple(stamps) == tuple(guided_timesteps):
        return
    raise MotionMismatchError(
        f"The MOTION comes from a DDIM inversion and holds entries for {len(stamps)} guided timesteps "
        f"(t={stamps[0]}..{stamps[-1]}), but this sampler guides {len(guided_timesteps)} steps "
        f"(t={guided_timesteps[0]}..{guided_timesteps[-1]}). Give 'Extract Motion' the same steps, guided_steps and "
        "guided_fraction as the sampler."
    )


def check_window_layout(representation: MotionRepresentation, model_options: dict, frames: int) -> None:
    """Raise `MotionMismatchError` unless the MOTION was read in the windows this MODEL samples `frames` in."""
    meta = representation.metadata
    sampled = layout_of(model_options, frames)
    if meta.windows == sampled:
        return
    settings = context_windows_of(model_options)
    sampling = (f"{len(sampled)} windows of {settings.length} frames (overlap {settings.overlap}, {settings.schedule})"
                if settings is not None and len(sampled) > 1 else "one window (the whole clip)")
    raise MotionMismatchError(
        f"The MOTION was read in {meta.describe_windows()} of its {meta.frames} frames, but this MODEL samples its "
        f"{frames} frames in {sampling}. Wire the same 'MotionClone: Context Windows' node before both 'Extract "
        "Motion' and the sampler (or extract the motion again from the MODEL you sample with)."
    )


def refuse_windowed_extras(model_options: dict, frames: int, semantic, gradient_every: int) -> None:
    """Semantic guidance and gradient reuse do not work through 'MotionClone: Context Windows' yet: refused at the
    Sampler's door (which knows the frames) and at a run's first guided step (Guidance sees them only then)."""
    if active_windows(model_options, frames) is None:
        return
    if semantic is not None:
        raise IncompatibleModelError(
            "Semantic guidance (the 'semantic_guidance' input) does not work with 'MotionClone: Context Windows' yet. "
            "Disconnect 'semantic_guidance', or sample at most one window's frames."
        )
    if gradient_every > 1:
        raise IncompatibleModelError(
            f"gradient_every is {gradient_every}, but gradient reuse is not available through 'MotionClone: "
            "Context Windows' (a clip longer than one window). Set gradient_every to 1 on the sampler or Guidance "
            "node, or sample a clip no longer than one window.")


def validate_guidance(guidance: Guidance, run: SamplingRun, guider, x: torch.Tensor) -> None:
    """Once per run, before the first guided forward: the MOTION fits the latent and the MODEL, the inputs
    are finite, and a subject mask belongs to the positive prompt."""
    representation = guidance.representation
    check_fits(representation, x.shape[0], x.shape[-2], x.shape[-1])
    check_window_layout(representation, guider.model_options, x.shape[0])
    refuse_windowed_extras(guider.model_options, x.shape[0], guidance.semantic, guidance.settings.gradient_every)
    available = set(run.motion_model.attention_layer_names(representation.metadata.blocks))
    missing = [layer for layer in representation.metadata.layers if layer not in available]
    if missing:
        raise MotionMismatchError(
            f"The MOTION uses layer {missing[0]}, which this MODEL's motion module does not have. "
            "Extract the motion with the same motion module you sample with."
        )
    require_finite(x, "The latent being sampled", "Check the nodes before the sampler's latent input.")
    for kind in ("positive", "negative"):
        for cond in guider.original_conds.get(kind, []):
            if cond.get("cross_attn") is not None:
                require_finite(
                    cond["cross_attn"], f"The {kind} conditioning", "Re-encode the prompt with CLIP Text Encode."
                )
    subject = guidance.semantic.subject if guidance.semantic is not None else None
    if subject is not None:
        positive = [
            c["cross_attn"] for c in guider.original_conds.get("positive", []) if c.get("cross_attn") is not None
        ]
        if positive and not subject.encodes_same_prompt(positive[0]):
            raise MotionCloneError(
                f"'subject_mask' was made for the prompt {excerpt(subject.prompt)} "
                f"(subject '{' '.join(subject.words)}' "
                "at its token positions), but the positive conditioning being sampled encodes another prompt, so the "
                "mask would follow other words. Type the sampler's positive prompt into that 'Cross-Attention Mask' "
                "node's 'prompt' (the same text, with the same CLIP)."
            )


NOISE_MASK_REFUSAL = "MotionClone Sampler does not support latents with a noise mask; remove the mask."


def refuse_noise_mask(noise_mask) -> None:
    """MotionClone Sampler's guided DDIM denoises the whole latent: a noise mask (inpainting) would be ignored."""
    if noise_mask is not None:
        raise MotionCloneError(NOISE_MASK_REFUSAL)


def is_guided(model: comfy.model_patcher.ModelPatcher) -> bool:
    """Whether `model` carries 'MotionClone: Guidance' (its PREDICT_NOISE wrapper)."""
    return bool(model.get_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, GUIDANCE_KEY))
