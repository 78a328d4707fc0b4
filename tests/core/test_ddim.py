"""The guided DDIM step and the sampling loop against an independent implementation of the official formulas.

The reference side is written in the official code's own variables (diffusers' z-space, alpha-bar,
`schedule_customized_step`, `single_step_video`); the pack works in ComfyUI's sigma space. Everything in
float64 so that only the algebra is compared.
"""

from __future__ import annotations

import math

import pytest
import torch

from motionclone import (
    GuidanceLog,
    GuidanceSettings,
    MotionMetadata,
    euler_step,
    guided_ddim_step,
    motion_loss,
    motionclone_timesteps,
    sample_motionclone,
    top_k_representation,
)

ALPHA_BAR = torch.cumprod(1 - torch.linspace(0.00085, 0.012, 1000, dtype=torch.float64), 0)  # diffusers "linear"


def _sigma(t: int) -> torch.Tensor:
    a = ALPHA_BAR[t] if t >= 0 else torch.tensor(1.0, dtype=torch.float64)
    return ((1 - a) / a).sqrt()


def _random(seed: int, shape=(4, 3, 5, 6)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("t, t_prev", [(999, 993), (700, 699), (400, 380), (14, -1)])
def test_guided_step_equals_the_official_closed_form(t, t_prev):
    a = ALPHA_BAR[t]
    a_prev = ALPHA_BAR[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)  # final_alpha_cumprod
    z, eps, g_z = _random(0), _random(1), _random(2)
    x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
    official = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * (eps - (1 - a).sqrt() * g_z)

    sigma, sigma_prev = _sigma(t), _sigma(t_prev)
    x = z * (1 + sigma**2).sqrt()  # ComfyUI's sampler state
    denoised = x - sigma * eps
    grad_x = g_z / (1 + sigma**2).sqrt()  # chain rule through the model input z = x / sqrt(1 + sigma^2)
    ours = guided_ddim_step(x, denoised, sigma, sigma_prev, grad_x) * a_prev.sqrt()
    torch.testing.assert_close(ours, official, rtol=1e-10, atol=1e-10)


def test_unguided_step_is_ddim_and_zero_gradient_changes_nothing():
    t, t_prev = 600, 585
    a, a_prev = ALPHA_BAR[t], ALPHA_BAR[t_prev]
    z, eps = _random(3), _random(4)
    ddim = a_prev.sqrt() * (z - (1 - a).sqrt() * eps) / a.sqrt() + (1 - a_prev).sqrt() * eps
    sigma, sigma_prev = _sigma(t), _sigma(t_prev)
    x = z / a.sqrt()
    denoised = x - sigma * eps
    torch.testing.assert_close(euler_step(x, denoised, sigma, sigma_prev) * a_prev.sqrt(), ddim, rtol=1e-12, atol=1e-12)
    assert torch.equal(guided_ddim_step(x, denoised, sigma, sigma_prev, torch.zeros_like(x)),
                       euler_step(x, denoised, sigma, sigma_prev))


class ToyVideoModel:
    """A small differentiable eps-model with a temporal-attention map, standing in for the UNet."""

    def __init__(self, channels=3, frames=4):
        generator = torch.Generator().manual_seed(10)
        self.mix = 0.5 * torch.randn(channels, channels, generator=generator, dtype=torch.float64)
        self.to_q = torch.randn(channels, 8, generator=generator, dtype=torch.float64)
        self.to_k = torch.randn(channels, 8, generator=generator, dtype=torch.float64)
        self.cond = {"positive": 0.3, "negative": -0.2}

    def eps(self, z: torch.Tensor, alpha_bar: torch.Tensor, cond: str) -> torch.Tensor:
        return torch.tanh(torch.einsum("fchw,cd->fdhw", z, self.mix) + alpha_bar + self.cond[cond])

    def attention(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = z.permute(2, 3, 0, 1).reshape(-1, z.shape[0], z.shape[1])  # (positions, F, C)
        logits = (tokens @ self.to_q) @ (tokens @ self.to_k).transpose(1, 2) / math.sqrt(8)
        return {"layer": torch.softmax(logits, -1).unsqueeze(1)}  # (positions, 1 head, F, F)


def _official_loop(model, z, timesteps, guided, weight, warm_up, cool_down, cfg_scale, values, indices):
    """MotionClone v2 `single_step_video` + `schedule_customized_step` (eta 0, gamma 1), in z-space."""
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        a = ALPHA_BAR[t]
        a_prev = ALPHA_BAR[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        g = torch.zeros_like(z)
        if i < guided:
            z_in = z.detach().requires_grad_(True)
            eps_c = model.eps(z_in, a, "positive")
            loss = weight * motion_loss(model.attention(z_in), values, indices)
            if i < warm_up:
                loss = loss * (i + 1) / warm_up
            if i > guided - cool_down:
                loss = loss * (guided - i) / cool_down
            (g,) = torch.autograd.grad(loss, z_in)
            eps_c = eps_c.detach()
        else:
            eps_c = model.eps(z, a, "positive")
        eps_u = model.eps(z, a, "negative")
        eps = eps_c + cfg_scale * (eps_c - eps_u)
        x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
        z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * (eps - (1 - a).sqrt() * g)
    return z


def test_sampling_loop_matches_the_official_loop():
    model, frames = ToyVideoModel(), 4
    timesteps = motionclone_timesteps(12, 6, 0.3).timesteps
    reference = model.attention(_random(20, (frames, 3, 5, 6)))
    metadata = MotionMetadata(frames, 5, 6, ("layer",), ("up_blocks.1",), 1, 400, "toy")
    values, indices = top_k_representation(reference, 1, metadata).to_device(torch.device("cpu"))
    values = {k: v.double() for k, v in values.items()}
    weight, cfg = 20.0, 8.5
    noise = _random(21, (frames, 3, 5, 6))

    official = _official_loop(model, noise, timesteps, 6, weight, 2, 2, cfg - 1, values, indices)

    def cfg_denoised(x, sigma, eps_c):
        z = x / (1 + sigma**2).sqrt()
        eps_u = model.eps(z, 1 / (1 + sigma**2), "negative")
        return x - sigma * (eps_u + cfg * (eps_c - eps_u))

    def denoise(x, sigma):
        return cfg_denoised(x, sigma, model.eps(x / (1 + sigma**2).sqrt(), 1 / (1 + sigma**2), "positive"))

    def guided_denoise(x, sigma, scale):
        leaf = x.detach().requires_grad_(True)
        z = leaf / (1 + sigma**2).sqrt()
        eps_c = model.eps(z, 1 / (1 + sigma**2), "positive")
        loss = scale * motion_loss(model.attention(z), values, indices)
        (grad,) = torch.autograd.grad(loss, leaf)
        return cfg_denoised(x, sigma, eps_c.detach()), grad, {"motion": loss.detach() / scale}

    sigmas = torch.stack([_sigma(t) for t in timesteps] + [torch.tensor(0.0, dtype=torch.float64)])

    def planned(settings):
        """A `predict` guided where `settings.plan` says so, as the pack's engine decides."""
        def predict(x, i):
            plan = settings.plan(timesteps, i)
            if plan is not None and plan.guided:
                return guided_denoise(x, sigmas[i], plan.motion_scale)
            return denoise(x, sigmas[i]), None, None
        return predict

    log = GuidanceLog()
    ours = sample_motionclone(noise * (1 + sigmas[0] ** 2).sqrt(), sigmas, planned(GuidanceSettings(weight, 0.3, 2, 2)),
                              log=log)
    torch.testing.assert_close(ours, official, rtol=1e-9, atol=1e-9)
    assert len(log.of("motion")) == 6
    plain = sample_motionclone(noise * (1 + sigmas[0] ** 2).sqrt(), sigmas, planned(GuidanceSettings(0.0, 0.3, 2, 2)))
    assert (plain - ours).abs().max() > 1e-3  # the guidance is not a no-op on this model


def test_weight_zero_plans_no_gradient_pass_and_the_loop_steps_plainly():
    timesteps = motionclone_timesteps(12, 6, 0.3).timesteps
    plans = [GuidanceSettings(0.0, 0.3, 2, 2).plan(timesteps, i) for i in range(12)]
    assert [plan is not None for plan in plans] == [True] * 6 + [False] * 6
    assert not any(plan.guided for plan in plans[:6]) and [plan.index for plan in plans[:6]] == list(range(6))

    sigmas = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    out = sample_motionclone(torch.ones(2, 2), sigmas,
                             lambda x, i: (0.5 * x, None, {"motion": torch.tensor(0.25 * (i + 1))}),
                             log=(log := GuidanceLog()))
    assert log.of("motion") == [0.25, 0.5]
    assert torch.equal(out, euler_step(euler_step(torch.ones(2, 2), 0.5 * torch.ones(2, 2), sigmas[0], sigmas[1]),
                                       0.5 * euler_step(torch.ones(2, 2), 0.5 * torch.ones(2, 2), sigmas[0], sigmas[1]),
                                       sigmas[1], sigmas[2]))


def test_plan_counts_the_band_of_any_schedule():
    # KSampler-like schedule: 10 evenly spaced timesteps; the band t >= 700 holds 999, 888, 777.
    timesteps = [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    settings = GuidanceSettings(100.0, 0.3, warm_up=2, cool_down=2, semantic_weight=1.0)
    plans = [settings.plan(timesteps, i) for i in range(10)]
    assert [p is not None for p in plans] == [True, True, True] + [False] * 7
    assert [(p.index, p.guided_steps) for p in plans[:3]] == [(0, 3), (1, 3), (2, 3)]
    # warm-up (i+1)/2 on steps 0..1, cool-down (G-i)/2 on steps i > G-2 = 1: step 2 -> 0.5
    assert [p.motion_scale for p in plans[:3]] == [50.0, 100.0, 50.0]
    assert [p.semantic_scale for p in plans[:3]] == [0.5, 1.0, 1.0]  # warm-up only
