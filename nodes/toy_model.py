"""'MotionClone: Load Toy Model': the bundled toy video model, for trying the pack on a CPU in a minute.

The weights ship in `bench/toymodel/weights` (made by `bench/toymodel/train.py`, checked against their
SHA256SUMS on load). Everything is built with ComfyUI's own classes: the SD1.5 model class with a toy
UNet config, `comfy.sd.CLIP` around ComfyUI's SD1 CLIP model with the real tokenizer, and `comfy.sd.VAE`
reading a TAESD-layout file; the motion module is read by this pack's own loader.
"""

from __future__ import annotations

import os

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..bench.toymodel import architecture
from ..bench.toyworld import ClipSpec, ShapeSpec, render_clip
from ..motionclone.checksums import verified_path
from ..motionclone.errors import MotionCloneError
from .patching import load_motion_model
from .types import MotionModelSocket

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "toymodel", "weights")
UNET_FILE, MOTION_FILE, CLIP_FILE, VAE_FILE = (
    "toy_unet.safetensors", "toy_motion_module.safetensors", "toy_clip.safetensors", "toy_vae.safetensors")


RESTORE_WEIGHTS = ("They ship with the pack in bench/toymodel/weights: restore them with git checkout (or reinstall the "
                   "pack), or remake all four and their SHA256SUMS with bench/toymodel/train.py.")


def weight_path(name: str, folder: str = WEIGHTS_DIR) -> str:
    """Path of a bundled weight file after checking it against the folder's SHA256SUMS."""
    return verified_path(folder, name, "The toy model", RESTORE_WEIGHTS)


def load_toy_unet(disable_dynamic: bool = False) -> comfy.model_patcher.ModelPatcher:
    """The toy UNet on the patcher ComfyUI's own loaders use (`CoreModelPatcher`: the dynamic-VRAM one where that
    is on), with the reload factory they register (`cached_patcher_init`), so that it is loaded, offloaded and
    reloaded without dynamic VRAM exactly as a checkpoint from Load Checkpoint is. Older ComfyUIs have neither."""
    model = architecture.build_unet_model()
    patcher_class = comfy.model_patcher.ModelPatcher if disable_dynamic else getattr(
        comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = patcher_class(model, comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device())
    state = comfy.utils.load_torch_file(weight_path(UNET_FILE), safe_load=True)
    dynamic = getattr(patcher, "is_dynamic", lambda: False)()
    model.load_model_weights(state, "model.diffusion_model.", **({"assign": True} if dynamic else {}))
    if hasattr(patcher, "cached_patcher_init"):
        patcher.cached_patcher_init = (load_toy_unet, ())
    return patcher


def load_toy_clip() -> comfy.sd.CLIP:
    """The toy text encoder; tokens outside the toy world's words embed to zero."""
    clip = comfy.sd.CLIP(architecture.clip_target())
    stored = comfy.utils.load_torch_file(weight_path(CLIP_FILE), safe_load=True)
    state = clip.cond_stage_model.state_dict()
    embedding = torch.zeros_like(state[architecture.TOKEN_EMBEDDING_KEY])
    embedding[stored.pop("token_ids")] = stored.pop("token_rows").to(embedding.dtype)
    state.update({key: value.to(state[key].dtype) for key, value in stored.items()})
    state[architecture.TOKEN_EMBEDDING_KEY] = embedding
    clip.cond_stage_model.load_state_dict(state)
    return clip


def load_toy_vae() -> comfy.sd.VAE:
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(weight_path(VAE_FILE), safe_load=True))


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
            "core. It draws soft-edged coloured blobs on the dark background and follows the prompt's colour and shape "
            "only weakly (trained too briefly for that); motion guidance moves its blobs with the reference. For trying "
            "the pack on a CPU before downloading SD1.5.",
            inputs=[],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The toy SD1.5-architecture MODEL, for 'MotionClone: "
                                "Apply AnimateDiff' (sample 128x128, 8 frames)."),
                io.Clip.Output(display_name="CLIP", tooltip="The toy text encoder, for CLIP Text Encode: it knows "
                               "the toy world's words only (colours, circle, square, triangle, a, an, and)."),
                io.Vae.Output(display_name="VAE", tooltip="The toy VAE (TAESD layout; a stock 'Load VAE' reads the "
                              "same file): latents are 1/8 of the frame size."),
                MotionModelSocket.Output(display_name="MOTION_MODEL", tooltip="The toy motion module, for 'MotionClone: "
                                         "Apply AnimateDiff'."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        motion_model, spec = load_motion_model(weight_path(MOTION_FILE))
        text = f"toy model: SD1.5-architecture UNet {architecture.MOTION_CHANNELS}, {spec.describe()}"
        return io.NodeOutput(load_toy_unet(), load_toy_clip(), load_toy_vae(), motion_model,
                             ui=ui.PreviewText(text))


# The bundled reference clips: (shape, colour, velocity px/frame at 128 px, zoom per frame).
TOY_CLIPS = {
    "red circle moving right": ("circle", "red", (8.0, 0.0), 1.0),
    "yellow square moving up-left": ("square", "yellow", (-5.0, -5.0), 1.0),
    "cyan triangle moving down": ("triangle", "cyan", (0.0, 7.0), 1.0),
    "white square moving left": ("square", "white", (-7.0, 0.0), 1.0),
    "green circle growing": ("circle", "green", (0.0, 0.0), 1.07),
}


def toy_clip_frames(name: str, frames: int = architecture.FRAMES, size: int = architecture.FRAME_SIZE) -> torch.Tensor:
    """A bundled toy-world clip `(frames, size, size, 3)` in [0, 1]: the shape crosses the frame's centre
    half-way through the clip."""
    kind, colour, velocity, zoom = TOY_CLIPS[name]
    scale = size / architecture.FRAME_SIZE
    velocity = (velocity[0] * scale, velocity[1] * scale)
    start = (size / 2 - velocity[0] * (frames - 1) / 2, size / 2 - velocity[1] * (frames - 1) / 2)
    shape = ShapeSpec(kind, colour, start, 0.16 * size, velocity, zoom)
    return render_clip(ClipSpec((shape,), frames, size, size)).frames


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
                io.Int.Input("frames", default=architecture.FRAMES, min=2, max=32,
                             tooltip="Frame count (the toy model was trained on 8)."),
                io.Int.Input("size", default=architecture.FRAME_SIZE, min=64, max=512, step=8,
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
