"""The bundled toy video model: its architecture, weights and loaders, for trying the pack on a CPU in a minute.

The weights ship in `nodes/engine/toy_weights/` (made by `bench/toymodel/train.py`, checked against their
SHA256SUMS on load). Everything is built with ComfyUI's own classes at toy widths:

- UNet: `comfy.supported_models.SD15` with `TOY_UNET` (12 input and 12 output blocks like SD1.5; widths
  32, 32, 64, 64; cross-attention at 1/2 and 1/4 of the latent size only, to save CPU time).
- Motion module: `motionclone.AnimateDiffMotionModel` with the UNet's widths, AnimateDiff v3 layout (no mid
  block, 32-frame positional encoding), saved in the released key layout and read by this pack's loader.
- Text encoder: ComfyUI's `SD1ClipModel` with the real CLIP tokenizer and a 2-layer, 64-wide transformer.
  The file keeps only the token-embedding rows of the toy world's words (`token_ids` + `token_rows`); all
  other tokens embed to zero, so words outside the toy world carry no meaning.
- VAE: ComfyUI's TAESD layout with hand-set weights: the encoder is an 8x8 box average of the RGB image
  (latent channels 0-2; channel 3 is the mean of the three), the decoder a smooth 8x upsampling of those
  colours. A stock 'Load VAE' reads the file.
"""

from __future__ import annotations

import functools
import os

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.utils
import torch

from ...motionclone.checksums import verified_path
from ...motionclone.toyworld import FRAME_SIZE
from .motion_model import load_motion_model

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_weights")
UNET_FILE, MOTION_FILE, CLIP_FILE, VAE_FILE = (
    "toy_unet.safetensors", "toy_motion_module.safetensors", "toy_clip.safetensors", "toy_vae.safetensors")

RESTORE_WEIGHTS = ("They ship with the pack in nodes/engine/toy_weights: restore them with git checkout (or reinstall "
                   "the pack), or remake all four and their SHA256SUMS with bench/toymodel/train.py.")

LATENT_SIZE = FRAME_SIZE // 8  # 16: up_blocks.1 (latent / 4) has 4 x 4 positions
CONTEXT_DIM = 64
TOY_UNET = {
    "context_dim": CONTEXT_DIM,
    "model_channels": 32,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "in_channels": 4,
    "out_channels": 4,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 1, 2, 2],
    # Input levels pop from the front, output blocks from the back: cross-attention at levels 1 and 2.
    "transformer_depth": [0, 0, 1, 1, 1, 1, 0, 0],
    "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "transformer_depth_middle": 1,
    "use_spatial_transformer": True,
    "legacy": False,
    "image_size": LATENT_SIZE,
}
MOTION_CHANNELS = tuple(TOY_UNET["model_channels"] * m for m in TOY_UNET["channel_mult"])
MOTION_MAX_FRAMES = 32  # AnimateDiff v3's positional-encoding length

CLIP_CONFIG = {
    "hidden_size": CONTEXT_DIM, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 2,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1, "projection_dim": CONTEXT_DIM,
}
TOKEN_EMBEDDING_KEY = "clip_l.transformer.text_model.embeddings.token_embedding.weight"


def build_unet_model():
    """A fresh `comfy.model_base.BaseModel` (SD15 config class, v-prediction) with `TOY_UNET`; weights
    uninitialised.

    v-prediction (as SD2 and SD1.5 v-prediction fine-tunes): with epsilon prediction the denoised estimate
    at the noisiest timesteps is the epsilon error times sigma (~25 under AnimateDiff's schedule), so a toy
    UNet trained for minutes drew noise; v-prediction keeps that error at the size of the UNet's own.
    """
    import comfy.model_base
    import comfy.supported_models

    config = comfy.supported_models.SD15(dict(TOY_UNET))
    config.set_inference_dtype(torch.float32, None)
    return comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION)


def clip_target():
    """The `comfy.sd.CLIP` target of the toy text encoder (ComfyUI's SD1 classes, toy transformer)."""
    import comfy.sd1_clip

    class ToyClipTarget:
        params = {"clip_model": functools.partial(comfy.sd1_clip.SDClipModel, textmodel_json_config=dict(CLIP_CONFIG))}
        clip = comfy.sd1_clip.SD1ClipModel
        tokenizer = comfy.sd1_clip.SD1Tokenizer

    return ToyClipTarget()


def weight_path(name: str, folder: str = WEIGHTS_DIR) -> str:
    """Path of a bundled weight file after checking it against the folder's SHA256SUMS."""
    return verified_path(folder, name, "The toy model", RESTORE_WEIGHTS)


def load_toy_unet(disable_dynamic: bool = False) -> comfy.model_patcher.ModelPatcher:
    """The toy UNet on the patcher ComfyUI's own loaders use (`CoreModelPatcher`: the dynamic-VRAM one where that
    is on), with the reload factory they register (`cached_patcher_init`), so that it is loaded, offloaded and
    reloaded without dynamic VRAM exactly as a checkpoint from Load Checkpoint is. Older ComfyUIs have neither."""
    model = build_unet_model()
    patcher_class = comfy.model_patcher.ModelPatcher if disable_dynamic else getattr(
        comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    patcher = patcher_class(
        model, comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device()
    )
    state = comfy.utils.load_torch_file(weight_path(UNET_FILE), safe_load=True)
    dynamic = getattr(patcher, "is_dynamic", lambda: False)()
    model.load_model_weights(state, "model.diffusion_model.", **({"assign": True} if dynamic else {}))
    if hasattr(patcher, "cached_patcher_init"):
        patcher.cached_patcher_init = (load_toy_unet, ())
    return patcher


def load_toy_clip() -> comfy.sd.CLIP:
    """The toy text encoder; tokens outside the toy world's words embed to zero."""
    clip = comfy.sd.CLIP(clip_target())
    stored = comfy.utils.load_torch_file(weight_path(CLIP_FILE), safe_load=True)
    state = clip.cond_stage_model.state_dict()
    embedding = torch.zeros_like(state[TOKEN_EMBEDDING_KEY])
    embedding[stored.pop("token_ids")] = stored.pop("token_rows").to(embedding.dtype)
    state.update({key: value.to(state[key].dtype) for key, value in stored.items()})
    state[TOKEN_EMBEDDING_KEY] = embedding
    clip.cond_stage_model.load_state_dict(state)
    return clip


def load_toy_vae() -> comfy.sd.VAE:
    return comfy.sd.VAE(sd=comfy.utils.load_torch_file(weight_path(VAE_FILE), safe_load=True))


def load_toy_model():
    """`(MODEL, CLIP, VAE, MOTION_MODEL, description)`: the bundled toy model, every file checked first."""
    motion_model, spec = load_motion_model(weight_path(MOTION_FILE))
    description = f"toy model: SD1.5-architecture UNet {MOTION_CHANNELS}, {spec.describe()}"
    return load_toy_unet(), load_toy_clip(), load_toy_vae(), motion_model, description
