"""Motion fidelity: DMT's track score and the camera variant, on toy clips whose motion is known."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from motionclone.errors import MotionCloneError
from motionclone.fidelity import (
    STILL_FRACTION,
    Tracks,
    camera_fidelity,
    motion_fidelity,
    plot_tracks,
    segmented_fidelity,
    segments_of,
    track_similarity,
    working_size,
)
from motionclone.toyworld import ClipSpec, ShapeSpec, render_clip

PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _moving(kind: str = "circle", colour: str = "red", velocity=(2.0, 0.0), size: int = 32, frames: int = 8,
            start=None, zoom: float = 1.0) -> torch.Tensor:
    """A shape crossing the middle of a plain frame at `velocity` px/frame: `(F, size, size, 3)`."""
    start = start or (size / 2 - velocity[0] * (frames - 1) / 2, size / 2 - velocity[1] * (frames - 1) / 2)
    shape = ShapeSpec(kind, colour, start, 0.16 * size, velocity, zoom)
    return render_clip(ClipSpec((shape,), frames, size, size)).frames


def _pan(pan, size: int = 64, frames: int = 8, texture_seed: int = 1, height: int | None = None) -> torch.Tensor:
    return render_clip(ClipSpec((), frames, height or size, size, pan=pan, background="texture",
                                texture_seed=texture_seed)).frames


def _tracks(*steps) -> Tracks:
    """Tracks from per-track lists of `(dx, dy)` steps, starting at (10, 10) in a 128 px working frame."""
    positions = np.cumsum(np.concatenate([np.full((len(steps), 1, 2), 10.0), np.array(steps, float)], 1), axis=1)
    return Tracks(positions, positions[:, 0], (128, 128))


def test_track_similarity_is_the_mean_step_cosine_with_still_steps_defined():
    right, up, still = (1.0, 0.0), (0.0, -2.0), (0.0, 0.0)
    a = _tracks([right, right, right, right], [still, still, still, still])
    b = _tracks([up, right, (-1.0, 0.0), (1.0, 1.0)], [still, right, still, still])
    similarity = track_similarity(a, b)
    assert similarity[0, 0] == pytest.approx((0 + 1 - 1 + math.sqrt(0.5)) / 4)
    assert similarity[0, 1] == pytest.approx(1 / 4)  # one shared step right, three where only one moves
    assert similarity[1, 0] == pytest.approx(0.0)  # still against moving: no direction to agree on
    assert similarity[1, 1] == pytest.approx(3 / 4)  # three steps both still (agree), one where only b moves


def test_steps_below_the_still_length_count_as_still():
    tiny = 0.9 * STILL_FRACTION * 128
    a, b = _tracks([(tiny, 0.0)]), _tracks([(0.0, tiny)])
    assert track_similarity(a, b)[0, 0] == 1.0  # both "still" although perpendicular
    c = _tracks([(2 * tiny, 0.0)])
    assert track_similarity(c, b)[0, 0] == 0.0


@pytest.mark.parametrize("clip", [
    _moving(velocity=(1.7, 1.1)),
    _moving("square", "green", velocity=(0.0, 0.0), zoom=1.06),
    _moving("triangle", "yellow", velocity=(-2.5, 0.5), size=64, frames=16),
    _pan((1.5, -2.0)),
], ids=["translate", "zoom", "translate-64px-16f", "pan"])
def test_identical_clips_score_one(clip):
    result = motion_fidelity(clip, clip)
    assert result.score == pytest.approx(1.0, abs=1e-9)
    assert result.reverse == pytest.approx(1.0, abs=1e-9) and result.symmetric == pytest.approx(1.0, abs=1e-9)
    assert result.reference.count == result.generated.count > 10


def test_reversed_or_mirrored_motion_scores_minus_one():
    diagonal = _moving(velocity=(1.8, 1.2))
    assert motion_fidelity(diagonal, diagonal.flip(0)).score < -0.98  # time-reversed
    assert motion_fidelity(diagonal, diagonal.flip(1).flip(2)).score < -0.98  # rotated by 180 degrees
    rightward = _moving(velocity=(2.0, 0.0))
    mirrored = motion_fidelity(rightward, rightward.flip(2))  # left-right mirror: now moving left
    assert mirrored.score < -0.98 and mirrored.reverse < -0.98


def test_same_direction_with_another_shape_scores_high_and_perpendicular_scores_zero():
    reference = _moving("circle", "red", (2.0, 0.0))
    other_shape_same_way = _moving("square", "blue", (2.5, 0.0), start=(6.0, 9.0))
    assert motion_fidelity(reference, other_shape_same_way).score > 0.98
    moving_up = _moving("triangle", "green", (0.0, -2.0))
    assert abs(motion_fidelity(reference, moving_up).score) < 0.05
    diagonal = _moving("square", "blue", (2.0, -2.0))
    assert motion_fidelity(reference, diagonal).score == pytest.approx(math.cos(math.pi / 4), abs=0.03)


def test_static_generated_clip_scores_zero_against_motion_and_one_against_stillness():
    moving, static = _moving(velocity=(2.0, 0.0)), _moving("square", "blue", (0.0, 0.0))
    result = motion_fidelity(moving, static)
    assert result.score == pytest.approx(0.0, abs=1e-9) and result.reverse == pytest.approx(0.0, abs=1e-9)
    assert motion_fidelity(static, _moving("circle", "red", (0.0, 0.0))).score == pytest.approx(1.0, abs=1e-9)


def test_reverse_sees_reference_motion_the_generated_clip_leaves_out():
    two_ways = render_clip(ClipSpec((ShapeSpec("circle", "red", (8.0, 8.0), 5.0, (2.0, 0.0)),
                                     ShapeSpec("square", "blue", (22.0, 24.0), 5.0, (0.0, -2.0))), 8, 32, 32)).frames
    one_way = _moving("circle", "green", (2.0, 0.0))
    result = motion_fidelity(two_ways, one_way)
    rightward = (result.reference.displacements[..., 0] > 1.0).all(axis=1)
    assert 0 < rightward.sum() < result.reference.count  # both shapes are tracked
    assert result.score > 0.98  # everything the generated clip does, the reference does
    assert result.reverse == pytest.approx(rightward.mean(), abs=0.02)  # the upward tracks find no match


def test_score_is_the_fraction_of_frame_steps_that_agree():
    reference = _moving(velocity=(2.0, 0.0))  # moves right in all 7 steps
    stops = torch.cat([reference[:5], reference[4:5].expand(3, -1, -1, -1)])  # moves 4 steps, then stands 3
    result = motion_fidelity(reference, stops)
    assert result.score == pytest.approx(4 / 7, abs=0.01) and result.reverse == pytest.approx(4 / 7, abs=0.01)


def test_matching_ignores_where_a_track_is_so_zoom_in_and_out_look_alike():
    """Each track finds its best match anywhere: the inward tracks of a shrinking shape match the outward
    tracks on the opposite side of a growing one (docs/fidelity.md, "What the score does not see")."""
    zoom_in = _moving("circle", "red", (0.0, 0.0), size=64, zoom=1.07)
    assert motion_fidelity(zoom_in, _moving("square", "cyan", (0.0, 0.0), size=64, zoom=1.05)).score > 0.8
    assert motion_fidelity(zoom_in, _moving("square", "cyan", (0.0, 0.0), size=64, zoom=1 / 1.07)).score > 0.8
    assert camera_fidelity(zoom_in, zoom_in).magnitude_ratio == 1.0  # a centred zoom has no global motion


def test_clips_of_different_sizes_are_compared_at_the_reference_aspect():
    small = _moving(velocity=(2.0, 1.0), size=32)
    large = _moving("square", "blue", velocity=(4.0, 2.0), size=64)
    assert working_size(small) == (128, 128) and working_size(torch.zeros(2, 720, 1280, 3)) == (144, 256)
    assert motion_fidelity(small, large).score > 0.98
    wide = render_clip(ClipSpec((), 8, 32, 64, pan=(2.0, 0.0), background="texture")).frames
    tall = render_clip(ClipSpec((), 8, 64, 32, pan=(1.0, 0.0), background="texture")).frames
    camera = camera_fidelity(wide, tall)  # tall stretched to 32x64: its 1 px/frame becomes 2
    assert camera.cosine > 0.99 and camera.magnitude_ratio == pytest.approx(1.0, rel=0.03)


def test_camera_variant_compares_global_pans():
    reference = _pan((2.0, 1.0))
    same = camera_fidelity(reference, _pan((2.0, 1.0), texture_seed=9))
    assert same.cosine > 0.999 and same.magnitude_ratio == pytest.approx(1.0, rel=0.02)
    assert np.allclose(same.reference_motion, [2.0, 1.0], atol=0.05)  # reference pixels per frame
    faster = camera_fidelity(reference, _pan((4.0, 2.0), texture_seed=9))
    assert faster.cosine > 0.999 and faster.magnitude_ratio == pytest.approx(2.0, rel=0.03)
    assert camera_fidelity(reference, _pan((-2.0, -1.0))).cosine < -0.999
    assert abs(camera_fidelity(reference, _pan((-1.0, 2.0))).cosine) < 0.02
    stops = torch.cat([reference[:5], reference[4:5].expand(3, -1, -1, -1)])  # pans 4 steps, then stands 3
    stopping = camera_fidelity(reference, stops)
    assert stopping.cosine == pytest.approx(4 * 5 / (math.sqrt(7 * 5) * math.sqrt(4 * 5)), abs=0.005)
    assert stopping.magnitude_ratio == pytest.approx(4 / 7, abs=0.005)


def test_camera_variant_with_still_clips():
    still, pan = _pan((0.0, 0.0)), _pan((2.0, 0.0))
    both = camera_fidelity(still, _pan((0.0, 0.0), texture_seed=4))
    assert both.cosine == 1.0 and both.magnitude_ratio == 1.0
    only_generated = camera_fidelity(still, pan)
    assert only_generated.cosine == 0.0 and math.isinf(only_generated.magnitude_ratio)
    only_reference = camera_fidelity(pan, still)
    assert only_reference.cosine == 0.0 and only_reference.magnitude_ratio == pytest.approx(0.0, abs=0.01)


def test_camera_variant_ignores_a_subject_moving_against_the_pan():
    background = render_clip(ClipSpec((ShapeSpec("circle", "red", (40.0, 32.0), 8.0, (-2.0, 0.0)),), 8, 64, 64,
                                      pan=(2.0, 0.0), background="texture")).frames
    assert camera_fidelity(_pan((2.0, 0.0)), background).cosine > 0.99


def test_plot_draws_both_track_fields_in_direction_colours():
    rightward, upward = _moving(velocity=(2.0, 0.0)), _moving("square", "blue", (0.0, -2.0))
    result = motion_fidelity(rightward, upward)
    plot = plot_tracks(rightward, upward, result.reference, result.generated)
    assert plot.shape == (1, 384, 2 * 384 + 8, 3) and plot.dtype == torch.float32
    assert 0.0 <= plot.min() and plot.max() <= 1.0
    left, right = plot[0, :, :384], plot[0, :, -384:]

    def has(panel, rgb):  # a solid patch of the colour (the line cores, not anti-aliased edges)
        return bool((((panel - torch.tensor(rgb)).abs() < 0.02).all(-1)).sum() > 50)

    red, violet = (1.0, 0.0, 0.0), (127 / 255, 0.0, 1.0)  # hue of right (0 deg) and up (270 deg)
    assert has(left, red) and not has(left, violet)
    assert has(right, violet) and not has(right, red)
    wide = _pan((1.0, 0.0), size=64, height=32)
    camera = camera_fidelity(wide, wide)
    assert plot_tracks(wide, wide, camera.reference, camera.generated).shape == (1, 192, 2 * 384 + 8, 3)


def test_inputs_that_cannot_be_compared_say_which_and_how_to_fix():
    clip = _moving()
    with pytest.raises(MotionCloneError, match=r"'reference' has 8 frames but 'generated' has 6.*ImageFromBatch"):
        motion_fidelity(clip, clip[:6])
    with pytest.raises(MotionCloneError, match="'generated' has 1 frame"):
        camera_fidelity(clip, clip[:1])
    with pytest.raises(MotionCloneError, match=r"'reference' must be an IMAGE batch"):
        motion_fidelity(clip[0], clip)
    with pytest.raises(MotionCloneError, match="'grid_size' must be between 4 and 64"):
        motion_fidelity(clip, clip, grid_size=2)
    with pytest.raises(MotionCloneError, match="No point of 'generated' could be tracked"):
        motion_fidelity(clip, torch.full_like(clip, 0.5))


def test_importing_the_score_loads_neither_comfyui_nor_opencv(tmp_path):
    code = ("import json, sys; import motionclone.fidelity;"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} "
            "& {'comfy', 'comfy_api', 'folder_paths', 'cv2'})))")
    env = {**os.environ, "PYTHONPATH": PACK_ROOT}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                            check=True)
    assert json.loads(result.stdout) == []


# ------------------------------------------------------------------------------------ long clips: segments


def test_segments_overlap_by_half_and_the_last_one_ends_at_the_last_frame():
    assert segments_of(40, 16) == [(0, 16), (8, 24), (16, 32), (24, 40)]
    assert segments_of(41, 16) == [(0, 16), (8, 24), (16, 32), (24, 40), (25, 41)]
    assert segments_of(16, 16) == [(0, 16)]
    assert segments_of(10, 16) == [(0, 10)]
    assert segments_of(5, 2) == [(0, 2), (1, 3), (2, 4), (3, 5)]


def _cut(frames: int = 24, cut: int = 12, size: int = 64) -> torch.Tensor:
    """A red circle going right until `cut`, then a blue square elsewhere going right: no track survives the cut."""
    first = _moving("circle", "red", (1.5, 0.0), size, frames, start=(14.0, 20.0))
    second = _moving("square", "blue", (1.5, 0.0), size, frames, start=(14.0, 44.0))
    return torch.cat([first[:cut], second[cut:]])


def test_segments_reacquire_tracks_that_the_whole_clip_score_loses():
    reference, generated = _moving(velocity=(1.5, 0.0), size=64, frames=24), _cut()
    with pytest.raises(MotionCloneError, match="'generated' could be tracked through all 24 frames"):
        motion_fidelity(reference, generated)
    result = segmented_fidelity(reference, generated, 8)
    assert result.segments == ((0, 8), (4, 12), (8, 16), (12, 20), (16, 24))
    # The segment holding the cut has no generated track: 0; every other one moves right like the reference.
    assert result.scores[2] == 0.0
    assert result.scores[:2] + result.scores[3:] == pytest.approx([1.0] * 4, abs=0.01)  # LK on edges: within 0.4 %
    assert result.score == pytest.approx(0.8, abs=0.01)
    text = result.describe()
    assert (text.startswith(f"mean over 5 segments of 8 frames {result.score:.3f} (frames 0-7: ")
            and "8-15: 0.000," in text)


def test_each_segment_scores_exactly_as_the_whole_clip_score_of_its_frames():
    reference = _moving(velocity=(1.5, 0.5), size=64, frames=20)
    generated = torch.cat([
        _moving("square", "blue", (1.5, 0.0), 64, 10), _moving("square", "blue", (0.0, 1.5), 64, 10),
    ])
    result = segmented_fidelity(reference, generated, 8)
    expected = [motion_fidelity(reference[a:b], generated[a:b]).score for a, b in segments_of(20, 8)]
    assert list(result.scores) == expected
    assert result.score == pytest.approx(float(np.mean(expected)))
    camera = segmented_fidelity(reference, generated, 8, mode="camera")
    assert list(camera.scores) == [
        camera_fidelity(reference[a:b], generated[a:b]).cosine for a, b in segments_of(20, 8)
    ]
    # A clip no longer than one segment is the whole-clip score.
    assert segmented_fidelity(reference, generated, 20).score == motion_fidelity(reference, generated).score


def test_a_reference_segment_without_tracks_names_its_frames_and_bad_lengths_are_refused():
    with pytest.raises(MotionCloneError, match="'reference' could be tracked through frames 8-15"):
        segmented_fidelity(_cut(), _moving(velocity=(1.5, 0.0), size=64, frames=24), 8)
    with pytest.raises(MotionCloneError, match="'segment_frames' must be at least 2 .* Use 0 to score the whole clip"):
        segmented_fidelity(_cut(), _cut(), 1)
    with pytest.raises(MotionCloneError, match="'grid_size' must be between 4 and 64, got 2"):
        segmented_fidelity(_cut(), _cut(), 8, grid_size=2)
    with pytest.raises(MotionCloneError, match="'reference' has 24 frames but 'generated' has 12"):
        segmented_fidelity(_cut(), _cut()[:12], 8)
