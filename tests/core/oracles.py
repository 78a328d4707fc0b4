"""Reference implementations the tests compare the pack against; not shipped in `motionclone`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from motionclone.errors import MotionCloneError
from motionclone.inversion import NoisePrediction, _carry_dtype, _checked_schedule, _ddim_move


def ddim_sampling(
    z_T: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    timesteps_descending: Sequence[int],
    eps: NoisePrediction,
    final_alpha: float = 1.0,
) -> torch.Tensor:
    """Plain eta = 0 DDIM in z-space, the inverse of `ddim_inversion` when eps does not depend on z.

    Args:
        z_T: `(F, C, h, w)` latent at `timesteps_descending[0]`.
        timesteps_descending: strictly descending; each step moves to the next entry, the last to
            `final_alpha` (1 = clean, diffusers' `set_alpha_to_one`).
        eps: `(z, t) -> eps`, evaluated at the current latent and its own timestep.

    Returns:
        The `(F, C, h, w)` latent at abar = `final_alpha`. Passing the reversed inversion schedule and its
        last latent reconstructs z0 up to the inversion's error.
    """
    if not 0.0 < final_alpha <= 1.0:
        raise MotionCloneError(f"final_alpha must be in (0, 1] (1 = clean latent), got {final_alpha}.")
    timesteps, alpha_bars = _checked_schedule(alphas_cumprod, timesteps_descending, ascending=False)
    targets = alpha_bars[1:] + [float(final_alpha)]
    z = z_T.to(_carry_dtype(z_T))
    with torch.no_grad():
        for t, abar, abar_next in zip(timesteps, alpha_bars, targets):
            z = _ddim_move(z, eps(z.to(z_T.dtype), t), abar, abar_next)
    return z.to(z_T.dtype)
