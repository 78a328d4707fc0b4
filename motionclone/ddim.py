"""DDIM (eta = 0) and MotionClone's guided DDIM step, written in ComfyUI's sigma space (docs/algorithm.md §7).

ComfyUI's sampler state is `x = z / sqrt(abar)` with `sigma = sqrt((1 - abar) / abar)`, so `abar = 1 / (1 + sigma^2)`.
There DDIM is the Euler step `x' = x + eps * (sigma' - sigma)` with `eps = (x - x0) / sigma`.

The official guided update (`schedule_customized_step`) keeps the clean estimate of the *unguided*
CFG prediction and puts the gradient only into the direction term:

    z' = sqrt(abar') * x0(eps) + sqrt(1 - abar') * (eps - sqrt(1 - abar) * dL/dz)

With `dL/dz = sqrt(1 + sigma^2) * dL/dx` this becomes, in sigma space,

    x' = x0 + sigma' * (eps - sigma * dL/dx)  =  Euler(x) - sigma' * sigma * dL/dx.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def euler_step(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """DDIM (eta = 0) as ComfyUI's `sample_euler` computes it, operation for operation.

    Args:
        x, denoised: `(F, C, h, w)` sampler state and CFG clean estimate; sigma, sigma_next: 0-d tensors.
    """
    d = (x - denoised) / sigma
    return x + d * (sigma_next - sigma)


def guided_ddim_step(
    x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, grad: torch.Tensor
) -> torch.Tensor:
    """MotionClone's guided DDIM step (docs/algorithm.md §7, gamma = 1) in sigma space.

    Args:
        x: `(F, C, h, w)` sampler state; denoised: the unguided CFG clean estimate at `x`.
        grad: `d(weighted loss)/dx`, taken with respect to the sampler state `x`.

    Returns:
        `Euler(x) - sigma_next * sigma * grad`, i.e. `x0 + sigma_next * (eps - sigma * grad)`.
    """
    return euler_step(x, denoised, sigma, sigma_next) - (sigma_next * sigma) * grad


Losses = dict[str, torch.Tensor]
# `(x, i) -> (denoised, grad, losses)`: the CFG clean estimate at step i; the gradient of the step's weighted
# loss with respect to x, or None for a plain step; the unweighted losses by name, or None when none were measured.
Predict = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor | None, Losses | None]]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]


@dataclass
class GuidanceLog:
    """Unweighted losses (e.g. "motion", "semantic") at the input of each guided step, filled by `sample_motionclone`;
    `reused`, one flag per guided step (filled by the caller's `predict`), says which steps reused an earlier
    step's gradient instead of running their own gradient pass."""

    series: dict[str, list[float]] = field(default_factory=dict)
    reused: list[bool] = field(default_factory=list)

    def add(self, losses: Losses) -> None:
        for name, value in losses.items():
            self.series.setdefault(name, []).append(float(value))

    def of(self, name: str) -> list[float]:
        return self.series.get(name, [])


def sample_motionclone(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    predict: Predict,
    on_step: StepCallback | None = None,
    log: GuidanceLog | None = None,
) -> torch.Tensor:
    """MotionClone's sampling loop (docs/algorithm.md §1, §7): guided DDIM steps where `predict` returns a
    gradient, plain CFG DDIM steps elsewhere. Which steps are guided, and how strongly, is `predict`'s decision.

    Args:
        x: `(F, C, h, w)` noised start in sigma space; sigmas: `(N + 1,)` descending, ending at 0.
        predict: `(x, i) -> (denoised, grad, losses)`, see `Predict`.
        on_step: `(i, x, sigma, denoised)` after each prediction, before the update.
        log: receives the losses of every step that measured some.

    Returns:
        The final sample, `(F, C, h, w)`.
    """
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised, grad, losses = predict(x, i)
        if grad is None:
            x_next = euler_step(x, denoised, sigma, sigma_next)
        else:
            x_next = guided_ddim_step(x, denoised, sigma, sigma_next, grad)
        if log is not None and losses is not None:
            log.add(losses)
        if on_step is not None:
            on_step(i, x, sigma, denoised)
        x = x_next
    return x
