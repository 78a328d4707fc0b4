"""Nodes that extract a motion representation from a reference clip, and save or load it."""

from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.latest import io, ui

from ..motionclone import RESIZE_MODES, MotionCloneError, load_motion, save_motion
from .engine.checks import check_conditioning, checked_motion, require_attention_model
from .engine.reading import extract_motion, reference_latent
from .types import InversionSocket, MotionSocket

MOTION_FOLDER = "motionclone"  # models/motionclone: saved motion representations
BLOCK_CHOICES = {
    "up_blocks.1": ("up_blocks.1",),
    "up_blocks.2": ("up_blocks.2",),
    "up_blocks.1 + up_blocks.2": ("up_blocks.1", "up_blocks.2"),
}
logger = logging.getLogger("MotionClone")


class ExtractMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneExtractMotion",
            display_name="MotionClone: Extract Motion",
            category="MotionClone",
            description="Reads the motion of a reference clip: noises it to one timestep, runs the AnimateDiff MODEL "
            "once, and keeps the strongest temporal-attention entries (MotionClone's motion representation).",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL after 'MotionClone: Apply AnimateDiff'. Use the same "
                               "checkpoint and motion module you will sample with."),
                io.Int.Input("width", default=512, min=64, max=4096, step=8,
                             tooltip="Frame width to extract at (multiple of 8); must equal the width you generate."),
                io.Int.Input("height", default=512, min=64, max=4096, step=8,
                             tooltip="Frame height to extract at (multiple of 8); must equal the height you generate."),
                io.Combo.Input("resize", options=list(RESIZE_MODES), default="stretch",
                               tooltip="How frames of another size or aspect ratio are fitted: 'stretch' resizes "
                               "the whole frame (the official preprocessing; distorts other aspect ratios), 'crop' "
                               "cuts the centre to the target aspect ratio first, then resizes."),
                io.Int.Input("timestep", default=400, min=1, max=999,
                             tooltip="Noise timestep the reference is read at (t_alpha; the official value is "
                             "400). Lower keeps more of the reference's layout, higher keeps only coarse motion."),
                io.Int.Input("seed", default=2025, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the noise added to the reference. Use the same seed in the sampler: "
                             "the official code starts sampling from this same noise."),
                io.Combo.Input("blocks", options=list(BLOCK_CHOICES), default="up_blocks.1",
                               tooltip="Motion-module blocks whose temporal attention is kept. up_blocks.1 (6 layers, "
                               "1/32 resolution) is the official choice; up_blocks.2 adds finer (1/16) motion."),
                io.Int.Input("top_k", default=1, min=1, max=64,
                             tooltip="Attention entries kept per position, head and frame (1 is the official value). "
                             "At most the frame count."),
                io.Image.Input("images", optional=True, tooltip="Reference frames (the batch is the frame axis), e.g. "
                               "from 'MotionClone: Select Frames' after a video loader. Needs 'vae'. Leave empty when "
                               "'latent' is given."),
                io.Vae.Input("vae", optional=True, tooltip="Encodes 'images'; use the VAE of your checkpoint."),
                io.Latent.Input("latent", optional=True, tooltip="An already encoded reference clip (instead of "
                                "images + vae); its size is used as is."),
                io.Conditioning.Input("conditioning", optional=True, tooltip="Prompt describing the reference. "
                                      "Leave empty for the empty prompt, as the official code (needs 'clip')."),
                io.Clip.Input("clip", optional=True, tooltip="Encodes the empty prompt when no conditioning is given."),
                InversionSocket.Input("inversion", optional=True, tooltip="A DDIM inversion of the reference clip "
                                      "(instead of images/latent): the motion is then read at every guided step of "
                                      "the sampling schedule below, from the inverted latent nearest to it (the "
                                      "paper's v1). 'timestep' and 'seed' are not used."),
                io.Int.Input("steps", default=100, min=1, max=1000, optional=True,
                             tooltip="With 'inversion' only: the sampler's steps (must equal the sampler's)."),
                io.Int.Input("guided_steps", default=-1, min=-1, max=1000, optional=True,
                             tooltip="With 'inversion' only: the sampler's guided_steps (must equal the sampler's)."),
                io.Float.Input("guided_fraction", default=0.3, min=0.01, max=0.99, step=0.01, optional=True,
                               tooltip="With 'inversion' only: the sampler's guided_fraction (must equal the "
                               "sampler's)."),
            ],
            outputs=[MotionSocket.Output(display_name="MOTION", tooltip="The motion representation, for "
                                         "'MotionClone Sampler', 'MotionClone: Guidance' or 'Save Motion'.")],
        )

    @classmethod
    def execute(cls, model, width, height, resize, timestep, seed, blocks, top_k, images=None, vae=None, latent=None,
                conditioning=None, clip=None, inversion=None, steps=100, guided_steps=-1,
                guided_fraction=0.3) -> io.NodeOutput:
        motion_model = require_attention_model(model, "MotionClone: Extract Motion")
        if inversion is not None:
            if images is not None or latent is not None:
                raise MotionCloneError(
                    "Connect either 'inversion' or a reference clip ('images' or 'latent'), not both."
                )
            samples = inversion.latents[-1]
        else:
            samples = reference_latent(images, vae, latent, width, height, resize)
        if conditioning is None:
            if clip is None:
                raise MotionCloneError("Connect 'clip' (to encode the empty prompt, as the official code) or a "
                                       "'conditioning' describing the reference clip.")
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        check_conditioning(conditioning, "conditioning")
        source = "inversion" if inversion is not None else ("latent" if latent is not None else "images")
        representation, note = extract_motion(model, motion_model, samples, conditioning, source, timestep, seed,
                                              BLOCK_CHOICES[blocks], top_k, inversion, steps, guided_steps,
                                              guided_fraction)
        summary = f"{representation.metadata.describe()}; {representation.nbytes() / 1024:.0f} KiB{note}"
        logger.info("Extracted motion: %s", summary)
        return io.NodeOutput(representation, ui=ui.PreviewText(summary))


class SaveMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneSaveMotion",
            display_name="MotionClone: Save Motion",
            category="MotionClone",
            description="Saves a motion representation to models/motionclone, to reuse or share it.",
            inputs=[
                MotionSocket.Input("motion", tooltip="From 'MotionClone: Extract Motion'."),
                io.String.Input("filename_prefix", default="motion",
                                tooltip="File name start inside models/motionclone (subfolders allowed); a counter "
                                "is appended so nothing is overwritten."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, motion, filename_prefix: str) -> io.NodeOutput:
        motion = checked_motion(motion)
        _check_prefix(filename_prefix)
        folder = folder_paths.get_folder_paths(MOTION_FOLDER)[0]
        os.makedirs(folder, exist_ok=True)
        full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, folder)
        os.makedirs(full_folder, exist_ok=True)
        name = f"{filename}_{counter:05}_.safetensors"
        save_motion(motion, os.path.join(full_folder, name))
        relative = os.path.join(subfolder, name) if subfolder else name
        logger.info("Saved motion to %s", os.path.join(full_folder, name))
        return io.NodeOutput(
            ui=ui.PreviewText(f"Saved models/{MOTION_FOLDER}/{relative}: {motion.metadata.describe()}")
        )


MAX_PREFIX_PART = 100  # characters per folder or file name of the prefix: the counter and suffix must fit in 255


def _check_prefix(prefix: str) -> None:
    """Refuse prefixes that make hidden, unwritable or unreadable names, before the OS does with a raw error."""
    parts = prefix.replace("\\", "/").split("/")
    problem = None
    if not prefix.strip() or not parts[-1].strip():
        problem = "is empty (the file would be a hidden '._00001_.safetensors')"
    elif any(ord(c) < 32 or c in '<>:"|?*' for c in prefix):
        problem = "contains a control character or one of < > : \" | ? *"
    elif any(len(part) > MAX_PREFIX_PART for part in parts):
        problem = f"has a folder or file name longer than {MAX_PREFIX_PART} characters"
    elif any(part.startswith(".") for part in parts if part):
        problem = "has a name starting with '.' (hidden, or outside models/motionclone)"
    if problem:
        raise MotionCloneError(f"'filename_prefix' {problem}. Type a short name such as 'motion' or 'walks/fox' "
                               "(letters, digits, '-', '_'; '/' for subfolders).")


class LoadMotion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneLoadMotion",
            display_name="MotionClone: Load Motion",
            category="MotionClone",
            description="Loads a motion representation saved by 'MotionClone: Save Motion'.",
            inputs=[
                io.Combo.Input("motion_file", options=folder_paths.get_filename_list(MOTION_FOLDER),
                               tooltip="A .safetensors file from models/motionclone."),
            ],
            outputs=[MotionSocket.Output(display_name="MOTION", tooltip="The saved motion representation.")],
        )

    @classmethod
    def execute(cls, motion_file: str) -> io.NodeOutput:
        representation = load_motion(folder_paths.get_full_path_or_raise(MOTION_FOLDER, motion_file))
        return io.NodeOutput(representation, ui=ui.PreviewText(f"{motion_file}: {representation.metadata.describe()}"))


NODES = [ExtractMotion, SaveMotion, LoadMotion]
