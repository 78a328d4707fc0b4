"""MotionClone's official timestep schedule and the warm-up / cool-down ramp."""

from __future__ import annotations

import pytest

from motionclone import GuidanceRamp, GuidanceSettings, MotionCloneError, motionclone_timesteps, resolve_guided_steps


@pytest.mark.parametrize("steps, guided, fraction, guided_head, guided_tail, plain_head, plain_tail", [
    (100, 50, 0.3, (999, 993, 987), (706, 700), (699, 685, 670), (14, 0)),
    (300, 180, 0.4, (999, 997, 995, 992), (602, 600), (599, 594), (5, 0)),
    (100, 40, 0.3, (999, 991, 984), (708, 700), (699, 687), (12, 0)),
    (200, 120, 0.4, (999, 996, 992), (603, 600), (599, 591), (8, 0)),
])
def test_official_settings(steps, guided, fraction, guided_head, guided_tail, plain_head, plain_tail):
    schedule = motionclone_timesteps(steps, guided, fraction)
    assert len(schedule.guided) == guided and len(schedule.unguided) == steps - guided
    assert schedule.guided[: len(guided_head)] == guided_head and schedule.guided[-len(guided_tail):] == guided_tail
    assert schedule.unguided[: len(plain_head)] == plain_head and schedule.unguided[-len(plain_tail):] == plain_tail
    timesteps = schedule.timesteps
    assert all(a > b for a, b in zip(timesteps, timesteps[1:]))
    band = round((1 - fraction) * 1000)
    assert min(schedule.guided) == band and max(schedule.unguided) == band - 1


def test_guided_steps_are_denser_than_plain_steps():
    schedule = motionclone_timesteps(100, 50, 0.3)
    assert schedule.guided[0] - schedule.guided[1] < schedule.unguided[0] - schedule.unguided[1]


@pytest.mark.parametrize("steps, guided, fraction, message", [
    (10, 11, 0.3, r"guided_steps must be between 1 and steps \(10\), got 11"),
    (10, 0, 0.3, r"guided_steps must be between 1 and steps \(10\), got 0"),
    (10, 5, 1.0, "guided_fraction must lie strictly between 0 and 1, got 1.0"),
    (10, 5, 0.0, "guided_fraction must lie strictly between 0 and 1, got 0.0"),
    (2000, 1, 0.3, r"1999 unguided steps do not fit below timestep 700 \(guided_fraction 0.3\)"),
])
def test_impossible_schedules_are_refused(steps, guided, fraction, message):
    with pytest.raises(MotionCloneError, match=message):
        motionclone_timesteps(steps, guided, fraction)


def test_all_steps_guided_leaves_no_plain_steps():
    schedule = motionclone_timesteps(4, 4, 0.3)
    assert schedule.guided == (999, 899, 800, 700)  # round(linspace(700, 999, 4))
    assert schedule.unguided == ()


def test_minus_one_means_half_of_steps():
    assert resolve_guided_steps(100, -1) == 50 and resolve_guided_steps(7, -1) == 3 and resolve_guided_steps(1, -1) == 1
    assert resolve_guided_steps(100, 30) == 30


def test_ramp_matches_the_official_warm_up_and_cool_down():
    ramp = GuidanceRamp(weight=2000.0, guided_steps=50, warm_up=10, cool_down=10)
    assert [ramp.scale(i) for i in range(10)] == [2000.0 * (i + 1) / 10 for i in range(10)]
    assert all(ramp.scale(i) == 2000.0 for i in range(10, 41))
    assert [ramp.scale(i) for i in range(41, 50)] == [2000.0 * (50 - i) / 10 for i in range(41, 50)]
    assert ramp.scale(50) == 0.0 and ramp.scale(-1) == 0.0


def test_ramp_overlapping_warm_up_and_cool_down_multiply():
    ramp = GuidanceRamp(weight=10.0, guided_steps=4, warm_up=4, cool_down=4)
    assert [ramp.scale(i) for i in range(4)] == pytest.approx(
        [10 * 1 / 4, 10 * 2 / 4 * 3 / 4, 10 * 3 / 4 * 2 / 4, 10 * 4 / 4 * 1 / 4]
    )


def test_ramp_without_warm_up_or_cool_down_is_flat():
    ramp = GuidanceRamp(weight=3.0, guided_steps=5, warm_up=0, cool_down=0)
    assert [ramp.scale(i) for i in range(5)] == [3.0] * 5


@pytest.mark.parametrize("every, computing", [(1, [0, 1, 2, 3, 4]), (2, [0, 2, 4]), (3, [0, 3]), (7, [0])])
def test_gradient_every_plans_a_gradient_pass_on_every_nth_guided_step_of_the_band(every, computing):
    timesteps = [999, 950, 900, 850, 800, 650, 300, 0]  # the band t >= 700 holds the first 5
    plans = [
        GuidanceSettings(100.0, 0.3, warm_up=2, cool_down=2, gradient_every=every).plan(timesteps, i) for i in range(8)
    ]
    band = plans[:5]
    assert plans[5:] == [None] * 3
    assert [p.index for p in band if p.computes_gradient] == computing
    assert [p.index for p in band if p.reuses_gradient] == [i for i in range(5) if i not in computing]
    # The weights are each step's own, reused or not: warm-up 0.5 on step 0, cool-down 0.5 on step 4.
    assert [p.motion_scale for p in band] == [50.0, 100.0, 100.0, 100.0, 50.0]


def test_a_band_with_weight_zero_reuses_nothing():
    plans = [GuidanceSettings(0.0, 0.3, gradient_every=2).plan([999, 900, 800], i) for i in range(3)]
    assert not any(p.reuses_gradient for p in plans) and [p.computes_gradient for p in plans] == [True, False, True]


@pytest.mark.parametrize("every", [0, -1, 1.5])
def test_gradient_every_below_one_or_fractional_is_refused(every):
    with pytest.raises(MotionCloneError, match="gradient_every must be a whole number of at least 1"):
        GuidanceSettings(100.0, 0.3, gradient_every=every)
