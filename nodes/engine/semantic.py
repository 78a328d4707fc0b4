"""Location-aware semantic guidance inside a sampling run (MotionClone Sec. 3.3; docs/algorithm.md §5).

At every guided step a second, unguided "appearance" video is advanced from the same initial noise
with plain CFG DDIM on the new prompt. Its temporal-attention keys are the semantic targets, and (with
subjects) its cross-attention to the subject word gives the generated subject's mask. The generated
video's keys, pooled under the *reference* subject's mask, are pulled towards the appearance video's
keys pooled under its own mask, so the new subject sits where the reference subject moved.

`advance_appearance` is one step of that branch: it takes the branch (None at the first guided step) and
returns it advanced, with its targets; the caller keeps it in the run's `GuidanceRun`.
"""

from __future__ import annotations

import comfy.samplers
import torch

from ...motionclone import AnimateDiffMotionModel, AttentionCapture, MotionCloneError, euler_step
from ...motionclone.layout import MASK_CROSS_BLOCKS, block_of_layer
from ...motionclone.masks import upsample_weights
from ...motionclone.semantic import keys_to_frame_major, semantic_loss
from ...motionclone.subject import SEMANTIC_BLOCKS, SemanticSettings
from .forwards import apply_cfg, capture_forward
from .run import AppearanceBranch, AppearanceTargets


def advance_appearance(branch: AppearanceBranch | None, guider, x: torch.Tensor, sigma: torch.Tensor,
                       sigma_next: torch.Tensor, options: dict, settings: SemanticSettings,
                       motion_model: AnimateDiffMotionModel) -> AppearanceBranch:
    """The appearance branch advanced by one DDIM step from `sigma`, with its targets at `sigma` (`.targets`).

    `branch` None starts it at the first guided step from the generated latent `x` (the same initial noise).
    A second call at the same sigma (2nd-order samplers evaluate a sigma twice) returns the branch as it is.
    """
    if branch is not None and branch.targets_sigma == float(sigma):
        return branch
    if branch is None:
        branch = AppearanceBranch(x.detach().clone(), float(sigma))
    if abs(branch.sigma - float(sigma)) > 1e-6 * max(1.0, float(sigma)):
        raise MotionCloneError(
            f"Semantic guidance lost its appearance branch (at sigma {branch.sigma:.4f}, the step is at "
            f"{float(sigma):.4f}). Use a schedule whose guided steps are consecutive, as MotionClone's."
        )
    layers = motion_model.attention_layer_names(settings.measured_blocks)
    capture = AttentionCapture((), key_blocks=settings.measured_blocks,
                               cross_blocks=() if settings.global_mode else MASK_CROSS_BLOCKS)
    sigma_in = sigma * x.new_ones([x.shape[0]])
    cond = capture_forward(guider.inner_model, guider.conds["positive"], branch.x, sigma_in, options, capture)
    uncond = comfy.samplers.calc_cond_batch(
        guider.inner_model, [guider.conds["negative"]], branch.x, sigma_in, options
    )[0]
    denoised = apply_cfg(guider, cond, uncond, branch.x, sigma_in, options)
    keys = {layer: _frame_major(capture.keys[layer], x.shape[0]) for layer in layers}
    masks = None if settings.global_mode else _layer_masks(settings, capture, keys)
    return AppearanceBranch(euler_step(branch.x, denoised, sigma, sigma_next), float(sigma_next),
                            AppearanceTargets(keys, masks), float(sigma))


def semantic_losses(capture: AttentionCapture, targets: AppearanceTargets, settings: SemanticSettings,
                    motion_model: AnimateDiffMotionModel, frames: int) -> tuple[torch.Tensor | None, torch.Tensor]:
    """`(weighted, reported)` semantic losses of the generated video's keys in `capture` (docs/algorithm.md §5).

    weighted: `sum_m w_block(m) * L_m / n`, n = the number of layers of up_blocks.1 and .2 (the official
    mean over the listed layers, weights [500, 0]), None when every weight is 0; reported: the mean of `L_m`
    over the measured layers.
    """
    measured = motion_model.attention_layer_names(settings.measured_blocks)
    generated = {layer: _frame_major(capture.keys[layer], frames) for layer in measured}
    # Targets made under ComfyUI's inference mode cannot be saved for backward: ordinary copies (the caller
    # runs this with inference mode off).
    appearance = {layer: targets.keys[layer].clone() for layer in measured}
    masks = None if targets.masks is None else {
        layer: tuple(m.clone() for m in maps) for layer, maps in targets.masks.items()
    }
    layer_count = len(motion_model.attention_layer_names(SEMANTIC_BLOCKS))
    weights = {layer: settings.weight_of(block_of_layer(layer)) for layer in measured}
    weighted = semantic_loss(generated, appearance, weights, layer_count, masks) if settings.active else None
    reported = semantic_loss(generated, appearance, dict.fromkeys(measured, 1.0), len(measured), masks)
    return weighted, reported


def _frame_major(keys: torch.Tensor, frames: int) -> torch.Tensor:
    """Temporal keys `(HW, F, C)` of one video -> `(F, HW, C)`; refuse several videos in one forward."""
    if keys.shape[1] != frames:
        raise MotionCloneError(f"Temporal keys have {keys.shape[1]} frames, expected {frames}.")
    return keys_to_frame_major(keys)


def _layer_masks(settings: SemanticSettings, capture: AttentionCapture, keys: dict[str, torch.Tensor]):
    """Per layer `(ref_fg, ref_bg, app_fg, app_bg)` `(F, HW)` at the layer's resolution."""
    cross = [capture.cross_probs[block] for block in MASK_CROSS_BLOCKS]
    if cross[0].shape[0] != settings.reference.foreground.shape[0]:
        raise MotionCloneError(
            "Semantic guidance supports one positive prompt per video (the subject mask is read from it); "
            "combine prompts with ConditioningConcat instead."
        )
    app_fg, app_bg = settings.subject.generated_weights(cross)
    reference = (settings.reference.foreground.to(app_fg), settings.reference.background.to(app_fg))
    if reference[0].shape != app_fg.shape:
        raise MotionCloneError(
            f"'reference_mask' is {tuple(reference[0].shape)} (frames, h, w at 1/32 of the image), but the video "
            f"being generated gives {tuple(app_fg.shape)}. Make the mask from a clip of the generated size and frame "
            "count."
        )
    masks = {}
    for layer, layer_keys in keys.items():
        factor = round((layer_keys.shape[1] / app_fg[0].numel()) ** 0.5)
        maps = (*reference, app_fg, app_bg)
        masks[layer] = tuple(upsample_weights(m, factor).flatten(1) if factor > 1 else m.flatten(1) for m in maps)
    return masks
