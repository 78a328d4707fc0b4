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

import comfy.samplers
import torch

from ..motionclone import (
    AnimateDiffMotionModel,
    GuidanceSettings,
    GuidedStepPlan,
    MotionMismatchError,
    MotionRepresentation,
    motion_loss,
)
from ..motionclone.errors import MotionCloneError
from ..motionclone.memory import FAST
from ..motionclone.subject import SemanticSettings
from ..motionclone.validation import excerpt, require_finite
from .autograd import attention_loss_gradient, capture_forward, new_capture, prediction_with_attention_gradient
from .context_windows import (
    active_windows,
    check_window_layout,
    mean_losses,
    refuse_semantic_with_windows,
    windowed_gradient,
    windowed_measure,
)
from .patching import SamplingRun
from .semantic import AppearanceBranch, appearance_targets, semantic_losses


@dataclass(frozen=True)
class Guidance:
    """What a node asks a guided step for: the reference motion, the strength and band, the node's display name
    (for refusals during sampling), optional semantics, and the memory mode of the gradient pass (FAST, BALANCED or
    LOW, resolved from auto by the node)."""

    representation: MotionRepresentation
    settings: GuidanceSettings
    node: str
    semantic: SemanticSettings | None = None
    memory_mode: str = FAST

    @property
    def blocks(self) -> tuple[str, ...]:
        return self.representation.metadata.blocks

    @property
    def key_blocks(self) -> tuple[str, ...]:
        return self.semantic.measured_blocks if self.semantic is not None else ()


def guidance_settings(motion_weight: float, guided_fraction: float, warm_up: int, cool_down: int,
                      semantic: SemanticSettings | None, gradient_every: int = 1) -> GuidanceSettings:
    """The settings both nodes build from their widgets: the semantic term is on when its bundle is active."""
    semantic_on = semantic is not None and semantic.active
    return GuidanceSettings(motion_weight, guided_fraction, warm_up, cool_down, 1.0 if semantic_on else 0.0,
                            gradient_every)


@dataclass
class MotionTargets:
    """The motion entry guiding the current timestep, as `motion_loss` takes it, on the latent's device."""

    entry: int | None
    values: dict[str, torch.Tensor]
    indices: dict[str, torch.Tensor]


def weighted_sum(terms: dict[str, torch.Tensor], plan: GuidedStepPlan) -> torch.Tensor:
    """`motion_scale * terms["motion"] + semantic_scale * terms["semantic"]` over the terms present: a step's
    weighted loss from its unweighted losses, or its gradient from the unweighted losses' gradients."""
    total = None
    for name, scale in (("motion", plan.motion_scale), ("semantic", plan.semantic_scale)):
        if name in terms:
            term = scale * terms[name]
            total = term if total is None else total + term
    return total


@dataclass
class ReusableGradient:
    """The last gradient pass of a run with `gradient_every` > 1, kept for the guided steps after it.

    `terms`: "motion" -> d L_motion / dx and (with semantic guidance) "semantic" -> d L_semantic / dx, each
    shaped like the latent `(F, 4, h, w)`, before any step weight (the semantic loss's block weights are
    part of the loss); a step applies its own weights with `weighted_sum` (docs/algorithm.md §7).
    `index`: the guided step (of the band) that computed them.
    """

    index: int
    terms: dict[str, torch.Tensor]


@dataclass
class GuidanceRun:
    """State of one `Guidance` during one sampling run: made and validated at its first guided step."""

    guidance: Guidance
    motion_model: AnimateDiffMotionModel
    targets: MotionTargets | None = None
    appearance: AppearanceBranch | None = None
    reusable: ReusableGradient | None = None

    def motion_targets(self, timestep: int, device: torch.device, window: int | None = None) -> tuple[dict, dict]:
        """`representation.to_device(device, timestep)`, remade only when the entry changes (one kept).

        `window`: the entry of that context window of a windowed representation. Made with inference mode off:
        the loss's backward saves the indices, and inference tensors cannot be saved for backward; the dtype
        conversions (fp16 -> fp32, integer -> int64) always copy.
        """
        representation = self.guidance.representation
        if window is not None:
            representation = representation.window(window)
        entry = (representation.entry_for(timestep), window)
        if self.targets is None or self.targets.entry != entry:
            self.targets = None  # release the previous entry before making the next
            with torch.inference_mode(False):
                values, indices = representation.to_device(device, timestep)
            self.targets = MotionTargets(entry, values, indices)
        return self.targets.values, self.targets.indices


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
    _validate(guidance, run, guider, x)
    run.guidance = GuidanceRun(guidance, run.motion_model)
    return run.guidance


def _validate(guidance: Guidance, run: SamplingRun, guider, x: torch.Tensor) -> None:
    """Once per run, before the first guided forward: the MOTION fits the latent and the MODEL, the inputs
    are finite, and a subject mask belongs to the positive prompt."""
    representation = guidance.representation
    check_fits(representation, x.shape[0], x.shape[-2], x.shape[-1])
    check_window_layout(representation, guider.model_options, x.shape[0])
    if guidance.semantic is not None:
        refuse_semantic_with_windows(guider.model_options, x.shape[0])
    available = set(run.motion_model.attention_layer_names(representation.metadata.blocks))
    missing = [layer for layer in representation.metadata.layers if layer not in available]
    if missing:
        raise MotionMismatchError(
            f"The MOTION uses layer {missing[0]}, which this MODEL's motion module does not have. "
            "Extract the motion with the same motion module you sample with."
        )
    require_finite(x, "The latent being sampled", "Check the nodes before the sampler's latent input.")
    for kind in ("positive", "negative"):
        for cond in guider.original_conds.get(kind, []):
            if cond.get("cross_attn") is not None:
                require_finite(cond["cross_attn"], f"The {kind} conditioning", "Re-encode the prompt with CLIP Text Encode.")
    subject = guidance.semantic.subject if guidance.semantic is not None else None
    if subject is not None:
        positive = [c["cross_attn"] for c in guider.original_conds.get("positive", []) if c.get("cross_attn") is not None]
        if positive and not subject.encodes_same_prompt(positive[0]):
            raise MotionCloneError(
                f"'subject_mask' was made for the prompt {excerpt(subject.prompt)} (subject '{' '.join(subject.words)}' "
                "at its token positions), but the positive conditioning being sampled encodes another prompt, so the "
                "mask would follow other words. Type the sampler's positive prompt into that 'Cross-Attention Mask' "
                "node's 'prompt' (the same text, with the same CLIP)."
            )


def check_fits(representation: MotionRepresentation, frames: int, latent_height: int, latent_width: int) -> None:
    """Raise `MotionMismatchError` unless the motion was extracted at this frame count and latent size."""
    meta = representation.metadata
    if (meta.frames, meta.latent_height, meta.latent_width) == (frames, latent_height, latent_width):
        return
    raise MotionMismatchError(
        f"The MOTION was extracted from {meta.frames} frames of {meta.latent_width * 8}x{meta.latent_height * 8} px "
        f"(latent {meta.latent_width}x{meta.latent_height}), but the latent to sample has {frames} frames of "
        f"{latent_width * 8}x{latent_height * 8} px (latent {latent_width}x{latent_height}). Set the empty latent's "
        f"width, height and batch size to {meta.latent_width * 8}, {meta.latent_height * 8} and {meta.frames}, or "
        "extract the motion again with the size and frame count you want to generate."
    )


def check_schedule(representation: MotionRepresentation, guided_timesteps: tuple[int, ...]) -> None:
    """Raise `MotionMismatchError` unless a per-timestep MOTION holds exactly these guided timesteps."""
    stamps = representation.metadata.timesteps
    if not stamps or tuple(stamps) == tuple(guided_timesteps):
        return
    raise MotionMismatchError(
        f"The MOTION comes from a DDIM inversion and holds entries for {len(stamps)} guided timesteps "
        f"(t={stamps[0]}..{stamps[-1]}), but this sampler guides {len(guided_timesteps)} steps "
        f"(t={guided_timesteps[0]}..{guided_timesteps[-1]}). Give 'Extract Motion' the same steps, guided_steps and "
        "guided_fraction as the sampler."
    )


def apply_cfg(guider, cond_out, uncond_out, x, sigma, options):
    """CFG as `comfy.samplers.sampling_function` combines the two predictions (pre/post-CFG patches included)."""
    conds = guider.conds
    out = [cond_out, uncond_out]
    for fn in options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": [conds["positive"], conds["negative"]], "conds_out": out, "cond_scale": guider.cfg,
                  "timestep": sigma, "input": x, "sigma": sigma, "model": guider.inner_model, "model_options": options})
    return comfy.samplers.cfg_function(guider.inner_model, out[0], out[1], guider.cfg, x, sigma, model_options=options,
                                       cond=conds["positive"], uncond=conds["negative"])


class _StepLoss:
    """The weighted loss of one guided step over a capture; keeps the unweighted losses it saw, for the log."""

    def __init__(self, state: GuidanceRun, motion_targets, appearance, plan: GuidedStepPlan, frames: int):
        self.state, self.motion_targets, self.appearance, self.plan, self.frames = state, motion_targets, appearance, plan, frames
        self.losses: dict[str, torch.Tensor] = {}

    def terms(self, capture) -> dict[str, torch.Tensor]:
        """The losses before this step's weights: "motion", and "semantic" (its block weights applied) when
        semantic guidance weighs anything."""
        motion = motion_loss(capture.probs, *self.motion_targets)
        self.losses["motion"] = motion.detach()
        terms = {"motion": motion}
        if self.appearance is not None:
            semantic = self.state.guidance.semantic
            weighted, reported = semantic_losses(capture, self.appearance, semantic, self.state.motion_model, self.frames)
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
        if plan.gradient_every > 1:
            raise MotionCloneError(
                f"gradient_every is {plan.gradient_every}, but gradient reuse is not available through 'MotionClone: "
                "Context Windows' (a clip longer than one window). Set gradient_every to 1 on the sampler or Guidance "
                "node, or sample a clip no longer than one window.")
        return _windowed_guided_step(state, run, guider, x, sigma_in, timesteps[position], plan, options, windows,
                                     with_prediction)
    sigma, sigma_next = schedule[position], schedule[position + 1]
    targets = state.motion_targets(timesteps[position], x.device)
    appearance = None
    if guidance.semantic is not None:
        appearance = appearance_targets(state, guider, x, sigma, sigma_next, options, guidance.semantic, apply_cfg)
    loss = _StepLoss(state, targets, appearance, plan, x.shape[0])
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
    if with_prediction:
        prediction, _, grad = prediction_with_attention_gradient(
            run, guider.inner_model, positive, x, sigma_in, options, guidance.blocks, loss_fn, guidance.key_blocks,
            guidance.memory_mode)
    else:
        prediction = None
        _, grad = attention_loss_gradient(run, guider.inner_model, positive, x, sigma_in, options, guidance.blocks,
                                          loss_fn, guidance.key_blocks, guidance.memory_mode)
    if plan.gradient_every > 1:
        state.reusable = ReusableGradient(plan.index, grad)
        grad = weighted_sum(grad, plan)
    _require_finite_gradient(grad, x, plan)
    return GuidedStep(plan, loss.losses, grad, prediction)


def _windowed_guided_step(state: GuidanceRun, run: SamplingRun, guider, x: torch.Tensor, sigma_in: torch.Tensor,
                          timestep: int, plan: GuidedStepPlan, options: dict, windows, with_prediction: bool) -> GuidedStep:
    """`guided_step` over context windows: each window's gradient pass on its frames, conditioning and motion
    entry, one window at a time; gradients and predictions fused with the layout's weights."""
    settings, frame_windows = windows
    guidance = state.guidance
    length = len(frame_windows[0])

    def loss_for(k: int) -> _StepLoss:
        return _StepLoss(state, state.motion_targets(timestep, x.device, window=k), None, plan, length)

    if not plan.guided:
        losses = windowed_measure(run, guider, x, sigma_in, options, frame_windows, guidance.blocks, guidance.key_blocks,
                                  loss_for)
        return GuidedStep(plan, mean_losses(losses))

    def gradient(conds, x_window, sigma_window, loss):
        if with_prediction:
            prediction, _, grad = prediction_with_attention_gradient(
                run, guider.inner_model, conds, x_window, sigma_window, options, guidance.blocks, loss, guidance.key_blocks,
                guidance.memory_mode)
            return prediction, grad
        _, grad = attention_loss_gradient(run, guider.inner_model, conds, x_window, sigma_window, options,
                                          guidance.blocks, loss, guidance.key_blocks, guidance.memory_mode)
        return None, grad

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
