"""Reference-clip frame selection and resizing."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from motionclone import MotionCloneError, resize_frames
from motionclone.video import MAX_FPS, SECONDS_STEP, select_frames

# 16 frames over 2 s of a 30 fps clip: every 3.75 source frames, each rounded to the nearest (ties go later).
THIRTY_FPS_TWO_SECONDS = (0, 4, 8, 11, 15, 19, 23, 26, 30, 34, 38, 41, 45, 49, 53, 56)


def test_span_takes_the_nearest_frame_to_each_evenly_spaced_time():
    selection = select_frames(60, 30.0, 16, "span", span_seconds=2.0)
    assert selection.indices == THIRTY_FPS_TWO_SECONDS
    assert (selection.fps, selection.span_seconds, selection.repeated) == (8.0, 2.0, 0)
    assert select_frames(48, 24.0, 16, "span", span_seconds=2.0).indices == tuple(range(0, 48, 3))
    ntsc = select_frames(60, 30000 / 1001, 16, "span", span_seconds=2.0)  # 29.97 fps, as phones record
    assert ntsc.indices == (0, 4, 7, 11, 15, 19, 22, 26, 30, 34, 37, 41, 45, 49, 52, 56)


def test_span_sets_the_playback_rate_that_keeps_the_real_speed():
    selection = select_frames(120, 30.0, 16, "span", span_seconds=4.0)
    assert (selection.indices == (0, 8, 15, 23, 30, 38, 45, 53, 60, 68, 75, 83, 90, 98, 105, 113)
            and selection.fps == 4.0)
    assert select_frames(60, 30.0, 16, "span", span_seconds=1.0).fps == 16.0


def test_fps_mode_retimes_the_clip_to_the_target_rate():
    assert select_frames(60, 30.0, 16, "fps", target_fps=8.0).indices == THIRTY_FPS_TWO_SECONDS
    selection = select_frames(100, 25.0, 10, "fps", target_fps=5.0)
    assert selection.indices == tuple(range(0, 50, 5)) and selection.fps == 5.0 and selection.span_seconds == 2.0


def test_whole_clip_spreads_the_frames_over_the_rest_of_the_clip():
    selection = select_frames(50, 25.0, 16, "whole clip")
    assert selection.indices == (0, 3, 6, 9, 13, 16, 19, 22, 25, 28, 31, 34, 38, 41, 44, 47)
    assert (selection.span_seconds, selection.fps) == (2.0, 8.0)
    assert select_frames(4, 8.0, 4, "whole clip").indices == (0, 1, 2, 3)
    assert select_frames(90, 30.0, 4, "whole clip", start_seconds=1.0).indices == (30, 45, 60, 75)
    assert select_frames(2, 8.0, 8, "whole clip").indices == (0, 0, 1, 1, 1, 1, 1, 1)  # never past the last frame


def test_start_offset_shifts_the_selection():
    assert select_frames(90, 30.0, 16, "span", span_seconds=2.0, start_seconds=1.0).indices == tuple(
        30 + i for i in THIRTY_FPS_TWO_SECONDS)
    assert select_frames(48, 24.0, 4, "fps", target_fps=12.0, start_seconds=0.25).indices == (6, 8, 10, 12)


def test_a_step_shorter_than_the_clip_frames_repeats_them():
    selection = select_frames(12, 24.0, 16, "span", span_seconds=0.5)
    assert selection.indices == (0, 1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9, 10, 11, 11)
    assert selection.repeated == 4


@pytest.mark.parametrize("mode, settings, named", [
    ("span", {"span_seconds": 2.0}, "lower 'span_seconds' to at most 1.38"),
    ("fps", {"target_fps": 8.0}, "raise 'target_fps' to at least 11.54, lower 'frames' to at most 11"),
    ("span", {"span_seconds": 1.0, "start_seconds": 0.5}, "start earlier ('start_seconds')"),
])
def test_a_clip_too_short_for_the_selection_is_refused_with_the_fix(mode, settings, named):
    with pytest.raises(MotionCloneError) as error:
        select_frames(40, 30.0, 16, mode, **settings)
    message = str(error.value)
    assert "the clip has 40 frames at 30 fps (1.33 s)" in message and named in message and "'whole clip'" in message


def test_the_suggested_longest_span_fits():
    longest = 1.38  # from the message above
    assert select_frames(40, 30.0, 16, "span", span_seconds=longest).indices[-1] == 39
    with pytest.raises(MotionCloneError, match=r"lower 'span_seconds' to at most 1.38"):
        select_frames(40, 30.0, 16, "span", span_seconds=1.45)


@pytest.mark.parametrize("clip_frames, clip_fps, frames, mode, settings, named", [
    (0, 30.0, 16, "span", {}, "'images' holds no frames"),
    (60, 0.0, 16, "span", {}, "'fps' must be the clip's frame rate"),
    (60, 30.0, 0, "span", {}, "'frames' must be at least 1"),
    (60, 30.0, 16, "slow motion", {}, "mode must be one of"),
    (60, 30.0, 16, "span", {"span_seconds": 0.0}, "'span_seconds' must be above 0"),
    (60, 30.0, 16, "fps", {"target_fps": -1.0}, "'target_fps' must be above 0"),
    (60, 30.0, 16, "whole clip", {"start_seconds": 2.0}, "'start_seconds' (2 s) must lie inside the clip"),
])
def test_invalid_selections_name_the_input(clip_frames, clip_fps, frames, mode, settings, named):
    with pytest.raises(MotionCloneError, match=re.escape(named)):
        select_frames(clip_frames, clip_fps, frames, mode, **settings)


@pytest.mark.parametrize("name", ["fps", "span_seconds", "target_fps", "start_seconds"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_number_that_is_not_finite_is_refused_by_name(name, value):
    settings = {"span_seconds": 2.0, "target_fps": 8.0, "start_seconds": 0.0}
    clip_fps = value if name == "fps" else 30.0
    if name != "fps":
        settings[name] = value
    with pytest.raises(MotionCloneError, match=re.escape(
            f"'{name}' is {value}; it must be a finite number. Type a number into '{name}'")):
        select_frames(60, clip_fps, 16, "fps" if name == "target_fps" else "span", **settings)


@pytest.mark.parametrize("clip_frames, mode, settings, suggested, fitting", [
    # 60 frames at 1000 fps (0.06 s): the longest span, floored to the input's step, fits.
    (60, "span", {"span_seconds": 2.0}, "lower 'span_seconds' to at most 0.06,", {"span_seconds": 0.06}),
    # 5 frames (0.005 s): the lowest fitting target_fps is above the input's 1000, so only fewer frames are offered.
    (5, "fps", {"target_fps": 8.0}, "To fix it, lower 'frames' to at most 1, or use mode 'whole clip'", {"frames": 1}),
    # 3 frames: the latest start, rounded down (0.002 s -> 0.00), lies inside the clip.
    (3, "span", {"start_seconds": 0.5}, "use a start of at most 0.00 s.", {"start_seconds": 0.0, "span_seconds": 0.01}),
])
def test_a_fix_suggested_for_a_1000_fps_clip_is_a_value_the_input_accepts_and_that_fits(clip_frames, mode, settings,
                                                                                        suggested, fitting):
    with pytest.raises(MotionCloneError) as error:
        select_frames(clip_frames, MAX_FPS, 16, mode, **settings)
    assert suggested in str(error.value)
    frames = fitting.pop("frames", 16)
    select_frames(clip_frames, MAX_FPS, frames, "whole clip" if "start_seconds" in fitting else mode,
                  **{**settings, **fitting})
    assert fitting.get("span_seconds", SECONDS_STEP) >= SECONDS_STEP


def test_a_clip_of_a_few_frames_at_1000_fps_offers_whole_clip_instead_of_a_span_below_the_minimum():
    with pytest.raises(MotionCloneError) as error:
        select_frames(5, MAX_FPS, 16, "span", span_seconds=2.0)
    message = str(error.value)
    assert "span_seconds' to at most" not in message
    assert message.endswith("To fix it, use mode 'whole clip' (the frames spread over the clip, whatever its length).")
    assert len(select_frames(5, MAX_FPS, 16, "whole clip").indices) == 16


def _clip() -> torch.Tensor:
    return torch.rand(3, 96, 160, 3, generator=torch.Generator().manual_seed(0))


def test_stretch_is_the_official_bilinear_resize():
    clip = _clip()
    expected = F.interpolate(
        clip.permute(0, 3, 1, 2), size=(64, 128), mode="bilinear", align_corners=True
    ).permute(0, 2, 3, 1)
    torch.testing.assert_close(resize_frames(clip, 128, 64, "stretch"), expected, rtol=0, atol=0)


def test_crop_keeps_the_centre_at_the_target_aspect_ratio():
    clip = torch.zeros(2, 96, 160, 3)
    clip[:, :, :32] = 1.0  # left and right bands outside the central 96x96 square
    clip[:, :, -32:] = 1.0
    out = resize_frames(clip, 64, 64, "crop")
    assert out.shape == (2, 64, 64, 3) and out.max() == 0.0
    tall = torch.arange(40 * 8, dtype=torch.float32).reshape(1, 40, 8, 1).expand(1, 40, 8, 3)
    assert torch.equal(resize_frames(tall, 8, 8, "crop"), tall[:, 16:24])  # already the target size after the crop


def test_same_size_is_returned_unchanged():
    clip = _clip()
    assert torch.equal(resize_frames(clip, 160, 96, "stretch"), clip)


@pytest.mark.parametrize("width, height, mode, message", [
    (100, 64, "stretch", r"positive multiples of 8 \(the VAE's factor\), got 100x64"),
    (64, 0, "crop", r"positive multiples of 8 \(the VAE's factor\), got 64x0"),
    (64, 64, "pad", r"resize mode must be one of \('stretch', 'crop'\), got 'pad'"),
])
def test_invalid_requests_are_refused(width, height, mode, message):
    with pytest.raises(MotionCloneError, match=message):
        resize_frames(_clip(), width, height, mode)
