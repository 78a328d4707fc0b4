"""Every file the workflows and the server tests name, with how to build a tiny stand-in for it.

`MODEL_FILES` is the one table: a workflow in `workflows/` that names a file (a checkpoint, a LoRA, a
motion module, a reference clip) runs in the tests once its path is listed here. Keys are paths under
ComfyUI's base directory; values build the file at that path. The stand-ins are real files in the real
formats, with random seeded weights, so ComfyUI's own loaders read them as they read the released files.

Builders import ComfyUI, so they run only after the in-process ComfyUI of the integration tier started.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import safetensors.torch
import torch
from prompts import FRAMES
from tiny_models import tiny_motion_state_dict

# SD1.5's block layout with every level 320 channels wide. ComfyUI recognises a checkpoint as SD1.5 by
# its 320 base channels and 768-wide text context, so this is the narrowest UNet CheckpointLoaderSimple
# still loads as SD1.5; the motion module is built with the same widths.
CHECKPOINT_UNET = {
    "context_dim": 768, "model_channels": 320, "use_linear_in_transformer": False, "adm_in_channels": None,
    "use_temporal_attention": False, "in_channels": 4, "out_channels": 4, "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 1, 1, 1], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1], "transformer_depth_middle": 1,
    "num_heads": 8, "use_spatial_transformer": True, "legacy": False, "image_size": 32,
}
CHECKPOINT_CHANNELS = (320, 320, 320, 320)
# SD1.5's own UNet config (860M parameters) and the widths of a v3 motion module for it.
SD15_UNET = {**CHECKPOINT_UNET, "channel_mult": [1, 2, 4, 4],
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
SD15_CHANNELS = (320, 640, 1280, 1280)
CLIP_FPS = 8


def write_sd15_checkpoint(path: Path, unet: dict = CHECKPOINT_UNET) -> None:
    """A single-file SD1.5 checkpoint in the LDM key layout: UNet, CLIP-L text encoder, and a TAESD as its VAE.

    The text encoder has CLIP-L's real size (ComfyUI builds SD1.5's from a fixed config); the VAE is a
    TAESD, which ComfyUI's VAE class recognises by its keys, to keep encoding and decoding instant. `unet`:
    the UNet config (`SD15_UNET` for SD1.5's full size).
    """
    import comfy.sd1_clip
    import comfy.supported_models
    from testing_pack import seeded_weights, tiny_taesd_state

    config = comfy.supported_models.SD15(dict(unet))
    config.set_inference_dtype(torch.float32, None)
    state = {f"model.diffusion_model.{k}": v
             for k, v in seeded_weights(config.get_model({}).diffusion_model, seed=21).items()}
    text_encoder = seeded_weights(comfy.sd1_clip.SD1ClipModel(device="cpu"), seed=22)
    prefix = "clip_l.transformer.text_model."  # the file format has no projection and no logit scale
    state.update({f"cond_stage_model.transformer.text_model.{k[len(prefix):]}": v
                  for k, v in text_encoder.items() if k.startswith(prefix)})
    state.update({f"first_stage_model.{k}": v for k, v in tiny_taesd_state(seed=23).items()})
    safetensors.torch.save_file({k: v.half().contiguous() for k, v in state.items()}, str(path))


def write_sd15_lora(path: Path) -> None:
    """A rank-4 LoRA in kohya-ss naming (as community SD1.5 LoRAs ship) on UNet and text-encoder layers."""
    generator = torch.Generator().manual_seed(24)
    layers = {  # name: (in features, out features)
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (320, 320),
        "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k": (768, 320),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
    }
    state = {}
    for name, (fan_in, fan_out) in layers.items():
        state[f"{name}.lora_down.weight"] = torch.randn(4, fan_in, generator=generator) * fan_in**-0.5
        state[f"{name}.lora_up.weight"] = torch.randn(fan_out, 4, generator=generator) * 0.1
        state[f"{name}.alpha"] = torch.tensor(4.0)
    safetensors.torch.save_file(state, str(path))


def write_checkpoint_motion_module(path: Path) -> None:
    """An AnimateDiff v3 module as the released .ckpt is: a pickled fp16 state dict, here at the checkpoint's widths."""
    state = tiny_motion_state_dict("v3", seed=11, channels=CHECKPOINT_CHANNELS)
    torch.save({k: v.half() for k, v in state.items()}, str(path))


def write_tiny_motion_module(path: Path) -> None:
    """A v3 module at the widths of the test-only TinySD15 UNet, for the server tests' own prompts."""
    safetensors.torch.save_file(tiny_motion_state_dict("v3", seed=11), str(path))


def write_reference_clip(path: Path) -> None:
    """An H.264 MP4 of a square moving right: FRAMES frames of 160x96 (another aspect ratio than the output)."""
    import av
    from testing_pack import MovingSquare

    (frames,) = MovingSquare().build(frames=FRAMES, width=160, height=96)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            pixels = (frame * 255).round().to(torch.uint8).numpy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


MODEL_FILES: dict[str, Callable[[Path], None]] = {
    "models/checkpoints/v1-5-pruned-emaonly.safetensors": write_sd15_checkpoint,
    "models/checkpoints/realisticVisionV60B1_v51VAE.safetensors": write_sd15_checkpoint,
    "models/loras/add_detail.safetensors": write_sd15_lora,
    "models/animatediff_models/v3_sd15_mm.ckpt": write_checkpoint_motion_module,
    "models/animatediff_models/tiny_v3.safetensors": write_tiny_motion_module,
    "input/reference_clip.mp4": write_reference_clip,
}


def place_model_files(base: Path, cache: Path) -> None:
    """Write every file of MODEL_FILES under `base`; each builder runs once, its file is linked for other names."""
    built: dict[Callable[[Path], None], Path] = {}
    for relative, build in MODEL_FILES.items():
        target = base / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if build not in built:
            built[build] = cache / f"{build.__name__}{Path(relative).suffix}"
            build(built[build])
        os.link(built[build], target)
