"""MotionClone's samplers inside ComfyUI's sampling machinery: the guided sampler, the guidance wrapper, inversion.

All run through `comfy.sample.sample_custom` or a stock sampler, so ComfyUI loads the models, applies LoRAs,
hooks and our motion-module injection, processes the conditioning and creates the per-run `SamplingRun`
exactly as for any other sampling. They differ in what happens per step:

- `MotionCloneSampler`'s KSAMPLER runs `motionclone.sample_motionclone`, the official guided DDIM loop;
- `MotionGuidanceWrapper` wraps every noise prediction of any sampler (the model-patch form);
- the inversion KSAMPLER runs `motionclone.ddim_inversion` from the clean clip towards noise.

The two guided faces ask the same engine, `guided_step.guided_step`, whether and how each step is guided;
they differ only in how they apply its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from ...motionclone import (
    GuidanceLog,
    GuidanceSettings,
    motionclone_timesteps,
    resolve_guided_steps,
    sample_motionclone,
)
from ...motionclone.inversion import InvertedClip, ddim_inversion, inversion_timesteps
from ...motionclone.subject import SemanticSettings
from ...motionclone.validation import require_finite, require_finite_number
from .checks import (
    check_conditioning,
    check_fits,
    check_schedule,
    checked_motion,
    family_warning,
    refuse_noise_mask,
    refuse_split_forwards,
    refuse_stacked_guidance,
    refuse_windowed_extras,
    require_attention_model,
)
from .forwards import apply_cfg
from .guided_step import guided_step, schedule_position
from .memory import memory_mode_for, with_memory_mode, without_dynamic_vram
from .run import GUIDANCE_KEY, Guidance, current_run


def motionclone_sigmas(model, steps: int, guided_steps: int, guided_fraction: float) -> tuple[torch.Tensor, int]:
    """The official timestep schedule as ComfyUI sigmas (the MODEL's own table), ending at 0; and G."""
    guided = resolve_guided_steps(steps, guided_steps)
    schedule = motionclone_timesteps(steps, guided, guided_fraction)
    table = model.get_model_object("model_sampling").sigmas.detach().float().cpu()
    sigmas = torch.cat([table[list(schedule.timesteps)], torch.zeros(1)])
    return sigmas, guided


def _motionclone_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                         guidance: Guidance, log: GuidanceLog):
    """KSAMPLER function of 'MotionClone Sampler': `sample_motionclone` with ComfyUI's predictions."""
    refuse_noise_mask(extra_args.get("denoise_mask"))
    guider = model.inner_model
    options = extra_args["model_options"]
    refuse_split_forwards(options, guidance.node)
    run = current_run(options)
    s_in = x.new_ones([x.shape[0]])

    def predict(x, i):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigma_in = sigmas[i] * s_in
        step = guided_step(guidance, run, guider, x, sigma_in, sigmas, i, options, with_prediction=True,
                           measure_unguided=True)
        if step is not None and step.losses:
            log.reused.append(step.reused)
        if step is None or step.grad is None:
            return model(x, sigma_in, **extra_args), None, step.losses if step is not None else None
        uncond_out = comfy.samplers.calc_cond_batch(
            guider.inner_model, [guider.conds["negative"]], x, sigma_in, options
        )[0]
        return apply_cfg(guider, step.prediction, uncond_out, x, sigma_in, options), step.grad, step.losses

    def on_step(i, x, sigma, denoised):
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})

    return sample_motionclone(x, sigmas, predict, on_step, log)


def motionclone_ksampler(guidance: Guidance, log: GuidanceLog):
    """A ComfyUI SAMPLER running MotionClone's guided DDIM over the sigmas it is given."""
    return comfy.samplers.KSAMPLER(_motionclone_sampler, extra_options={"guidance": guidance, "log": log})


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
    unguided. Which steps are guided, and how strongly, is `guided_step`'s decision, as for the sampler.
    """

    def __init__(self, guidance: Guidance):
        self.guidance = guidance

    def __deepcopy__(self, memo):
        return self  # immutable; ComfyUI 0.3.x deep-copies model_options on every clone

    def __call__(self, executor, x, timestep, model_options={}, seed=None):  # noqa: B006 - ComfyUI's signature
        # Nodes after 'MotionClone: Guidance' may have split the forwards (checked before the first one runs).
        refuse_split_forwards(model_options, self.guidance.node)
        denoised = executor(x, timestep, model_options, seed)
        schedule = model_options.get("transformer_options", {}).get("sample_sigmas")
        position = schedule_position(schedule, timestep)
        if position is None:
            return denoised
        step = guided_step(self.guidance, current_run(model_options), executor.class_obj, x, timestep, schedule,
                           position, model_options, with_prediction=False, measure_unguided=False)
        if step is None or step.grad is None:
            return denoised
        sigma, sigma_next = schedule[position], schedule[position + 1]
        shift = sigma_next * sigma**2 / (sigma - sigma_next)
        return denoised - shift * step.grad.to(denoised.dtype)


def apply_motion_guidance(model: comfy.model_patcher.ModelPatcher, wrapper) -> comfy.model_patcher.ModelPatcher:
    """Clone `model` with `wrapper` around every noise prediction; one guidance per MODEL (the key replaces)."""
    patched = model.clone()
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, GUIDANCE_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREDICT_NOISE, GUIDANCE_KEY, wrapper)
    return patched


def _inversion_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, *, timesteps, trajectory: list):
    """KSAMPLER function: DDIM inversion of the clean start `x` (sigma 0) with the guider's prediction.

    ComfyUI's prediction `denoised = model(x_sigma, sigma)` gives `eps = (x_sigma - denoised) / sigma`, with
    the UNet input `x_sigma / sqrt(1 + sigma^2)`; so the DDIM-space latent z is fed as `z * sqrt(1 + sigma^2)`.
    """
    base = model.inner_model.inner_model
    table = base.model_sampling.sigmas.detach().to(device=x.device, dtype=torch.float64)
    alphas_cumprod = 1.0 / (1.0 + table**2)
    s_in = x.new_ones([x.shape[0]])
    progress = comfy.utils.ProgressBar(len(timesteps))

    def eps(z, t):
        comfy.model_management.throw_exception_if_processing_interrupted()
        sigma = table[t].to(x.dtype)
        x_sigma = z * (1 + sigma**2).sqrt()
        return (x_sigma - model(x_sigma, sigma * s_in, **extra_args)) / sigma

    def on_step(done, total):
        progress.update_absolute(done, total)

    states = [z * (1 + table[t] ** 2).sqrt().to(x.dtype)
              for z, t in zip(ddim_inversion(x, alphas_cumprod, timesteps, eps, on_step), timesteps)]
    trajectory.extend(base.process_latent_out(state).float().cpu() for state in states)
    return states[-1]


def invert_clip(model: comfy.model_patcher.ModelPatcher, samples: torch.Tensor, conditioning, steps: int,
                model_family: str) -> tuple[InvertedClip, torch.Tensor, torch.Tensor]:
    """DDIM inversion of the clean clip `samples` `(F, 4, h, w)` over `steps` timesteps (docs/algorithm.md §8).

    Returns:
        `(inversion, noised, reconstruction_sigmas)`: every step's latent, the most-noised latent `(F, 4, h, w)`,
        and the inversion's sigmas in sampling order ending at 0 (for SamplerCustom to turn it back).
    """
    timesteps = inversion_timesteps(steps)
    table = model.get_model_object("model_sampling").sigmas.detach().float().cpu()
    sigmas = table[list(timesteps)]
    trajectory: list[torch.Tensor] = []
    sampler = comfy.samplers.KSAMPLER(
        _inversion_sampler, extra_options={"timesteps": timesteps, "trajectory": trajectory}
    )
    noised = comfy.sample.sample_custom(model, torch.zeros_like(samples), 1.0, sampler, sigmas, conditioning,
                                        conditioning, samples, disable_pbar=True)
    inversion = InvertedClip(torch.stack(trajectory), tuple(timesteps), sigmas, model_family)
    return inversion, noised, torch.cat([sigmas.flip(0), torch.zeros(1)])


@dataclass(frozen=True)
class GuidanceRequest:
    """The guidance widgets both guided nodes share, as the user set them (memory_mode may be auto)."""

    motion_weight: float
    warm_up_steps: int
    cool_down_steps: int
    semantic: SemanticSettings | None
    memory_mode: str
    gradient_every: int

    def guidance(self, motion, guided_fraction: float, model, node: str) -> Guidance:
        """What the node asks every guided step for; the semantic term is on when its bundle is active, and an
        auto memory mode is resolved for `model` and the MOTION's size."""
        semantic_on = self.semantic is not None and self.semantic.active
        settings = GuidanceSettings(self.motion_weight, guided_fraction, self.warm_up_steps, self.cool_down_steps,
                                    1.0 if semantic_on else 0.0, self.gradient_every)
        return Guidance(motion, settings, node, self.semantic, memory_mode_for(self.memory_mode, model, motion))


def sample_guided(model, seed: int, steps: int, guided_steps: int, guided_fraction: float, cfg: float, positive,
                  negative, latent_image: dict, motion, request: GuidanceRequest, node: str):
    """'MotionClone Sampler': every input checked, then MotionClone's guided DDIM over the official schedule
    through `comfy.sample.sample_custom` (docs/algorithm.md §6-7).

    Returns:
        `(samples, log, settings, warning)`: the sampled latent `(F, 4, h, w)`, the run's `GuidanceLog`, the
        `GuidanceSettings` used, and a motion-family warning or None.
    """
    motion_model = require_attention_model(model, node)
    refuse_stacked_guidance(model)
    model = without_dynamic_vram(model, node)
    motion = checked_motion(motion)
    require_finite_number(request.motion_weight, "motion_weight")
    check_conditioning(positive, "positive")
    check_conditioning(negative, "negative")
    refuse_noise_mask(latent_image.get("noise_mask"))
    samples = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    require_finite(
        samples, "'latent_image'", "Connect an Empty Latent Image, or check the nodes before 'latent_image'."
    )
    check_fits(motion, samples.shape[0], samples.shape[-2], samples.shape[-1])
    refuse_windowed_extras(model.model_options, samples.shape[0], request.semantic, request.gradient_every)
    warning = family_warning(motion_model, motion)
    sigmas, guided = motionclone_sigmas(model, steps, guided_steps, guided_fraction)
    check_schedule(motion, motionclone_timesteps(steps, guided, guided_fraction).guided)
    log = GuidanceLog()
    guidance = request.guidance(motion, guided_fraction, model, node)
    sampler = motionclone_ksampler(guidance, log)
    noise = comfy.sample.prepare_noise(samples, seed, latent_image.get("batch_index"))
    callback = latent_preview.prepare_callback(model, steps)
    out = comfy.sample.sample_custom(with_memory_mode(model, guidance.memory_mode), noise, cfg, sampler, sigmas,
                                     positive, negative, samples, callback=callback,
                                     disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    return out, log, guidance.settings, warning


def guided_model(model, motion, guided_fraction: float, request: GuidanceRequest, node: str):
    """'MotionClone: Guidance': a clone of `model` whose every noise prediction is guided (`MotionGuidanceWrapper`),
    with the memory mode's patches. Returns `(patched, warning)`: the MODEL and a motion-family warning or None."""
    motion_model = require_attention_model(model, node)
    motion = checked_motion(motion)
    require_finite_number(request.motion_weight, "motion_weight")
    model = without_dynamic_vram(model, node)
    guidance = request.guidance(motion, guided_fraction, model, node)
    patched = with_memory_mode(apply_motion_guidance(model, MotionGuidanceWrapper(guidance)), guidance.memory_mode)
    return patched, family_warning(motion_model, motion)
