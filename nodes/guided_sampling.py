"""MotionClone inside ComfyUI's sampling machinery: extraction, the guided sampler, the guidance wrapper.

All three run through `comfy.sample.sample_custom` or a stock sampler, so ComfyUI loads the models,
applies LoRAs, hooks and our motion-module injection, processes the conditioning and creates the
per-run `SamplingRun` exactly as for any other sampling. They differ in what happens per step:

- extraction is a one-step "sampler" that only reads the reference's temporal attention at `sigma_t`;
- `MotionCloneSampler` runs `motionclone.sample_motionclone`, the official guided DDIM loop;
- `MotionGuidanceWrapper` wraps every noise prediction of any sampler (the model-patch form).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch

from ..motionclone import (
    CombinedWeights,
    GuidanceLog,
    GuidanceRamp,
    MotionMismatchError,
    MotionRepresentation,
    motion_loss,
    sample_motionclone,
)
from ..motionclone.errors import MotionCloneError
from ..motionclone.schedule import guided_band_start
from ..motionclone.subject import SemanticSettings
from .autograd import (
    attention_loss_gradient,
    capture_attention,
    capture_forward,
    new_capture,
    prediction_with_attention_gradient,
)
from .patching import SamplingRun, current_run
from .semantic import appearance_targets, semantic_losses

logger = logging.getLogger("MotionClone")


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


def _check_run(representation: MotionRepresentation, run: SamplingRun, x: torch.Tensor) -> None:
    check_fits(representation, x.shape[0], x.shape[-2], x.shape[-1])
    first_use = not run.has_motion_targets(representation, x.device)
    if first_use and representation.metadata.model_family != run.motion_model.family:
        logger.warning("The MOTION was extracted with %s but this MODEL carries %s; extract with the motion module "
                       "you sample with for faithful motion.", representation.metadata.model_family, run.motion_model.family)
    available = set(run.motion_model.attention_layer_names(representation.metadata.blocks))
    missing = [layer for layer in representation.metadata.layers if layer not in available]
    if missing:
        raise MotionMismatchError(
            f"The MOTION uses layer {missing[0]}, which this MODEL's motion module does not have. "
            "Extract the motion with the same motion module you sample with."
        )


# --- extraction -----------------------------------------------------------------------------------------


def _reading_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, *, states, read, results: list):
    """A KSAMPLER function that only reads the model, changing nothing.

    For each `(latent, sigma)` of `states` it calls `read(run, guider, x, sigma_batch, model_options)` with x
    the sampler's own noised start (latent None) or `process_latent_in(latent)`.
    """
    guider = model.inner_model
    options = extra_args["model_options"]
    run = current_run(options)
    progress = comfy.utils.ProgressBar(len(states)) if len(states) > 1 else None
    for latent, sigma in states:
        comfy.model_management.throw_exception_if_processing_interrupted()
        start = x if latent is None else guider.inner_model.process_latent_in(latent.to(x))
        results.append(read(run, guider, start, sigma.to(x) * x.new_ones([x.shape[0]]), options))
        if progress is not None:
            progress.update(1)
    return x


def read_model(model, latent: torch.Tensor, conditioning, noise: torch.Tensor, states: list, read) -> list:
    """Run `read` on reference latents inside a sampling run of `model` (so ComfyUI loads, patches and
    conditions it as for sampling); one forward per entry of `states`, see `_reading_sampler`.

    Args:
        latent: `(F, 4, h, w)` LATENT-convention clip whose noised start (with `noise`, at `states[0]`'s
            sigma) is what an entry with latent None reads.
    """
    results: list = []
    sampler = comfy.samplers.KSAMPLER(_reading_sampler, extra_options={"states": states, "read": read, "results": results})
    sigma = states[0][1]
    sigmas = torch.stack([sigma, torch.zeros_like(sigma)])
    comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, conditioning, conditioning, latent, disable_pbar=True)
    return results


def reference_attention(model, latent: torch.Tensor, conditioning, sigma: torch.Tensor, noise: torch.Tensor, blocks):
    """Temporal attention of `latent` noised to `sigma` (spec §1.2 a, v2): one forward, stopped early.

    Args:
        model: the AnimateDiff-patched ModelPatcher; latent: `(F, 4, h, w)` VAE latent (unscaled).
        sigma: 0-d noise level; noise: `(F, 4, h, w)` standard normal noise.

    Returns:
        `(probs, model_family)`: layer -> `(h_l * w_l, heads, F, F)` float32.
    """
    def read(run, guider, x, sigma_in, options):
        return capture_attention(run, guider.inner_model, guider.conds["positive"], x, sigma_in, options, blocks), run.motion_model.family

    return read_model(model, latent, conditioning, noise, [(None, sigma)], read)[0]


# --- the guided sampler ---------------------------------------------------------------------------------


def _apply_cfg(guider, cond_out, uncond_out, x, sigma, options):
    """CFG as `comfy.samplers.sampling_function` combines the two predictions (pre/post-CFG patches included)."""
    conds = guider.conds
    out = [cond_out, uncond_out]
    for fn in options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": [conds["positive"], conds["negative"]], "conds_out": out, "cond_scale": guider.cfg,
                  "timestep": sigma, "input": x, "sigma": sigma, "model": guider.inner_model, "model_options": options})
    return comfy.samplers.cfg_function(guider.inner_model, out[0], out[1], guider.cfg, x, sigma, model_options=options,
                                       cond=conds["positive"], uncond=conds["negative"])


@dataclass(frozen=True)
class Guidance:
    """What a guided step pulls towards: the reference motion, and optionally semantic guidance."""

    representation: MotionRepresentation
    semantic: SemanticSettings | None = None

    @property
    def key_blocks(self) -> tuple[str, ...]:
        return self.semantic.measured_blocks if self.semantic is not None else ()


class _StepLoss:
    """The loss of one guided step over a capture; keeps the unweighted losses it saw, for the log."""

    def __init__(self, run: SamplingRun, guidance: Guidance, motion_targets, appearance, motion_scale: float,
                 semantic_scale: float, frames: int):
        self.run, self.guidance, self.motion_targets, self.appearance = run, guidance, motion_targets, appearance
        self.motion_scale, self.semantic_scale, self.frames = motion_scale, semantic_scale, frames
        self.losses: dict[str, torch.Tensor] = {}

    def __call__(self, capture) -> torch.Tensor:
        motion = motion_loss(capture.probs, *self.motion_targets)
        self.losses["motion"] = motion.detach()
        total = self.motion_scale * motion
        if self.appearance is not None:
            weighted, reported = semantic_losses(capture, self.appearance, self.guidance.semantic, self.run, self.frames)
            self.losses["semantic"] = reported.detach()
            if weighted is not None:
                total = total + self.semantic_scale * weighted
        return total


def _step_loss(run: SamplingRun, guider, guidance: Guidance, x, sigma, sigma_next, options, motion_scale: float,
               semantic_scale: float) -> _StepLoss:
    """Targets of this step: the motion entry of its timestep and, with semantic guidance, the appearance branch."""
    _check_run(guidance.representation, run, x)
    timestep = int(guider.inner_model.model_sampling.timestep(sigma.reshape(1)).item())
    targets = run.motion_targets(guidance.representation, x.device, timestep)
    appearance = None
    if guidance.semantic is not None:
        appearance = appearance_targets(run, guider, x, sigma, sigma_next, options, guidance.semantic, _apply_cfg)
    return _StepLoss(run, guidance, targets, appearance, motion_scale, semantic_scale, x.shape[0])


def _motionclone_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                         guidance: Guidance, weights: CombinedWeights, log: GuidanceLog):
    """KSAMPLER function of 'MotionClone Sampler': `sample_motionclone` with ComfyUI's predictions."""
    if extra_args.get("denoise_mask") is not None:
        raise MotionCloneError("MotionClone Sampler does not support latents with a noise mask; remove the mask.")
    guider = model.inner_model
    options = extra_args["model_options"]
    run = current_run(options)
    blocks = guidance.representation.metadata.blocks
    s_in = x.new_ones([x.shape[0]])
    sigma_after = {float(sigmas[i]): sigmas[i + 1] for i in range(len(sigmas) - 1)}

    def denoise(x, sigma):
        comfy.model_management.throw_exception_if_processing_interrupted()
        return model(x, sigma * s_in, **extra_args)

    def guided_denoise(x, sigma, step):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigma_in = sigma * s_in
        loss = _step_loss(run, guider, guidance, x, sigma, sigma_after[float(sigma)], options,
                          weights.motion.scale(step), weights.semantic_scale(step))
        cond_out, _, grad = prediction_with_attention_gradient(
            run, guider.inner_model, guider.conds["positive"], x, sigma_in, options, blocks, loss, guidance.key_blocks)
        _check_finite(grad)
        uncond_out = comfy.samplers.calc_cond_batch(guider.inner_model, [guider.conds["negative"]], x, sigma_in, options)[0]
        return _apply_cfg(guider, cond_out, uncond_out, x, sigma_in, options), loss.losses, grad

    def measure_loss(x, sigma, step):
        loss = _step_loss(run, guider, guidance, x, sigma, sigma_after[float(sigma)], options, 0.0, 0.0)
        capture = new_capture(run, blocks, stop_early=True, key_blocks=guidance.key_blocks)
        capture_forward(run, guider.inner_model, guider.conds["positive"], x, sigma * s_in, options, capture)
        loss(capture)
        return loss.losses

    def on_step(i, x, sigma, denoised):
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})

    return sample_motionclone(x, sigmas, weights, denoise, guided_denoise, measure_loss, on_step, log)


def motionclone_ksampler(guidance: Guidance, weights: CombinedWeights, log: GuidanceLog):
    """A ComfyUI SAMPLER running MotionClone's guided DDIM over the sigmas it is given."""
    return comfy.samplers.KSAMPLER(_motionclone_sampler, extra_options={"guidance": guidance, "weights": weights, "log": log})


def _check_finite(grad: torch.Tensor) -> None:
    if not torch.isfinite(grad).all():
        raise MotionCloneError(
            "The motion-guidance gradient is not finite (fp16 overflow). Lower motion_weight, or run the model "
            "in fp32 (ComfyUI's --force-fp32)."
        )


# --- the model-patch form -------------------------------------------------------------------------------


class MotionGuidanceWrapper:
    """PREDICT_NOISE wrapper: motion (and semantic) guidance inside any sampler (the model-patch form).

    A wrapper can only change the clean estimate D that the sampler receives, not the sampler's update.
    The official guided DDIM step moves the latent by `-sigma' * sigma * g` (g = d(weighted loss)/dx,
    sigma' the next noise level) while keeping D. Returning `D - c * g` with

        c = sigma' * sigma^2 / (sigma - sigma')

    makes an Euler (= ComfyUI "ddim") step move by exactly that amount, so for Euler/DDIM the latent
    trajectory equals the official one; only the reported D (the preview) carries the shift. Other
    samplers get a descent step on the same loss whose size follows their own use of D; evaluations
    at noise levels that are not in the schedule (the extra ones of 2nd-order samplers) are left
    unguided. Guided steps are the schedule's steps whose timestep lies in the guided band
    `[1000 (1 - guided_fraction), 999]`; warm-up and cool-down count those steps. Semantic guidance
    advances its appearance branch with DDIM steps along the same schedule.
    """

    def __init__(self, guidance: Guidance, weight: float, guided_fraction: float, warm_up: int, cool_down: int):
        self.guidance = guidance
        self.weight = weight
        self.guided_fraction = guided_fraction
        self.warm_up = warm_up
        self.cool_down = cool_down

    def __deepcopy__(self, memo):
        return self  # immutable; ComfyUI 0.3.x deep-copies model_options on every clone

    def __call__(self, executor, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        denoised = executor(x, timestep, model_options, seed)
        step = self._guided_step(executor.class_obj, timestep, model_options)
        if step is None:
            return denoised
        index, weights, sigma, sigma_next = step
        if weights.scale(index) == 0.0:
            return denoised
        guider = executor.class_obj
        run = current_run(model_options)
        loss = _step_loss(run, guider, self.guidance, x, sigma, sigma_next, model_options,
                          weights.motion.scale(index), weights.semantic_scale(index))
        _, grad = attention_loss_gradient(run, guider.inner_model, guider.conds["positive"], x, timestep, model_options,
                                          self.guidance.representation.metadata.blocks, loss, self.guidance.key_blocks)
        _check_finite(grad)
        shift = sigma_next * sigma**2 / (sigma - sigma_next)
        return denoised - shift * grad.to(denoised.dtype)

    def _guided_step(self, guider, timestep, model_options):
        """`(index among guided steps, weights, sigma, sigma_next)` when this evaluation is a guided step."""
        schedule = model_options.get("transformer_options", {}).get("sample_sigmas")
        if schedule is None or len(schedule) < 2:
            return None
        sigma = timestep.reshape(-1)[0].to(schedule)
        matches = torch.nonzero(torch.isclose(schedule[:-1], sigma, rtol=1e-5, atol=0.0)).flatten()
        if len(matches) == 0:
            return None
        position = int(matches[0])
        sigma_next = schedule[position + 1]
        if not sigma_next < sigma:
            return None
        timesteps = guider.inner_model.model_sampling.timestep(schedule[:-1]).long()
        in_band = timesteps >= guided_band_start(self.guided_fraction)
        if not bool(in_band[position]):
            return None
        ramp = GuidanceRamp(self.weight, int(in_band.sum()), self.warm_up, self.cool_down)
        semantic_on = self.guidance.semantic is not None and self.guidance.semantic.active
        weights = CombinedWeights(ramp, 1.0 if semantic_on else 0.0)
        return int(in_band[:position].sum()), weights, schedule[position], sigma_next
