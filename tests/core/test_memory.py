"""How memory_mode 'auto' picks a mode: the fastest whose estimate fits in the free memory."""

from __future__ import annotations

import pytest

from motionclone.memory import (
    AUTO_RESERVE_BYTES,
    BALANCED,
    FAST,
    KEPT_BYTES_PER_FRAME_PIXEL,
    LOW,
    WORKING_BYTES_PER_FRAME_PIXEL,
    choose_memory_mode,
    estimate,
)

VIDEO = (16, 64, 64)  # frames, latent height, latent width: 16 frames of 512x512


def test_estimates_are_ordered_and_proportional_to_frames_times_pixels():
    fast, balanced, low = (estimate(mode, *VIDEO) for mode in (FAST, BALANCED, LOW))
    assert fast.kept > balanced.kept > low.kept > 0
    assert fast.kept == round(KEPT_BYTES_PER_FRAME_PIXEL[FAST] * 16 * 64 * 64)
    assert fast.working == round(WORKING_BYTES_PER_FRAME_PIXEL * 16 * 64 * 64)
    assert estimate(FAST, 8, 64, 64).kept == pytest.approx(fast.kept / 2, abs=1)
    assert estimate(FAST, 16, 32, 64).kept == pytest.approx(fast.kept / 2, abs=1)
    assert estimate(FAST, *VIDEO, element_bytes=4).total == pytest.approx(2 * fast.total, abs=2)


@pytest.mark.parametrize("mode", [FAST, BALANCED])
def test_a_mode_is_chosen_exactly_when_its_estimate_fits(mode):
    fits = estimate(mode, *VIDEO).total + AUTO_RESERVE_BYTES
    assert choose_memory_mode(fits, *VIDEO) == mode
    slower = {FAST: BALANCED, BALANCED: LOW}[mode]
    assert choose_memory_mode(fits - 1, *VIDEO) == slower


def test_low_when_nothing_fits_and_weights_still_to_load_count():
    assert choose_memory_mode(0, *VIDEO) == LOW
    fits_fast = estimate(FAST, *VIDEO).total + AUTO_RESERVE_BYTES
    assert choose_memory_mode(fits_fast, *VIDEO, weights_to_load=1) == BALANCED
    assert choose_memory_mode(fits_fast + 2**30, *VIDEO, weights_to_load=2**30) == FAST


def test_fp32_needs_twice_the_memory_of_fp16():
    fits_fast_fp16 = estimate(FAST, *VIDEO).total + AUTO_RESERVE_BYTES
    assert choose_memory_mode(fits_fast_fp16, *VIDEO, element_bytes=4) != FAST
    assert choose_memory_mode(estimate(FAST, *VIDEO, element_bytes=4).total + AUTO_RESERVE_BYTES, *VIDEO,
                              element_bytes=4) == FAST
