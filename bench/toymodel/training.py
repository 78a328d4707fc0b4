"""The pieces of `train.py`: model assembly, fresh toy-world batches, the loss, the moving average, export;
and what only training needs of the toy model: its seeded text encoder, its hand-set VAE, the VAE's latents.

The architecture and loaders are the product's (`nodes/engine/toy_model.py`, passed in as `arch`). Needs
ComfyUI importable (see `train.py`) and this pack's root on `sys.path`.

The VAE is ComfyUI's TAESD layout with hand-set weights: the encoder is an 8x8 box average of the RGB image
(latent channels 0-2; channel 3 is the mean of the three), the decoder a smooth 8x upsampling of those
colours. The toy world is flat colours, so the latent at 1/8 resolution holds the colour coverage of every
8x8 cell and the decoder returns a soft-edged version of the frame. Weights are multiples of 1/16 and
stored exactly in float8.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch

from motionclone import AnimateDiffMotionModel, MotionModule
from motionclone.toyworld import COLOURS, SHAPES, random_clip

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
CLIP_SEED = 11
EMA_DECAY = 0.998
PROMPT_DROPOUT = 0.1
MOTION_MIX = (("translate", 0.70), ("zoom", 0.15), ("static", 0.15))
RENDER_SIZE = 64  # rendered at half the frame size and pooled 4 x 4: the VAE's 1/8 latent of a 128 px frame
TRAIN_SPEED = (2.25, 4.5)  # px/frame at RENDER_SIZE, i.e. 4.5-9 px/frame at 128 px
# With `clip_frames` (8, 16) (train.py --clip-frames 8,16) clips alternate between 8 and 16 frames by step:
# 16 is the context-window length of long videos. A 16-frame path at the 8-frame speeds would leave the
# frame, so those move at half the speed (2.25-4.5 px/frame at 128 px).
LONG_CLIP_SPEED = (1.125, 2.25)
REVERSAL = 0.25  # fraction of 16-frame clips that turn back part-way (played forward to frame r, then back)


def toy_prompts() -> list[str]:
    """Every prompt the toy world writes for one shape, e.g. "a red circle", "an orange square"."""
    prompts = []
    for colour in COLOURS:
        for shape in SHAPES:
            prompts.append(f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}")
    return prompts


def insert_position(block) -> int:
    """Where AnimateDiff puts a block's motion module: after its last spatial transformer, else after its
    first resnet (the same rule as the pack's Apply AnimateDiff)."""
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    layers = list(block)
    transformers = [i for i, layer in enumerate(layers) if isinstance(layer, SpatialTransformer)]
    if transformers:
        return transformers[-1] + 1
    return next(i for i, layer in enumerate(layers) if isinstance(layer, ResBlock)) + 1


def _comfy_block(unet, module_name: str):
    # "down_blocks.2.motion_modules.1" -> input_blocks[3 * 2 + 1 + 1];
    # "up_blocks.1.motion_modules.2" -> output_blocks[5]
    parts = module_name.split(".")
    level, index = int(parts[1]), int(parts[3])
    if parts[0] == "down_blocks":
        return unet.input_blocks[3 * level + index + 1]
    return unet.output_blocks[3 * level + index]


def init_weights(module: torch.nn.Module, generator: torch.Generator, zero: tuple[str, ...]) -> None:
    """Fan-in scaled normal weights and zero biases; normalisation layers start as the identity (unit
    scale, zero shift); parameters whose name contains any of `zero` start at 0 (the output convolutions
    of resnets, transformers and the UNet, as in diffusion training)."""
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    with torch.no_grad():
        for name, layer in module.named_modules():
            for key, value in layer.named_parameters(recurse=False):
                full = f"{name}.{key}"
                if isinstance(layer, norms):
                    value.fill_(1.0 if key == "weight" else 0.0)
                elif any(z in full for z in zero) or value.ndim == 1:
                    value.zero_()
                else:
                    value.copy_(torch.randn(value.shape, generator=generator) * value[0].numel() ** -0.5)


class ToyTrainer:
    def __init__(self, arch, seed: int, init: str | None = None, clip_frames: tuple[int, ...] = (8,)):
        import comfy.ldm.modules.diffusionmodules.util as diffusion_util
        import comfy.sd

        self.arch = arch
        self.clip_frames = clip_frames
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.base_model = arch.build_unet_model()
        self.unet = self.base_model.diffusion_model
        init_weights(self.unet, self.generator, ("out.2.", "out_layers.3.", "proj_out."))
        self.motion = AnimateDiffMotionModel(arch.MOTION_CHANNELS, False, arch.MOTION_MAX_FRAMES)
        init_weights(self.motion, self.generator, ("proj_out.",))
        if init:
            self.load_weights(init)
        for module in self.motion.modules_in_forward_order():
            block = _comfy_block(self.unet, module.name)
            block.insert(insert_position(block), module)
        self.trainable = [p for p in self.unet.parameters()]  # the motion modules are inside the UNet now
        self.average = [p.detach().clone() for p in self.trainable]
        self.averaged_steps = 0

        self.clip = comfy.sd.CLIP(arch.clip_target())
        # Rounded to float16 so the text features seen in training are the ones the float16 file gives back.
        clip_state = {k: v.half().float() if v.is_floating_point() else v
                      for k, v in seeded_clip_state(self.clip.cond_stage_model).items()}
        self.clip.cond_stage_model.load_state_dict(clip_state)
        self.clip_state = clip_state
        self.prompts = toy_prompts()
        with torch.no_grad():
            self.conds = {p: self.encode(p) for p in [*self.prompts, ""]}
        self.prompt_tokens = sorted({token for p in [*self.prompts, ""] for token in self.token_ids(p)})

        betas = diffusion_util.make_beta_schedule("sqrt_linear", 1000, linear_start=0.00085, linear_end=0.012)
        self.alphas_cumprod = torch.cumprod(1.0 - torch.as_tensor(betas, dtype=torch.float64), 0).float()

    def load_weights(self, folder: str) -> None:
        """Start from the UNet and motion module of an earlier run's weight files in `folder` (fine-tuning)."""
        import os

        import safetensors.torch

        unet = safetensors.torch.load_file(os.path.join(folder, "toy_unet.safetensors"))
        prefix = "model.diffusion_model."
        self.unet.load_state_dict({k[len(prefix):]: v.float() for k, v in unet.items()})
        motion = safetensors.torch.load_file(os.path.join(folder, "toy_motion_module.safetensors"))
        self.motion.load_state_dict({k: v.float() for k, v in motion.items()})

    def encode(self, prompt: str) -> torch.Tensor:
        """`(77, 64)` text features, as ComfyUI's CLIP Text Encode computes them."""
        return self.clip.encode_from_tokens(self.clip.tokenize(prompt))[0].float()

    def token_ids(self, prompt: str) -> set[int]:
        tokens = self.clip.tokenize(prompt)
        return {int(t[0]) for chunk in tokens["l"] for t in chunk}

    def parameters(self):
        return self.trainable

    def frames_at(self, step: int) -> int:
        """Frames per clip of the batch at `step` (`clip_frames` in turn)."""
        return self.clip_frames[step % len(self.clip_frames)]

    def batch(self, clips: int, step: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Fresh clips of F = `frames_at(step)` frames: latents `(clips * F, 4, 16, 16)`, text features
        `(clips * F, 77, 64)`, and F."""
        latents, contexts = [], []
        motions, weights = zip(*MOTION_MIX)
        count = self.frames_at(step)
        for _ in range(clips):
            motion = motions[self.rng.choice(len(motions), p=weights)]
            speed = TRAIN_SPEED if count <= 8 else LONG_CLIP_SPEED
            clip = random_clip(int(self.rng.integers(2**31)), frames=count, height=RENDER_SIZE,
                               width=RENDER_SIZE, motion=motion, speed=speed)
            frames = clip.frames
            if count > 8 and self.rng.random() < REVERSAL:
                turn = int(self.rng.integers(count // 2, 3 * count // 4 + 1))
                frames = frames[[t if t <= turn else max(0, 2 * turn - t) for t in range(count)]]
            if self.rng.random() < 0.5:
                frames = frames.flip(2)  # mirror left-right: every shape is left-right symmetric
            if self.rng.random() < 0.5:
                frames = frames.flip(0)  # time reversed: the opposite motion, equally valid
            latents.append(encode_frames(frames, cell=4))
            prompt = "" if self.rng.random() < PROMPT_DROPOUT else clip.prompt
            contexts.append(self.conds[prompt].expand(count, -1, -1))
        return torch.cat(latents), torch.cat(contexts), count

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        def run_motion_module(layer, x, *args, **kwargs):
            return layer(x, frames, None)

        options = {"patches": {"forward_timestep_embed_patch": [(MotionModule, run_motion_module)]}}
        return self.unet(noisy, timesteps=timesteps, context=context, transformer_options=options)

    def loss(self, batch) -> torch.Tensor:
        """v-prediction MSE (target sqrt(a) * noise - sqrt(1 - a) * latent) at one random timestep per clip."""
        latents, context, frames = batch
        clips = latents.shape[0] // frames
        t = torch.randint(0, 1000, (clips,), generator=self.generator).repeat_interleave(frames)
        noise = torch.randn(latents.shape, generator=self.generator)
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * latents
        return torch.nn.functional.mse_loss(self.predict(noisy, t.float(), context, frames), target)

    @torch.no_grad()
    def update_average(self) -> None:
        self.averaged_steps += 1
        # Short memory early on, so the average never holds much of the random initial weights.
        decay = min(EMA_DECAY, (1 + self.averaged_steps) / (10 + self.averaged_steps))
        for average, param in zip(self.average, self.trainable):
            average.lerp_(param.detach(), 1 - decay)

    @torch.no_grad()
    def export(self, arch) -> dict[str, dict[str, torch.Tensor]]:
        """The four weight files' state dicts: the averaged UNet and motion module, the text encoder
        with only the toy world's token rows, and the fixed-function VAE."""
        averaged = copy.deepcopy(self.unet)
        for param, average in zip(averaged.parameters(), self.average):
            param.copy_(average)
        motion_state, unet_state = {}, {}
        for block in [*averaged.input_blocks, averaged.middle_block, *averaged.output_blocks]:
            for index in reversed(range(len(block))):
                layer = block[index]
                if isinstance(layer, MotionModule):
                    for key, value in layer.state_dict().items():
                        motion_state[f"{layer.name}.{key}"] = value.half()
                    del block[index]
            # Renumbered as the plain UNet has its layers (deleting from a Sequential leaves a gap).
            block._modules = OrderedDict((str(i), layer) for i, layer in enumerate(block._modules.values()))
        for key, value in averaged.state_dict().items():
            unet_state[f"model.diffusion_model.{key}"] = value.half()
        clip_state = {
            k: v.half() for k, v in self.clip_state.items() if k != arch.TOKEN_EMBEDDING_KEY and v.is_floating_point()
        }
        ids = torch.tensor(self.prompt_tokens, dtype=torch.int64)
        clip_state["token_ids"] = ids
        clip_state["token_rows"] = self.clip_state[arch.TOKEN_EMBEDDING_KEY][ids].half()
        vae_state = {k: v if v.ndim == 0 else v.to(torch.float8_e4m3fn) for k, v in taesd_state().items()}
        return {"toy_unet.safetensors": unet_state, "toy_motion_module.safetensors": motion_state,
                "toy_clip.safetensors": clip_state, "toy_vae.safetensors": vae_state}


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
