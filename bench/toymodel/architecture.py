"""The toy model's architecture: ComfyUI's own SD1.5 classes at toy widths, and its fixed-function VAE.

Shared by the training script (`train.py`) and the loader node (`nodes/toy_model.py`), so both build the
same modules. Needs an importable ComfyUI (`comfy.*`); the motion module is this pack's own class.

- UNet: `comfy.supported_models.SD15` with `TOY_UNET` (12 input and 12 output blocks like SD1.5; widths
  32, 32, 64, 64; cross-attention at 1/2 and 1/4 of the latent size only, to save CPU time).
- Motion module: `motionclone.AnimateDiffMotionModel` with the UNet's widths, AnimateDiff v3 layout (no mid
  block, 32-frame positional encoding), saved in the released key layout.
- Text encoder: ComfyUI's `SD1ClipModel` with the real CLIP tokenizer and a 2-layer, 64-wide transformer;
  frozen at seeded random weights during training (the UNet learns to read it). The file keeps only the
  token-embedding rows of the toy world's words (`toy_clip.safetensors`: `token_ids` + `token_rows`); all
  other tokens embed to zero, so words outside the toy world carry no meaning.
- VAE: ComfyUI's TAESD layout with hand-set weights: the encoder is an 8x8 box average of the RGB image
  (latent channels 0-2; channel 3 is the mean of the three), the decoder a smooth 8x upsampling of those
  colours. A stock 'Load VAE' reads the file. The toy world is flat colours, so the latent at 1/8
  resolution holds the colour coverage of every 8x8 cell and the decoder returns a soft-edged version of
  the frame. Weights are multiples of 1/16 and stored exactly in float8.
"""

from __future__ import annotations

import functools

import torch

FRAME_SIZE = 128  # px; latents are FRAME_SIZE / 8 = 16, so up_blocks.1 (latent / 4) has 4 x 4 positions
LATENT_SIZE = FRAME_SIZE // 8
FRAMES = 8
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
CLIP_SEED = 11
TOKEN_EMBEDDING_KEY = "clip_l.transformer.text_model.embeddings.token_embedding.weight"

# The model-space latent (VAE latent x SD1.5's scale factor 0.18215) is 4 * (colour - 0.09): the toy
# world's dark background is 0 and a shape's colours reach about 3.5, a spread like a real SD latent's.
# Centred on the background: with a large mean, an epsilon-predicting UNet has to predict the noise to
# within a few hundredths at the noisiest timesteps (the mean error is multiplied by sigma ~25 there),
# which the toy training did not reach (sampled frames kept a wrong mean and stayed noise).
# TAESD's vae_scale/vae_shift map the encoder's colour to that.
LATENT_GAIN = 4.0
LATENT_ZERO = 0.09  # the colour that maps to 0: the plain background's (0.08, 0.08, 0.10), rounded
SD15_SCALE_FACTOR = 0.18215
# TAESD's decoder starts with tanh(x / 3) * 3: the encoder hands on half the colour, where it is linear
# to within 1 %, and the decoder's last convolution doubles it again.
DECODER_INPUT_GAIN = 0.5
LUMA = torch.tensor([0.25, 0.5, 0.25])  # latent channel 3: (R + 2G + B) / 4, weights exact in float8
# TAESD encodes as encoder(image) / vae_scale + vae_shift and decodes decoder((z - vae_shift) * vae_scale).
VAE_SCALE = DECODER_INPUT_GAIN * SD15_SCALE_FACTOR / LATENT_GAIN
VAE_SHIFT = -LATENT_ZERO * LATENT_GAIN / SD15_SCALE_FACTOR


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


def seeded_clip_state(clip_model: torch.nn.Module, seed: int = CLIP_SEED) -> dict[str, torch.Tensor]:
    """Random weights for the toy text encoder, scaled by fan-in (ComfyUI's ops leave them uninitialised)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in clip_model.state_dict().items():
        if value.numel() == 0 or value.ndim == 0 or not value.is_floating_point():
            state[key] = value.clone()
        elif value.ndim == 1 and ("norm" in key or "layer_norm" in key) and key.endswith("weight"):
            state[key] = torch.ones_like(value)
        elif value.ndim == 1:
            state[key] = torch.zeros_like(value)
        else:
            fan_in = value.shape[-1]
            state[key] = torch.randn(value.shape, generator=generator) * fan_in**-0.5
    return state


def taesd_state() -> dict[str, torch.Tensor]:
    """The fixed-function TAESD state dict (ComfyUI's key layout), float32.

    Encoder: every `Block` is the identity (zero convolutions; its final ReLU keeps non-negative colours),
    each stride-2 convolution a 2x2 average, so the latent is the 8x8 mean colour. Decoder: `Block`s are
    identities again, each nearest-neighbour upsampling is followed by a [1, 2, 1] x [1, 2, 1] / 16 blur
    (together a smooth, bilinear-like 2x upsampling).
    """
    import comfy.taesd.taesd

    model = comfy.taesd.taesd.TAESD(latent_channels=4)
    state = {key: torch.zeros_like(value) for key, value in model.state_dict().items()}
    eye3 = torch.eye(3)

    def centre_tap(out_channels: int, in_channels: int, matrix: torch.Tensor) -> torch.Tensor:
        weight = torch.zeros(out_channels, in_channels, 3, 3)
        weight[: matrix.shape[0], : matrix.shape[1], 1, 1] = matrix
        return weight

    encoder = model.taesd_encoder
    decoder = model.taesd_decoder
    box = torch.zeros(3, 3)
    box[1:, 1:] = 0.25  # a stride-2 3x3 conv with padding 1 sees rows 2i-1..2i+1: taps 1 and 2 are 2i, 2i+1
    blur = torch.tensor([1.0, 2.0, 1.0])
    blur = torch.outer(blur, blur) / 16
    for index, layer in enumerate(encoder):
        if isinstance(layer, torch.nn.Conv2d):
            prefix = f"taesd_encoder.{index}"
            if layer.stride == (2, 2):
                weight = torch.zeros_like(state[f"{prefix}.weight"])
                for c in range(3):
                    weight[c, c] = box
                state[f"{prefix}.weight"] = weight
            elif layer.in_channels == 3:
                state[f"{prefix}.weight"] = centre_tap(layer.out_channels, 3, eye3)
            else:  # the last conv: 64 -> 4 latent channels
                matrix = torch.cat([eye3, LUMA[None]]) * DECODER_INPUT_GAIN
                state[f"{prefix}.weight"] = centre_tap(4, layer.in_channels, matrix)
    for index, layer in enumerate(decoder):
        if isinstance(layer, torch.nn.Conv2d):
            prefix = f"taesd_decoder.{index}"
            if layer.in_channels == 4:
                state[f"{prefix}.weight"] = centre_tap(layer.out_channels, 4, torch.cat([eye3, torch.zeros(3, 1)], 1))
            elif layer.out_channels == 3:
                state[f"{prefix}.weight"] = centre_tap(3, layer.in_channels, eye3 / DECODER_INPUT_GAIN)
            else:  # after an upsampling
                weight = torch.zeros_like(state[f"{prefix}.weight"])
                for c in range(3):
                    weight[c, c] = blur
                state[f"{prefix}.weight"] = weight
    state["vae_scale"] = torch.tensor(VAE_SCALE)
    state["vae_shift"] = torch.tensor(VAE_SHIFT)
    return state


def encode_frames(frames: torch.Tensor, cell: int = 8) -> torch.Tensor:
    """What the toy VAE encodes, computed directly: `(N, H, W, 3)` in [0, 1] -> model-space latents
    `(N, 4, H / cell, W / cell)` (the VAE's latent times SD1.5's scale factor). `cell` 8 is the VAE;
    a frame rendered at half size with `cell` 4 gives the same latent up to anti-aliasing."""
    colour = torch.nn.functional.avg_pool2d(frames.movedim(-1, 1), cell)
    luma = torch.einsum("nchw,c->nhw", colour, LUMA)[:, None]
    return LATENT_GAIN * (torch.cat([colour, luma], dim=1) - LATENT_ZERO)
