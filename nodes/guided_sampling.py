"""MotionClone inside ComfyUI's sampling machinery: extraction, the guided sampler, the guidance wrapper.

All three run through `comfy.sample.sample_custom` or a stock sampler, so ComfyUI loads the models,
applies LoRAs, hooks and our motion-module injection, processes the conditioning and creates the
per-run `SamplingRun` exactly as for any other sampling. They differ in what happens per step:

- extraction is a one-step "sampler" that only reads the reference's temporal attention at `sigma_t`;
- `MotionCloneSampler` runs `motionclone.sample_motionclone`, the official guided DDIM loop;
- `MotionGuidanceWrapper` wraps every noise prediction of any sampler (the model-patch form).

The two guided faces ask the same engine, `guided_step.guided_step`, whether and how each step is guided;
they differ only in how they apply its gradient.
"""

from __future__ import annotations

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch

from ..motionclone import GuidanceLog, sample_motionclone
from ..motionclone.errors import MotionCloneError
from .autograd import capture_attention
from .checks import refuse_split_forwards
from .guided_step import Guidance, apply_cfg, guided_step, schedule_position
from .patching import current_run

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
    """Temporal attention of `latent` noised to `sigma` (docs/algorithm.md §1, §3): one forward, stopped early.

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


def _motionclone_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, *,
                         guidance: Guidance, log: GuidanceLog):
    """KSAMPLER function of 'MotionClone Sampler': `sample_motionclone` with ComfyUI's predictions."""
    if extra_args.get("denoise_mask") is not None:
        raise MotionCloneError("MotionClone Sampler does not support latents with a noise mask; remove the mask.")
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
        uncond_out = comfy.samplers.calc_cond_batch(guider.inner_model, [guider.conds["negative"]], x, sigma_in, options)[0]
        return apply_cfg(guider, step.prediction, uncond_out, x, sigma_in, options), step.grad, step.losses

    def on_step(i, x, sigma, denoised):
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})

    return sample_motionclone(x, sigmas, predict, on_step, log)


def motionclone_ksampler(guidance: Guidance, log: GuidanceLog):
    """A ComfyUI SAMPLER running MotionClone's guided DDIM over the sigmas it is given."""
    return comfy.samplers.KSAMPLER(_motionclone_sampler, extra_options={"guidance": guidance, "log": log})


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
