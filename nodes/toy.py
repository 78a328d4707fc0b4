"""'MotionClone: Load Toy Model' and 'MotionClone: Toy Reference Clip': try the pack on a CPU in a minute.

The model and its loaders are `engine/toy_model.py`; the toy world and its clips `motionclone/toyworld.py`.
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..motionclone.errors import MotionCloneError
from ..motionclone.toyworld import FRAME_SIZE, FRAMES, TOY_CLIPS, toy_clip_frames
from .engine.toy_model import load_toy_model
from .types import MotionModelSocket


class LoadToyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneLoadToyModel",
            display_name="MotionClone: Load Toy Model",
            category="MotionClone",
            description="The toy video model bundled with the pack (under 10 MB): an SD1.5-architecture UNet at toy "
            "widths, an AnimateDiff v3-layout motion module, a tiny text encoder and VAE, trained on a toy world of "
            "one coloured shape (red, green, blue, yellow, cyan, magenta, orange or white circle, square or "
            "triangle) moving, zooming or still on a dark background, 8 frames at 128x128, in 18 minutes on one CPU "
            "core. It draws soft-edged coloured blobs on the dark background and follows the prompt's colour and "
            "shape only weakly (trained too briefly for that); motion guidance moves its blobs with the reference. "
            "For trying the pack on a CPU before downloading SD1.5.",
            inputs=[],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The toy SD1.5-architecture MODEL, for 'MotionClone: "
                                "Apply AnimateDiff' (sample 128x128, 8 frames)."),
                io.Clip.Output(display_name="CLIP", tooltip="The toy text encoder, for CLIP Text Encode: it knows "
                               "the toy world's words only (colours, circle, square, triangle, a, an, and)."),
                io.Vae.Output(display_name="VAE", tooltip="The toy VAE (TAESD layout; a stock 'Load VAE' reads the "
                              "same file): latents are 1/8 of the frame size."),
                MotionModelSocket.Output(display_name="MOTION_MODEL", tooltip="The toy motion module, for "
                                         "'MotionClone: Apply AnimateDiff'."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        unet, clip, vae, motion_model, description = load_toy_model()
        return io.NodeOutput(unet, clip, vae, motion_model, ui=ui.PreviewText(description))


class ToyReferenceClip(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneToyReferenceClip",
            display_name="MotionClone: Toy Reference Clip",
            category="MotionClone",
            description="A reference clip from the toy world the toy model was trained on: one coloured shape on a "
            "dark background with exactly known motion (8 frames at 128x128 by default). For trying motion "
            "cloning with 'MotionClone: Load Toy Model'.",
            inputs=[
                io.Combo.Input("clip", options=list(TOY_CLIPS), default=next(iter(TOY_CLIPS)),
                               tooltip="Which clip: the motion to clone. Re-draw it with another colour and shape in "
                               "the new prompt to see the motion carried over."),
                io.Int.Input("frames", default=FRAMES, min=2, max=32,
                             tooltip="Frame count (the toy model was trained on 8)."),
                io.Int.Input("size", default=FRAME_SIZE, min=64, max=512, step=8,
                             tooltip="Width and height in px (the toy model was trained on 128)."),
            ],
            outputs=[io.Image.Output(tooltip="The clip's frames (the batch is the frame axis).")],
        )

    @classmethod
    def execute(cls, clip, frames, size) -> io.NodeOutput:
        if clip not in TOY_CLIPS:
            raise MotionCloneError(f"Unknown toy clip {clip!r}; choose one of {', '.join(TOY_CLIPS)}.")
        return io.NodeOutput(toy_clip_frames(clip, frames, size))


NODES = [LoadToyModel, ToyReferenceClip]
