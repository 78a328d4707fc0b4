"""Context windows: the index math, the fusion weights and the fused average, exactly."""

from __future__ import annotations

import pytest
import torch

from motionclone.errors import MotionCloneError
from motionclone.windows import ContextWindows, fuse, fusion_weights, overlap_regions


def _ranges(*spans):
    return [tuple(range(a, b)) for a, b in spans]


def test_uniform_windows_step_by_length_minus_overlap_and_the_last_ends_at_the_last_frame():
    windows = ContextWindows(16, 4, "uniform")
    assert windows.index_lists(40) == _ranges((0, 16), (12, 28), (24, 40))
    assert windows.index_lists(64) == _ranges((0, 16), (12, 28), (24, 40), (36, 52), (48, 64))
    # 48 frames: 36 + 16 > 48, so the last window is shifted back to 32..47 (overlapping its neighbour by 8).
    assert windows.index_lists(48) == _ranges((0, 16), (12, 28), (24, 40), (32, 48))
    assert ContextWindows(8, 2).index_lists(40) == _ranges(
        (0, 8), (6, 14), (12, 20), (18, 26), (24, 32), (30, 38), (32, 40)
    )
    assert ContextWindows(4, 0).index_lists(10) == _ranges((0, 4), (4, 8), (6, 10))
    assert ContextWindows(16, 4).index_lists(17) == _ranges((0, 16), (1, 17))


@pytest.mark.parametrize("frames", [1, 5, 15, 16])
def test_a_clip_no_longer_than_a_window_is_one_window_of_the_whole_clip(frames):
    for schedule in ("uniform", "looped"):
        windows = ContextWindows(16, 4, schedule).windows_for(frames)
        assert len(windows) == 1 and windows[0].tolist() == list(range(frames)) and windows[0].dtype == torch.int64


def test_looped_windows_wrap_around_the_end_back_to_frame_0():
    windows = ContextWindows(16, 4, "looped").index_lists(40)
    assert windows == [tuple(range(16)), tuple(range(12, 28)), tuple(range(24, 40)),
                       (*range(36, 40), *range(12))]
    assert ContextWindows(8, 2, "looped").index_lists(12) == [tuple(range(8)), (6, 7, 8, 9, 10, 11, 0, 1)]
    # 48 frames, stride 12: exactly 4 windows, the last overlapping window 0 by the overlap.
    assert ContextWindows(16, 4, "looped").index_lists(48)[-1] == (*range(36, 48), 0, 1, 2, 3)


@pytest.mark.parametrize("schedule", ["uniform", "looped"])
@pytest.mark.parametrize("frames,length,overlap",
                         [(40, 16, 4), (64, 16, 4), (33, 16, 8), (100, 24, 6), (9, 8, 0), (50, 8, 7)])
def test_every_window_is_full_length_with_distinct_frames_and_every_frame_is_covered(schedule, frames, length, overlap):
    windows = ContextWindows(length, overlap, schedule).index_lists(frames)
    assert all(len(w) == length and len(set(w)) == length for w in windows)
    assert set().union(*map(set, windows)) == set(range(frames))
    assert all(0 <= i < frames for w in windows for i in w)
    # Consecutive windows overlap by at least `overlap` frames: there is always something to blend over.
    assert all(len(set(a) & set(b)) >= overlap for a, b in zip(windows[:-1], windows[1:]))


def test_fusion_weights_are_flat_ones_or_a_triangle_never_zero_at_the_ends():
    assert fusion_weights(4, "flat").tolist() == [1.0, 1.0, 1.0, 1.0]
    assert fusion_weights(8, "pyramid").tolist() == [1, 2, 3, 4, 4, 3, 2, 1]
    assert fusion_weights(5, "pyramid").tolist() == [1, 2, 3, 2, 1]
    assert fusion_weights(16, "pyramid").min() == 1 and fusion_weights(16, "pyramid").max() == 8
    with pytest.raises(MotionCloneError, match="Unknown context fusion"):
        fusion_weights(4, "gaussian")


def test_fuse_is_the_per_frame_weighted_average_of_the_windows_outputs():
    windows = ContextWindows(4, 2, "uniform", "pyramid").windows_for(6)  # 0..3, 2..5
    first = torch.tensor([10.0, 20.0, 30.0, 40.0]).reshape(4, 1)
    second = torch.tensor([100.0, 200.0, 300.0, 400.0]).reshape(4, 1)
    fused = fuse([first, second], windows, 6, "pyramid")
    # pyramid(4) = 1 2 2 1: frame 2 = (2*30 + 1*100) / 3, frame 3 = (1*40 + 2*200) / 3.
    expected = torch.tensor([10.0, 20.0, (60 + 100) / 3, (40 + 400) / 3, 300.0, 400.0]).reshape(6, 1)
    assert torch.allclose(fused, expected, rtol=0, atol=1e-5)
    flat = fuse([first, second], windows, 6, "flat")
    assert flat.flatten().tolist() == [10.0, 20.0, 65.0, 120.0, 300.0, 400.0]


def test_fuse_of_identical_frame_values_returns_them_in_the_outputs_dtype():
    windows = ContextWindows(16, 4, "looped").windows_for(40)
    clip = torch.randn(40, 4, 3, 3, generator=torch.Generator().manual_seed(0)).half()
    fused = fuse([clip[w] for w in windows], windows, 40, "pyramid")
    assert fused.dtype == torch.float16 and torch.equal(fused, clip)


def test_fuse_refuses_windows_that_leave_a_frame_out():
    with pytest.raises(MotionCloneError, match="Frame 4 of 6 lies in no window"):
        fuse([torch.ones(4, 1), torch.ones(1, 1)], [torch.arange(4), torch.tensor([5])], 6, "flat")


def test_overlap_regions_of_uniform_and_looped_layouts():
    assert overlap_regions(ContextWindows(16, 4).index_lists(40)) == [tuple(range(12, 16)), tuple(range(24, 28))]
    looped = overlap_regions(ContextWindows(16, 4, "looped").index_lists(40))
    assert looped == [tuple(range(12, 16)), tuple(range(24, 28)), tuple(range(36, 40)), tuple(range(12))]


@pytest.mark.parametrize("settings,message", [
    (dict(length=1), "at least 2 frames"), (dict(length=8, overlap=8), "overlap must be an integer in 0..7"),
    (dict(overlap=-1), "overlap must be"), (dict(schedule="static"), "Unknown context schedule"),
    (dict(fusion="linear"), "Unknown context fusion"), (dict(length=16.0), "must be an integer"),
])
def test_bad_settings_are_refused_with_the_fix(settings, message):
    with pytest.raises(MotionCloneError, match=message):
        ContextWindows(**settings)
