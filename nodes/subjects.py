"""Subject masks from cross-attention, and the settings of location-aware semantic guidance (docs/algorithm.md §5)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

from ..motionclone import MotionCloneError
from ..motionclone.subject import SemanticSettings, SubjectMask
from .engine.checks import require_attention_model
from .engine.reading import read_subject_cross_attention, subject_token_positions
from .types import InversionSocket, SemanticGuidanceSocket, SubjectMaskSocket


class CrossAttentionMask(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneCrossAttentionMask",
            display_name="MotionClone: Cross-Attention Mask",
            category="MotionClone",
            description="Where a subject word sits in every frame, from the UNet's cross-attention to that word "
            "(MotionClone's location-aware semantic guidance). With a source (inversion or latent) it masks the "
            "reference clip's subject; without one it names the new prompt's subject, masked while sampling.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL after 'MotionClone: Apply AnimateDiff'."),
                io.Clip.Input("clip", tooltip="Your checkpoint's CLIP; its tokenizer finds the subject's tokens."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The prompt the subject appears in: the reference clip's description (with "
                                "a source) or the new prompt, exactly as given to the sampler (without)."),
                io.String.Input("subject", default="", tooltip="The subject's word in the prompt, e.g. 'fox'. Several "
                                "words separated by commas are masked together; a word split into several tokens "
                                "uses all of them."),
                io.Float.Input("threshold", default=0.3, min=0.0, max=1.0, step=0.01,
                               tooltip="Cells whose normalised attention exceeds this are the subject (official 0.3)."),
                io.Int.Input("blur_kernel_size", default=1, min=1, max=31, step=2,
                             tooltip="Gaussian blur of the mask, kernel size in attention cells (odd; 1 = no blur, "
                             "as the official code). Softens the mask's edge."),
                io.Float.Input("blur_sigma", default=1.0, min=0.1, max=20.0, step=0.1,
                               tooltip="Standard deviation of the Gaussian blur, in attention cells."),
                io.Float.Input("centroid_sigma", default=5.0, min=0.0, max=100.0, step=0.5,
                               tooltip="Reference masks only: weight the subject by a Gaussian of this width (cells) "
                               "around its centre, the official 'blur' (5). 0 = plain mask."),
                io.Int.Input("timestep", default=400, min=1, max=999,
                             tooltip="Noise timestep at which the source is read (nearest inversion step, or the "
                             "latent noised to it). Lower reads a cleaner clip."),
                io.Int.Input("seed", default=2025, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the noise added to 'latent' (not used with 'inversion')."),
                InversionSocket.Input("inversion", optional=True,
                                      tooltip="Source: the reference clip's DDIM inversion."),
                io.Latent.Input("latent", optional=True, tooltip="Source: the reference clip encoded by VAE Encode."),
            ],
            outputs=[
                io.Mask.Output(display_name="MASK", tooltip="The subject's weight per frame at image resolution "
                               "(frames x H x W, 0..1): preview it or use it as any mask. Empty without a source."),
                SubjectMaskSocket.Output(display_name="MOTIONCLONE_MASK", tooltip="For 'MotionClone: Semantic "
                                         "Guidance' (reference_mask with a source, subject_mask without)."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, prompt, subject, threshold, blur_kernel_size, blur_sigma, centroid_sigma, timestep,
                seed, inversion=None, latent=None) -> io.NodeOutput:
        require_attention_model(model, "MotionClone: Cross-Attention Mask")
        if blur_kernel_size % 2 == 0:
            raise MotionCloneError(
                f"'blur_kernel_size' must be odd, got {blur_kernel_size}; use {blur_kernel_size + 1}."
            )
        words, positions = subject_token_positions(clip, prompt, subject)
        mask = SubjectMask(words, prompt, positions, threshold, blur_kernel_size, blur_sigma, centroid_sigma)
        if inversion is None and latent is None:
            # The new subject's mask is read from the sampler's positive prompt: remember it, so that the sampler
            # can tell when another prompt is connected (its token positions would point at other words).
            encoding = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0][:1, :77].detach().cpu().clone()
            mask = dataclasses.replace(mask, prompt_encoding=encoding)
            text = f"{mask.describe()}: connect it as 'subject_mask' of 'MotionClone: Semantic Guidance'."
            return io.NodeOutput(torch.zeros(1, 64, 64), mask, ui=ui.PreviewText(text))
        conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        clip_latent, cross = read_subject_cross_attention(model, conditioning, inversion, latent, timestep, seed)
        foreground, background = mask.reference_weights(cross)
        mask = SubjectMask(words, prompt, positions, threshold, blur_kernel_size, blur_sigma, centroid_sigma,
                           foreground.cpu(), background.cpu())
        image_size = (clip_latent.shape[-2] * 8, clip_latent.shape[-1] * 8)
        preview = F.interpolate(foreground[:, None].float().cpu(), size=image_size, mode="bilinear").clamp(0, 1)[:, 0]
        return io.NodeOutput(preview, mask, ui=ui.PreviewMask(preview, cls=cls))


class SemanticGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneSemanticGuidance",
            display_name="MotionClone: Semantic Guidance",
            category="MotionClone",
            description="Location-aware semantic guidance (the paper's v1): keeps the new subject where the "
            "reference subject moved, by pulling the video's temporal features under the reference subject's mask "
            "towards those of an unguided video of the new prompt. Without masks: global mode (camera motion).",
            inputs=[
                io.Float.Input("weight_up_blocks_1", default=500.0, min=0.0, max=100000.0, step=10.0,
                               tooltip="Semantic guidance weight on up_blocks.1 (official 500)."),
                io.Float.Input("weight_up_blocks_2", default=0.0, min=0.0, max=100000.0, step=10.0,
                               tooltip="Semantic guidance weight on up_blocks.2 (official 0; 200 in the 'walk' "
                               "config)."),
                SubjectMaskSocket.Input("reference_mask", optional=True, tooltip="The reference clip's subject: a "
                                        "'Cross-Attention Mask' with a source."),
                SubjectMaskSocket.Input("subject_mask", optional=True, tooltip="The new prompt's subject word: a "
                                        "'Cross-Attention Mask' without a source."),
            ],
            outputs=[SemanticGuidanceSocket.Output(display_name="SEMANTIC_GUIDANCE", tooltip="For the "
                                                   "'semantic_guidance' input of 'MotionClone Sampler' or "
                                                   "'MotionClone: Guidance'.")],
        )

    @classmethod
    def execute(cls, weight_up_blocks_1, weight_up_blocks_2, reference_mask=None, subject_mask=None) -> io.NodeOutput:
        settings = SemanticSettings(reference_mask, subject_mask,
                                    (("up_blocks.1", weight_up_blocks_1), ("up_blocks.2", weight_up_blocks_2)))
        mode = ("global (no subject)" if settings.global_mode
                else f"{reference_mask.describe()} -> {subject_mask.describe()}")
        return io.NodeOutput(settings, ui=ui.PreviewText(f"Semantic guidance: {mode}"))


NODES = [CrossAttentionMask, SemanticGuidance]
