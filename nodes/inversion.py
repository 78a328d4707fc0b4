"""'MotionClone: DDIM Inversion': the reference clip's DDIM trajectory (MotionClone v1, docs/algorithm.md §8)."""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..motionclone import MotionCloneError
from ..motionclone.inversion import ddim_inversion, inversion_timesteps
from ..motionclone.validation import require_finite
from .checks import check_conditioning, check_frame_limit
from .context_windows import frames_per_forward
from .patching import require_motion_model
from .types import InversionSocket


@dataclass(frozen=True)
class InvertedClip:
    """A reference clip's DDIM inversion.

    `latents[s]` `(F, 4, h, w)` is the clip at timestep `timesteps[s]` (ascending) in ComfyUI's LATENT
    convention: what a sampler given this LATENT with its noise disabled continues from at `sigmas[s]`.
    """

    latents: torch.Tensor  # (S, F, 4, h, w) float32, CPU
    timesteps: tuple[int, ...]
    sigmas: torch.Tensor  # (S,)
    model_family: str

    def nearest(self, timestep: int) -> int:
        """Index of the stored timestep closest to `timestep`."""
        return min(range(len(self.timesteps)), key=lambda s: abs(self.timesteps[s] - timestep))

    def describe(self) -> str:
        frames, _, height, width = self.latents.shape[1:]
        return (f"DDIM inversion: {len(self.timesteps)} steps t={self.timesteps[0]}..{self.timesteps[-1]}, "
                f"{frames} frames of {width * 8}x{height * 8} px, {self.latents.nbytes / 2**20:.0f} MiB, {self.model_family}")


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


class DDIMInversion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneDDIMInversion",
            display_name="MotionClone: DDIM Inversion",
            category="MotionClone",
            description="Inverts the reference clip with DDIM (the paper's v1 reference extraction): runs the "
            "AnimateDiff MODEL from the clean clip towards noise and keeps every step, for 'Extract Motion' "
            "(motion per sampling step) and 'Cross-Attention Mask'.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL after 'MotionClone: Apply AnimateDiff' (the one you "
                               "sample with)."),
                io.Latent.Input("latent", tooltip="The reference clip encoded by VAE Encode (batch = frames), at "
                                "the size you will generate."),
                io.Conditioning.Input("conditioning", tooltip="The inversion prompt: a description of the reference "
                                      "clip (the official code inverts with it, without CFG)."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM inversion steps. The official code uses 1000 (every timestep; most "
                             "faithful, slowest, 1 GiB of latents for 16 frames at 512x512); 50 is 20x faster."),
            ],
            outputs=[
                InversionSocket.Output(display_name="INVERSION", tooltip="The clip's latent at every inversion "
                                       "step, for 'Extract Motion' and 'Cross-Attention Mask'."),
                io.Latent.Output(display_name="noised_latent", tooltip="The most-noised latent (t = last step)."),
                io.Sigmas.Output(display_name="reconstruction_sigmas", tooltip="The inversion's sigmas in "
                                 "sampling order: with SamplerCustom (add_noise off, euler) they turn noised_latent "
                                 "back into the clip."),
            ],
        )

    @classmethod
    def execute(cls, model, latent, conditioning, steps) -> io.NodeOutput:
        motion_model = require_motion_model(model)
        if latent.get("noise_mask") is not None:
            raise MotionCloneError("'latent' has a noise mask; DDIM inversion inverts the whole clip. Remove the mask.")
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        require_finite(samples, "'latent'", "Encode the reference clip again with VAE Encode.")
        check_conditioning(conditioning, "conditioning")
        check_frame_limit(motion_model, frames_per_forward(model.model_options, samples.shape[0]), "latent",
                          "Encode at most that many frames, e.g. with 'MotionClone: Select Frames' (its 'frames' input) "
                          "before VAE Encode, or wire 'MotionClone: Context Windows' before this node.")
        timesteps = inversion_timesteps(steps)
        table = model.get_model_object("model_sampling").sigmas.detach().float().cpu()
        sigmas = table[list(timesteps)]
        trajectory: list[torch.Tensor] = []
        sampler = comfy.samplers.KSAMPLER(_inversion_sampler, extra_options={"timesteps": timesteps, "trajectory": trajectory})
        noised = comfy.sample.sample_custom(model, torch.zeros_like(samples), 1.0, sampler, sigmas, conditioning,
                                            conditioning, samples, disable_pbar=True)
        inversion = InvertedClip(torch.stack(trajectory), tuple(timesteps), sigmas, motion_model.family)
        reconstruction = torch.cat([sigmas.flip(0), torch.zeros(1)])
        return io.NodeOutput(inversion, {"samples": noised}, reconstruction, ui=ui.PreviewText(inversion.describe()))


NODES = [DDIMInversion]
