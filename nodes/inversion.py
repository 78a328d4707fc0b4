"""'MotionClone: DDIM Inversion': the reference clip's DDIM trajectory (MotionClone v1, docs/algorithm.md §8)."""

from __future__ import annotations

import comfy.sample
from comfy_api.latest import io, ui

from ..motionclone import MotionCloneError
from ..motionclone.validation import require_finite
from .engine.checks import check_conditioning, check_frame_limit, require_motion_model
from .engine.run import frames_per_forward
from .engine.samplers import invert_clip
from .types import InversionSocket


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
                          "Encode at most that many frames, e.g. with 'MotionClone: Select Frames' (its 'frames' "
                          "input) before VAE Encode, or wire 'MotionClone: Context Windows' before this node.")
        inversion, noised, reconstruction = invert_clip(model, samples, conditioning, steps, motion_model.family)
        return io.NodeOutput(inversion, {"samples": noised}, reconstruction, ui=ui.PreviewText(inversion.describe()))


NODES = [DDIMInversion]
