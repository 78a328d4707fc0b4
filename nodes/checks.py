"""Checks at the nodes' door: bad input is refused before any UNet call, with the input named and the fix.

The checks themselves live in `motionclone.validation`; here they meet ComfyUI's containers (CONDITIONING
lists, LATENT dicts, MODELs). Warnings a user must see are returned as text for the node's UI as well as
logged, and are bounded (`excerpt`).
"""

from __future__ import annotations

import logging

import comfy.model_patcher
import comfy.patcher_extension

from ..motionclone import AnimateDiffMotionModel, FrameCountError, MotionCloneError, MotionRepresentation
from ..motionclone.errors import IncompatibleModelError
from ..motionclone.validation import excerpt, require_finite, validate_representation
from .patching import CORE_CONTEXT_KEY, GUIDANCE_KEY, MULTIGPU_CLONES_KEY, MULTIGPU_KEY, require_motion_model

logger = logging.getLogger("MotionClone")


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


def family_warning(motion_model: AnimateDiffMotionModel, representation: MotionRepresentation) -> str | None:
    """A warning (also logged) when the MOTION was extracted with another motion-module family; else None."""
    extracted = representation.metadata.model_family
    if extracted == motion_model.family:
        return None
    text = (f"Warning: the MOTION was extracted with {excerpt(extracted)}, but this MODEL carries "
            f"{excerpt(motion_model.family)}. Extract with the motion module you sample with for faithful motion.")
    logger.warning(text)
    return text


def refuse_stacked_guidance(model: comfy.model_patcher.ModelPatcher) -> None:
    """MotionClone Sampler guides by itself: a MODEL that also carries 'MotionClone: Guidance' would be guided twice."""
    if model.get_wrappers(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, GUIDANCE_KEY):
        raise MotionCloneError(
            "The MODEL connected to 'model' already carries 'MotionClone: Guidance', and MotionClone Sampler guides by "
            "itself: its unguided steps would be guided a second time. Connect the MODEL from before 'MotionClone: "
            "Guidance' (or sample the guided MODEL with a stock sampler such as KSampler)."
        )


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
