"""DDIM inversion (docs/algorithm.md §8) against closed forms and an independent loop of the official formulas."""

from __future__ import annotations

import math

import pytest
import torch
from oracles import ddim_sampling

from motionclone.errors import MotionCloneError
from motionclone.inversion import ddim_inversion, inversion_timesteps

ALPHA_BAR = torch.cumprod(1 - torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64), 0)  # diffusers "linear"
SHAPE = (3, 4, 5, 6)


def _random(seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _timestep_only_noise(dtype):
    """eps(z, t) independent of z: every DDIM step is then exactly invertible."""
    base, wobble = _random(10, dtype), _random(11, dtype)
    return lambda z, t: base + math.cos(t / 37.0) * wobble


def _gaussian_data_noise(mean: torch.Tensor, std: float):
    """The optimal eps of data N(mean, std^2 I): E[eps | z_t] = sqrt(1-a)(z - sqrt(a) mean) / (a std^2 + 1 - a)."""

    def eps(z, t):
        a = ALPHA_BAR[t].item()
        return math.sqrt(1 - a) * (z - math.sqrt(a) * mean) / (a * std**2 + 1 - a)

    return eps


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("steps", [10, 50, 1000])
def test_inversion_then_sampling_reconstructs_z0_when_eps_ignores_z(dtype, tolerance, steps):
    z0 = _random(0, dtype)
    timesteps = inversion_timesteps(steps)
    trajectory = ddim_inversion(z0, ALPHA_BAR, timesteps, _timestep_only_noise(dtype))
    assert len(trajectory) == steps and all(z.dtype == dtype and z.shape == SHAPE for z in trajectory)
    reconstructed = ddim_sampling(trajectory[-1], ALPHA_BAR, timesteps[::-1], _timestep_only_noise(dtype))
    torch.testing.assert_close(reconstructed, z0, atol=tolerance, rtol=0)


def test_trajectory_equals_the_closed_form():
    """With y = z / sqrt(abar) and sigma = sqrt((1-abar)/abar), DDIM is
    y_k = y_{k-1} + (sigma_k - sigma_{k-1}) eps_k."""
    z0, eps = _random(0), _timestep_only_noise(torch.float64)
    timesteps = inversion_timesteps(25)
    trajectory = ddim_inversion(z0, ALPHA_BAR, timesteps, eps)
    y, sigma_prev = z0.clone(), 0.0
    for t, z in zip(timesteps, trajectory):
        a = ALPHA_BAR[t].item()
        sigma = math.sqrt((1 - a) / a)
        y = y + (sigma - sigma_prev) * eps(None, t)
        sigma_prev = sigma
        torch.testing.assert_close(z, math.sqrt(a) * y, atol=1e-12, rtol=0)


def test_constant_eps_gives_forward_noising_at_every_step():
    z0, noise = _random(0), _random(1)
    timesteps = inversion_timesteps(1000)
    trajectory = ddim_inversion(z0, ALPHA_BAR, timesteps, lambda z, t: noise)
    for t in (0, 1, 400, 999):
        a = ALPHA_BAR[t]
        torch.testing.assert_close(trajectory[t], a.sqrt() * z0 + (1 - a).sqrt() * noise, atol=1e-12, rtol=0)


def test_gaussian_data_reconstruction_error_shrinks_with_more_steps():
    """Exact-score eps of Gaussian data: the only error left is DDIM's discretisation, about O(1/steps).

    Measured (float64, this seed): max |z0_rec - z0| = 0.4995 (10 steps), 0.1195 (50), 0.02526 (250).
    """
    mean, std = _random(2), 0.5
    z0 = mean + std * _random(3)
    eps = _gaussian_data_noise(mean, std)
    errors = []
    for steps in (10, 50, 250):
        timesteps = inversion_timesteps(steps)
        z_T = ddim_inversion(z0, ALPHA_BAR, timesteps, eps)[-1]
        errors.append((ddim_sampling(z_T, ALPHA_BAR, timesteps[::-1], eps) - z0).abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors == pytest.approx([0.4995, 0.1195, 0.02526], rel=1e-3)


def _official_inversion(z0, timesteps, eps):
    """The official `next_step` loop, written from docs/algorithm.md §8 with its own variable names."""
    latents, alpha_prod_t = z0, torch.tensor(1.0, dtype=torch.float64)  # final_alpha_cumprod
    kept = []
    for t in timesteps:
        noise_pred = eps(latents, t)
        alpha_prod_t_next = ALPHA_BAR[t]
        next_original_sample = (latents - (1 - alpha_prod_t) ** 0.5 * noise_pred) / alpha_prod_t**0.5
        latents = alpha_prod_t_next**0.5 * next_original_sample + (1 - alpha_prod_t_next) ** 0.5 * noise_pred
        kept.append(latents)
        alpha_prod_t = alpha_prod_t_next
    return kept


@pytest.mark.parametrize("steps", [7, 50, 1000])
def test_each_step_matches_the_official_formulas(steps):
    """A z-dependent eps, so a wrong evaluation point (z_k instead of z_prev, t_prev instead of t_k) shows."""
    mean = _random(4)
    eps = _gaussian_data_noise(mean, 0.7)
    z0 = _random(5)
    timesteps = inversion_timesteps(steps)
    ours = ddim_inversion(z0, ALPHA_BAR, timesteps, eps)
    official = _official_inversion(z0, timesteps, eps)
    for z, expected in zip(ours, official):
        torch.testing.assert_close(z, expected, atol=1e-10, rtol=1e-10)


def test_fp32_inversion_tracks_the_float64_one():
    """The running latent is carried in float64, so 1000 fp32 steps do not accumulate rounding."""
    mean = _random(4)
    z0 = _random(5)
    timesteps = inversion_timesteps(1000)
    exact = ddim_inversion(z0, ALPHA_BAR, timesteps, _gaussian_data_noise(mean, 0.7))[-1]
    single = ddim_inversion(z0.float(), ALPHA_BAR.float(), timesteps, _gaussian_data_noise(mean.float(), 0.7))[-1]
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), exact, atol=2e-6, rtol=0)  # measured 3.3e-7


def test_eps_sees_the_previous_latent_and_the_target_timestep_and_progress_is_reported():
    z0 = _random(0)
    seen, progress = [], []

    def eps(z, t):
        seen.append((z.clone(), t))
        return torch.zeros_like(z)

    trajectory = ddim_inversion(z0, ALPHA_BAR, [1, 21, 41], eps, on_step=lambda k, n: progress.append((k, n)))
    assert [t for _, t in seen] == [1, 21, 41]
    assert (torch.equal(seen[0][0], z0) and torch.equal(seen[1][0], trajectory[0])
            and torch.equal(seen[2][0], trajectory[1]))
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_sampling_stops_at_final_alpha():
    z_T, noise = _random(0), _random(1)
    z = ddim_sampling(z_T, ALPHA_BAR, [999, 500], lambda z, t: noise, final_alpha=ALPHA_BAR[100].item())
    x0 = (z_T - (1 - ALPHA_BAR[999]).sqrt() * noise) / ALPHA_BAR[999].sqrt()
    torch.testing.assert_close(z, ALPHA_BAR[100].sqrt() * x0 + (1 - ALPHA_BAR[100]).sqrt() * noise, atol=1e-12, rtol=0)


def test_inversion_timesteps():
    assert inversion_timesteps(50) == list(range(1, 1000, 20))
    assert inversion_timesteps(50)[:3] == [1, 21, 41] and inversion_timesteps(50)[-1] == 981
    assert inversion_timesteps(1000) == list(range(1000))
    assert inversion_timesteps(1) == [1]
    assert inversion_timesteps(300) == [3 * i + 1 for i in range(300)]
    assert inversion_timesteps(999)[-1] == 999
    assert inversion_timesteps(10, train_steps=100) == list(range(1, 100, 10))


@pytest.mark.parametrize("steps", [0, -3, 1001])
def test_inversion_timesteps_refuses_bad_step_counts(steps):
    with pytest.raises(MotionCloneError, match="between 1 and the 1000"):
        inversion_timesteps(steps)


@pytest.mark.parametrize(
    "timesteps, match",
    [([], "empty"), ([5, 5], "strictly ascending"), ([10, 3], "strictly ascending"), ([0, 1000], "0..999")],
)
def test_inversion_refuses_bad_schedules(timesteps, match):
    with pytest.raises(MotionCloneError, match=match):
        ddim_inversion(_random(0), ALPHA_BAR, timesteps, lambda z, t: z)


def test_sampling_refuses_ascending_schedules_and_wrong_noise_shapes():
    with pytest.raises(MotionCloneError, match="strictly descending"):
        ddim_sampling(_random(0), ALPHA_BAR, [1, 2], lambda z, t: z)
    with pytest.raises(MotionCloneError, match="noise prediction has shape"):
        ddim_sampling(_random(0), ALPHA_BAR, [2, 1], lambda z, t: z[0])
