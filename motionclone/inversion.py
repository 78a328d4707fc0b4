"""DDIM inversion of a reference latent, MotionClone v1's offline stage (docs/algorithm.md §8).

Everything here lives in diffusers' z-space, the latent the UNet sees: `z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`.

The official loop (a null-text-inversion style `next_step`) moves from the previous latent to the next
timestep with the noise predicted at the previous latent but the *target* timestep:

    eps    = eps_theta(z_prev, t_k)
    x0_hat = (z_prev - sqrt(1 - abar_prev) eps) / sqrt(abar_prev)
    z_k    = sqrt(abar_{t_k}) x0_hat + sqrt(1 - abar_{t_k}) eps

starting at `z_prev = z0` with `abar_prev = 1` (diffusers' `final_alpha_cumprod`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import MotionCloneError

NoisePrediction = Callable[[torch.Tensor, int], torch.Tensor]
StepHook = Callable[[int, int], None]


def inversion_timesteps(steps: int, train_steps: int = 1000) -> list[int]:
    """Ascending timesteps of a `steps`-step inversion: diffusers DDIM "leading" spacing with `steps_offset = 1`.

    Returns `[i * (train_steps // steps) + 1 for i in range(steps)]`, e.g. 1, 21, ..., 981 for 50 steps.
    `steps == train_steps` gives 0 .. train_steps - 1: the official 1000-step inversion visits every
    timestep, and the offset would push its last one out of range.
    """
    steps, train_steps = operator.index(steps), operator.index(train_steps)
    if train_steps < 1 or not 1 <= steps <= train_steps:
        raise MotionCloneError(
            f"Inversion steps must be between 1 and the {train_steps} training timesteps, got {steps}; "
            f"choose a step count in that range (the official inversion uses {train_steps})."
        )
    if steps == train_steps:
        return list(range(train_steps))
    stride = train_steps // steps
    return [i * stride + 1 for i in range(steps)]


def _checked_schedule(
    alphas_cumprod: torch.Tensor, timesteps: Sequence[int], ascending: bool
) -> tuple[list[int], list[float]]:
    """The timesteps as Python ints and their abar_t as float64 numbers, after checking order and range."""
    if alphas_cumprod.ndim != 1:
        raise MotionCloneError(
            "alphas_cumprod must be 1-D (one abar per training timestep), "
            f"got shape {tuple(alphas_cumprod.shape)}."
        )
    timesteps = [operator.index(t) for t in timesteps]
    if not timesteps:
        raise MotionCloneError("The timestep list is empty; give at least one timestep.")
    train_steps = alphas_cumprod.shape[0]
    if not all(0 <= t < train_steps for t in timesteps):
        raise MotionCloneError(f"Timesteps must lie in 0..{train_steps - 1}, got {timesteps[0]}..{timesteps[-1]}.")
    pairs = zip(timesteps, timesteps[1:])
    if not all((a < b) if ascending else (a > b) for a, b in pairs):
        order = "ascending" if ascending else "descending"
        raise MotionCloneError(f"Timesteps must be strictly {order}; reverse or deduplicate the list.")
    table = alphas_cumprod.detach().to(device="cpu", dtype=torch.float64)
    return timesteps, [float(table[t]) for t in timesteps]


def _carry_dtype(z: torch.Tensor) -> torch.dtype:
    """The dtype the running latent is kept in between steps.

    float64, so that a thousand steps of rounding do not add up in an fp32 or fp16 latent (an error at
    t near 999 reaches z0 magnified by 1/sqrt(abar) = 25); MPS has no float64, so float32 there.
    """
    return torch.float32 if z.device.type == "mps" else torch.float64


def _ddim_move(z: torch.Tensor, eps: torch.Tensor, abar_from: float, abar_to: float) -> torch.Tensor:
    """One eta = 0 DDIM move of `z` from `abar_from` to `abar_to` with noise `eps`, either direction.

    `sqrt(abar_to) * (z - sqrt(1 - abar_from) eps) / sqrt(abar_from) + sqrt(1 - abar_to) eps`, with both
    coefficients formed in float64 Python numbers; the result keeps z's dtype.
    """
    if eps.shape != z.shape:
        raise MotionCloneError(
            f"The noise prediction has shape {tuple(eps.shape)}, expected the latent's {tuple(z.shape)}."
        )
    scale = math.sqrt(abar_to / abar_from)
    eps_coefficient = math.sqrt(1.0 - abar_to) - scale * math.sqrt(1.0 - abar_from)
    return scale * z + eps_coefficient * eps.to(z.dtype)


def ddim_inversion(
    z0: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps: Sequence[int],
    eps: NoisePrediction,
    on_step: StepHook | None = None,
) -> list[torch.Tensor]:
    """DDIM inversion as the official v1 `next_step` loop runs it (docs/algorithm.md §8).

    Args:
        z0: `(F, C, h, w)` clean latent in z-space (VAE latent times the scaling factor).
        alphas_cumprod: `(T,)` abar_t for t = 0 .. T - 1.
        timesteps: strictly ascending t_1 < ... < t_N (`inversion_timesteps`).
        eps: `(z, t) -> eps` of z's shape; called at the previous latent (in z0's dtype) with the
            target timestep t_k.
        on_step: `(k, N)` after step k (1-based): progress reporting or an interrupt check.

    Returns:
        `[z_1, ..., z_N]`, each `(F, C, h, w)` in z0's dtype; z_k is the latent at t_k. Runs without
        gradients: an inversion never needs them, and 1000 kept graphs would not fit in memory.
    """
    timesteps, alpha_bars = _checked_schedule(alphas_cumprod, timesteps, ascending=True)
    trajectory = []
    z, abar_prev = z0.to(_carry_dtype(z0)), 1.0
    with torch.no_grad():
        for k, (t, abar) in enumerate(zip(timesteps, alpha_bars), start=1):
            z_seen = z.to(z0.dtype)
            z = _ddim_move(z, eps(z_seen, t), abar_prev, abar)
            trajectory.append(z.to(z0.dtype))
            abar_prev = abar
            if on_step is not None:
                on_step(k, len(alpha_bars))
    return trajectory


@dataclass(frozen=True)
class InvertedClip:
    """A reference clip's DDIM inversion.

    `latents[s]` `(F, 4, h, w)` is the clip at timestep `timesteps[s]` (ascending) in ComfyUI's LATENT
    convention: what a sampler given this LATENT with its noise disabled continues from at `sigmas[s]`.
    """

    latents: torch.Tensor  # (S, F, 4, h, w) float32, CPU
    timesteps: tuple[int, ...]
    sigmas: torch.Tensor  # (S,)
    model_family: str

    def nearest(self, timestep: int) -> int:
        """Index of the stored timestep closest to `timestep`."""
        return min(range(len(self.timesteps)), key=lambda s: abs(self.timesteps[s] - timestep))

    def describe(self) -> str:
        frames, _, height, width = self.latents.shape[1:]
        return (f"DDIM inversion: {len(self.timesteps)} steps t={self.timesteps[0]}..{self.timesteps[-1]}, "
                f"{frames} frames of {width * 8}x{height * 8} px, {self.latents.nbytes / 2**20:.0f} MiB, "
                f"{self.model_family}")
