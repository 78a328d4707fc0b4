"""The one guided-step engine behind both faces of MotionClone's guidance.

'MotionClone Sampler' (the official guided DDIM loop) and 'MotionClone: Guidance' (a PREDICT_NOISE wrapper
for any sampler) differ only in how they apply a step's gradient to the latent. Everything else is decided
here, once, by `guided_step`: whether an evaluation is a guided step, its weights (`GuidanceSettings.plan`:
the guided band and the warm-up / cool-down ramps, docs/algorithm.md §6), the motion targets of its timestep,
the semantic appearance branch, the gradient pass (docs/algorithm.md §7), and whether a step runs its own
gradient pass or reuses the last one (`gradient_every`, docs/algorithm.md §7).

Per-run state lives in one `GuidanceRun`, attached to the run's `SamplingRun` at the first guided step,
validated there once, and dropped with the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...motionclone import AnimateDiffMotionModel, GuidedStepPlan, motion_loss
from ...motionclone.errors import MotionCloneError
from ...motionclone.validation import require_finite
from .checks import validate_guidance
from .forwards import capture_forward, new_capture
from .gradient import attention_gradient
from .run import Guidance, GuidanceRun, ReusableGradient, SamplingRun, active_windows
from .semantic import advance_appearance, semantic_losses
from .windows import mean_losses, windowed_gradient, windowed_measure


def weighted_sum(terms: dict[str, torch.Tensor], plan: GuidedStepPlan) -> torch.Tensor:
    """`motion_scale * terms["motion"] + semantic_scale * terms["semantic"]` over the terms present: a step's
    weighted loss from its unweighted losses, or its gradient from the unweighted losses' gradients."""
    total = None
    for name, scale in (("motion", plan.motion_scale), ("semantic", plan.semantic_scale)):
        if name in terms:
            term = scale * terms[name]
            total = term if total is None else total + term
    return total


def guidance_run(run: SamplingRun, guidance: Guidance, guider, x: torch.Tensor) -> GuidanceRun:
    """The run's `GuidanceRun` for `guidance`, created and validated at its first use in the run."""
    if run.guidance is not None:
        if run.guidance.guidance is not guidance:
            raise MotionCloneError(
                "Two MotionClone guidances act on one sampling run (a MODEL from 'MotionClone: Guidance' sampled by "
                "'MotionClone Sampler', or two Guidance nodes in a row). Use one: connect the MODEL from before "
                "'MotionClone: Guidance' to 'MotionClone Sampler', or sample the guided MODEL with a stock sampler."
            )
        return run.guidance
    validate_guidance(guidance, run, guider, x)
    run.guidance = GuidanceRun(guidance)
    return run.guidance


class _StepLoss:
    """The weighted loss of one guided step over a capture; keeps the unweighted losses it saw, for the log."""

    def __init__(self, state: GuidanceRun, motion_model: AnimateDiffMotionModel, motion_targets, appearance,
                 plan: GuidedStepPlan, frames: int):
        self.state, self.motion_model, self.motion_targets = state, motion_model, motion_targets
        self.appearance, self.plan, self.frames = appearance, plan, frames
        self.losses: dict[str, torch.Tensor] = {}

    def terms(self, capture) -> dict[str, torch.Tensor]:
        """The losses before this step's weights: "motion", and "semantic" (its block weights applied) when
        semantic guidance weighs anything."""
        motion = motion_loss(capture.probs, *self.motion_targets)
        self.losses["motion"] = motion.detach()
        terms = {"motion": motion}
        if self.appearance is not None:
            semantic = self.state.guidance.semantic
            weighted, reported = semantic_losses(capture, self.appearance, semantic, self.motion_model, self.frames)
            self.losses["semantic"] = reported.detach()
            if weighted is not None:
                terms["semantic"] = weighted
        return terms

    def __call__(self, capture) -> torch.Tensor:
        return weighted_sum(self.terms(capture), self.plan)

    def terms_to_keep(self, capture) -> dict[str, torch.Tensor]:
        """`terms` without those this step weighs 0 (their gradient would be wasted: a term's weight is 0 at
        every step of the band or at none)."""
        scales = {"motion": self.plan.motion_scale, "semantic": self.plan.semantic_scale}
        return {name: term for name, term in self.terms(capture).items() if scales[name] > 0}


@dataclass
class GuidedStep:
    """What `guided_step` found for one evaluation in the guided band.

    `grad` is d(weighted loss)/dx, shaped like x, or None when both weights are 0 (a plain step);
    `prediction` the conditional clean estimate of the same forward, when asked for. `reused`: no gradient
    pass ran; `grad` is the last pass's gradient under this step's weights.
    """

    plan: GuidedStepPlan
    losses: dict[str, torch.Tensor]
    grad: torch.Tensor | None = None
    prediction: torch.Tensor | None = None
    reused: bool = False


def guided_step(guidance: Guidance, run: SamplingRun, guider, x: torch.Tensor, sigma_in: torch.Tensor,
                schedule: torch.Tensor, position: int, options: dict, *, with_prediction: bool,
                measure_unguided: bool) -> GuidedStep | None:
    """Decide and compute the guidance of step `position` of `schedule` (both faces call this).

    Args:
        x: `(F, 4, h, w)` latent in ComfyUI's sampler space; sigma_in: the `(F,)` sigma the model is called with.
        schedule: `(N + 1,)` descending sigmas of the run, ending at 0; `position` indexes its steps.
        with_prediction: the gradient forward also returns the conditional clean estimate (the sampler needs
            it; the wrapper already has the sampler's prediction).
        measure_unguided: for a step in the band with both weights 0, measure the unweighted losses without
            gradients (the sampler reports them for A/B comparison).

    With `gradient_every` n > 1 only every n-th guided step runs the gradient pass; it keeps the gradient
    of each unweighted loss in the run's `GuidanceRun.reusable`, and the steps in between apply this
    step's weights to it, without a gradient pass (docs/algorithm.md §7).

    Returns:
        None outside the guided band; otherwise a `GuidedStep` (with `grad` None when the step is not guided).
    """
    timesteps = guider.inner_model.model_sampling.timestep(schedule[:-1]).long().tolist()
    plan = guidance.settings.plan(timesteps, position)
    if plan is None:
        return None
    if not plan.guided and not measure_unguided:
        return GuidedStep(plan, {})
    state = guidance_run(run, guidance, guider, x)
    windows = active_windows(options, x.shape[0])
    if windows is not None:
        return _windowed_guided_step(state, run, guider, x, sigma_in, timesteps[position], plan, options, windows,
                                     with_prediction)
    sigma, sigma_next = schedule[position], schedule[position + 1]
    targets = state.motion_targets(timesteps[position], x.device)
    appearance = None
    if guidance.semantic is not None:
        state.appearance = advance_appearance(state.appearance, guider, x, sigma, sigma_next, options,
                                              guidance.semantic, run.motion_model)
        appearance = state.appearance.targets
    loss = _StepLoss(state, run.motion_model, targets, appearance, plan, x.shape[0])
    if not plan.guided:
        capture = new_capture(run, guidance.blocks, stop_early=True, key_blocks=guidance.key_blocks)
        capture_forward(guider.inner_model, guider.conds["positive"], x, sigma_in, options, capture)
        loss(capture)
        return GuidedStep(plan, loss.losses)
    if plan.reuses_gradient and state.reusable is not None:
        return _reusing_step(state, run, guider, x, sigma_in, options, loss, with_prediction)
    positive = guider.conds["positive"]
    # With reuse the pass takes each unweighted loss's gradient, for later steps to weigh; without, the
    # gradient of the weighted loss, as the official code.
    loss_fn = loss.terms_to_keep if plan.gradient_every > 1 else loss
    prediction, _, grad = attention_gradient(run, guider.inner_model, positive, x, sigma_in, options, guidance.blocks,
                                             loss_fn, guidance.key_blocks, guidance.memory_mode,
                                             with_prediction=with_prediction)
    if plan.gradient_every > 1:
        state.reusable = ReusableGradient(plan.index, grad)
        grad = weighted_sum(grad, plan)
    _require_finite_gradient(grad, x, plan)
    return GuidedStep(plan, loss.losses, grad, prediction)


def _windowed_guided_step(state: GuidanceRun, run: SamplingRun, guider, x: torch.Tensor, sigma_in: torch.Tensor,
                          timestep: int, plan: GuidedStepPlan, options: dict, windows,
                          with_prediction: bool) -> GuidedStep:
    """`guided_step` over context windows: each window's gradient pass on its frames, conditioning and motion
    entry, one window at a time; gradients and predictions fused with the layout's weights."""
    settings, frame_windows = windows
    guidance = state.guidance
    length = len(frame_windows[0])

    def loss_for(k: int) -> _StepLoss:
        return _StepLoss(
            state, run.motion_model, state.motion_targets(timestep, x.device, window=k), None, plan, length
        )

    if not plan.guided:
        losses = windowed_measure(run, guider, x, sigma_in, options, frame_windows, guidance.blocks,
                                  guidance.key_blocks, loss_for)
        return GuidedStep(plan, mean_losses(losses))

    def gradient(conds, x_window, sigma_window, loss):
        prediction, _, grad = attention_gradient(run, guider.inner_model, conds, x_window, sigma_window, options,
                                                 guidance.blocks, loss, guidance.key_blocks, guidance.memory_mode,
                                                 with_prediction=with_prediction)
        return prediction, grad

    prediction, grad, losses = windowed_gradient(guider, x, sigma_in, settings, frame_windows, gradient, loss_for,
                                                 with_prediction)
    _require_finite_gradient(grad, x, plan)
    return GuidedStep(plan, mean_losses(losses), grad, prediction)


def _require_finite_gradient(grad: torch.Tensor, x: torch.Tensor, plan: GuidedStepPlan) -> None:
    if not torch.isfinite(grad).all():
        require_finite(x, f"The latent at guided step {plan.index + 1}", "The sampling diverged: lower motion_weight.")
        raise MotionCloneError(
            "The motion-guidance gradient is not finite although its inputs are (a numeric overflow, usually fp16). "
            "Lower motion_weight, or run the model in fp32 (ComfyUI's --force-fp32)."
        )


def _reusing_step(state: GuidanceRun, run: SamplingRun, guider, x: torch.Tensor, sigma_in: torch.Tensor, options: dict,
                  loss: _StepLoss, with_prediction: bool) -> GuidedStep:
    """A guided step between two gradient passes: the kept gradients under this step's weights. The sampler's
    conditional prediction comes from one forward without gradients, which also measures the step's losses."""
    prediction = None
    if with_prediction:
        guidance = state.guidance
        capture = new_capture(run, guidance.blocks, stop_early=False, key_blocks=guidance.key_blocks)
        prediction = capture_forward(guider.inner_model, guider.conds["positive"], x, sigma_in, options, capture)
        loss.terms(capture)
    return GuidedStep(loss.plan, loss.losses, weighted_sum(state.reusable.terms, loss.plan), prediction, reused=True)


def schedule_position(schedule: torch.Tensor | None, sigma: torch.Tensor) -> int | None:
    """The step of `schedule` evaluated at `sigma`, for the wrapper, which sees only the sigma.

    None for an evaluation at a sigma not in the schedule (2nd-order samplers' extra ones) and for a step
    that does not descend: the wrapper's update divides by `sigma - sigma_next`.
    """
    if schedule is None or len(schedule) < 2:
        return None
    sigma = sigma.reshape(-1)[0].to(schedule)
    matches = torch.nonzero(torch.isclose(schedule[:-1], sigma, rtol=1e-5, atol=0.0)).flatten()
    if len(matches) == 0:
        return None
    position = int(matches[0])
    return position if schedule[position + 1] < schedule[position] else None
