"""The pieces of `train.py`: model assembly, fresh toy-world batches, the loss, the moving average, export.

Needs ComfyUI importable (see `train.py`) and this pack's root and `bench/` on `sys.path`.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch

from motionclone import AnimateDiffMotionModel, MotionModule
from toyworld import COLOURS, SHAPES, random_clip

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
    # "down_blocks.2.motion_modules.1" -> input_blocks[3 * 2 + 1 + 1]; "up_blocks.1.motion_modules.2" -> output_blocks[5]
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
                      for k, v in arch.seeded_clip_state(self.clip.cond_stage_model).items()}
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
            latents.append(self.arch.encode_frames(frames, cell=4))
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
        clip_state = {k: v.half() for k, v in self.clip_state.items() if k != arch.TOKEN_EMBEDDING_KEY and v.is_floating_point()}
        ids = torch.tensor(self.prompt_tokens, dtype=torch.int64)
        clip_state["token_ids"] = ids
        clip_state["token_rows"] = self.clip_state[arch.TOKEN_EMBEDDING_KEY][ids].half()
        vae_state = {k: v if v.ndim == 0 else v.to(torch.float8_e4m3fn) for k, v in arch.taesd_state().items()}
        return {"toy_unet.safetensors": unet_state, "toy_motion_module.safetensors": motion_state,
                "toy_clip.safetensors": clip_state, "toy_vae.safetensors": vae_state}
