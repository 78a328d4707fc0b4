"""MotionClone's timestep schedule and the guidance ramp (arXiv 2406.05338 v4/v5 code, docs/algorithm.md §6).

The official sampler does not space its timesteps evenly. It packs the guided steps densely into the
high-noise band `t in [1000 (1 - fraction), 999]`, where motion is laid down, and spreads the remaining
plain steps over the timesteps below. The guidance weight ramps up linearly over the first `warm_up`
guided steps and down over the last `cool_down`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import MotionCloneError

TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class MotionCloneSchedule:
    """Descending integer timesteps: `guided` (high noise, with motion guidance) then `unguided`."""

    guided: tuple[int, ...]
    unguided: tuple[int, ...]

    @property
    def timesteps(self) -> tuple[int, ...]:
        return self.guided + self.unguided


def guided_band_start(guided_fraction: float, train_timesteps: int = TRAIN_TIMESTEPS) -> int:
    """The lowest guided timestep, `int((1 - fraction) * T)`, computed as the official code does."""
    return int((1 - guided_fraction) * train_timesteps)


def motionclone_timesteps(
    steps: int, guided_steps: int, guided_fraction: float, train_timesteps: int = TRAIN_TIMESTEPS
) -> MotionCloneSchedule:
    """The official "uneven" schedule (docs/algorithm.md §6, `schedule_set_timesteps`).

    Guided: `round(linspace(b, T - 1, G))`, unguided: `round(linspace(0, b - 1, N - G))`, both descending,
    with `b = int((1 - fraction) * T)`; numpy's round (half to even), as the official code.

    Example: `(100, 50, 0.3)` -> guided 999, 993, ..., 706, 700; unguided 699, 685, ..., 14, 0.
    """
    if steps < 1:
        raise MotionCloneError(f"steps must be at least 1, got {steps}.")
    if not 1 <= guided_steps <= steps:
        raise MotionCloneError(
            f"guided_steps must be between 1 and steps ({steps}), got {guided_steps}. "
            "Lower guided_steps or raise steps (-1 picks half of steps)."
        )
    if not 0.0 < guided_fraction < 1.0:
        raise MotionCloneError(f"guided_fraction must lie strictly between 0 and 1, got {guided_fraction}.")
    band_start = guided_band_start(guided_fraction, train_timesteps)
    plain_steps = steps - guided_steps
    if plain_steps > band_start:
        raise MotionCloneError(
            f"{plain_steps} unguided steps do not fit below timestep {band_start} "
            f"(guided_fraction {guided_fraction}). Use fewer steps or a smaller guided_fraction."
        )
    guided = np.linspace(band_start, train_timesteps - 1, guided_steps).round()[::-1]
    unguided = np.linspace(0, band_start - 1, plain_steps).round()[::-1] if plain_steps else np.array([])
    return MotionCloneSchedule(tuple(int(t) for t in guided), tuple(int(t) for t in unguided))


def resolve_guided_steps(steps: int, guided_steps: int) -> int:
    """`-1` means half of `steps` (the official configs guide 50 of 100 steps)."""
    return max(1, steps // 2) if guided_steps < 0 else guided_steps


@dataclass(frozen=True)
class GuidanceRamp:
    """Loss weight per guided step: `weight * warm(i) * cool(i)` (docs/algorithm.md §4, §6, v2 `single_step_video`).

    `warm(i) = (i + 1) / warm_up` for `i < warm_up`; `cool(i) = (G - i) / cool_down` for `i > G - cool_down`;
    1 otherwise. With G = 50 and cool_down = 10, steps 41..49 are scaled 0.9..0.1.
    """

    weight: float
    guided_steps: int
    warm_up: int = 10
    cool_down: int = 10

    def warm_up_factor(self, step: int) -> float:
        """`warm(i)` alone, 0 outside the guided steps (v1 scales its semantic term by this only,
        docs/algorithm.md §4, §6)."""
        if not 0 <= step < self.guided_steps:
            return 0.0
        return (step + 1) / self.warm_up if step < self.warm_up else 1.0

    def scale(self, step: int) -> float:
        """The loss weight of guided step `step` (0-based); 0 outside the guided steps."""
        if not 0 <= step < self.guided_steps:
            return 0.0
        scale = float(self.weight) * self.warm_up_factor(step)
        if self.cool_down > 0 and step > self.guided_steps - self.cool_down:
            scale *= (self.guided_steps - step) / self.cool_down
        return scale


@dataclass(frozen=True)
class CombinedWeights:
    """Motion guidance (`motion`, warm-up and cool-down) plus location-aware semantic guidance.

    The semantic term follows v1 (docs/algorithm.md §5, §6): `semantic_weight * warm(i)`, no cool-down. A step is
    guided when either term is positive.
    """

    motion: GuidanceRamp
    semantic_weight: float = 0.0

    @property
    def guided_steps(self) -> int:
        return self.motion.guided_steps

    def semantic_scale(self, step: int) -> float:
        return float(self.semantic_weight) * self.motion.warm_up_factor(step)

    def scale(self, step: int) -> float:
        return self.motion.scale(step) + self.semantic_scale(step)


@dataclass(frozen=True)
class GuidedStepPlan:
    """One evaluation inside the guided band: its place among the band's `guided_steps` steps and its weights."""

    index: int
    guided_steps: int
    motion_scale: float
    semantic_scale: float
    gradient_every: int = 1

    @property
    def guided(self) -> bool:
        """Whether the step takes a gradient; a step in the band with both weights 0 is sampled plainly."""
        return self.motion_scale + self.semantic_scale > 0

    @property
    def computes_gradient(self) -> bool:
        """Whether a guided step runs its own gradient pass: every `gradient_every`-th of the band, from its
        first; the steps between reuse the last one (docs/algorithm.md §7)."""
        return self.index % self.gradient_every == 0

    @property
    def reuses_gradient(self) -> bool:
        return self.guided and not self.computes_gradient


@dataclass(frozen=True)
class GuidanceSettings:
    """The guidance a user set on a node: strength, guided band and ramps (docs/algorithm.md §4, §6).

    `semantic_weight` multiplies the semantic loss's own per-block weights: 1 when semantic guidance is on.
    `gradient_every` n: the gradient pass runs on every n-th guided step and is reused in between (1 = all).
    """

    motion_weight: float
    guided_fraction: float
    warm_up: int = 10
    cool_down: int = 10
    semantic_weight: float = 0.0
    gradient_every: int = 1

    def __post_init__(self):
        if not isinstance(self.gradient_every, int) or self.gradient_every < 1:
            raise MotionCloneError(
                f"gradient_every must be a whole number of at least 1 (1 = a gradient pass at every guided step), "
                f"got {self.gradient_every!r}."
            )

    def plan(self, timesteps: Sequence[int], position: int) -> GuidedStepPlan | None:
        """The plan of step `position` of a schedule with these integer `timesteps` (one per step, descending).

        A step is in the guided band when its timestep is at least `int((1 - guided_fraction) * 1000)`; None
        outside it. Ramps count the band's steps: for MotionClone's own schedule they are its first G steps,
        so `index == position`; for another schedule (KSampler's), the steps of it that fall in the band.
        """
        band_start = guided_band_start(self.guided_fraction)
        in_band = [int(t) >= band_start for t in timesteps]
        if not in_band[position]:
            return None
        index, guided_steps = sum(in_band[:position]), sum(in_band)
        weights = CombinedWeights(GuidanceRamp(self.motion_weight, guided_steps, self.warm_up, self.cool_down),
                                  self.semantic_weight)
        return GuidedStepPlan(index, guided_steps, weights.motion.scale(index), weights.semantic_scale(index),
                              self.gradient_every)
