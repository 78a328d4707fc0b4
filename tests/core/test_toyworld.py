"""The toy world: seeded clips whose rendered motion matches their stated ground truth."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from motionclone.toyworld import (
    COLOURS,
    DEFAULT_SPEED,
    MOTIONS,
    PLAIN_BACKGROUND,
    SHAPES,
    ClipSpec,
    ShapeSpec,
    random_clip,
    render_clip,
)


def _coverage_from_pixels(frames: torch.Tensor, colour: str) -> torch.Tensor:
    """`(F, H, W)` how much of each pixel is the shape, read back from the frames of a plain-background clip."""
    background = torch.tensor(PLAIN_BACKGROUND)
    direction = torch.tensor(COLOURS[colour]) - background
    return ((frames - background) * direction).sum(-1) / (direction * direction).sum()


def _centroids(weights: torch.Tensor) -> torch.Tensor:
    """`(F, 2)` weighted mean of the pixel centres `(x, y)`."""
    height, width = weights.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    total = weights.sum((-2, -1))
    return torch.stack([(weights * xs).sum((-2, -1)) / total, (weights * ys).sum((-2, -1)) / total], -1).double()


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("frames", [8, 16])
def test_random_clips_have_the_comfyui_image_layout_and_are_seeded(size, frames):
    for motion in MOTIONS:
        for shapes in (1, 2):
            clip = random_clip(7, frames=frames, height=size, width=size, motion=motion, shapes=shapes)
            assert clip.frames.shape == (frames, size, size, 3) and clip.frames.dtype == torch.float32
            assert 0.0 <= clip.frames.min() and clip.frames.max() <= 1.0 and len(clip.shapes) == shapes
            again = random_clip(7, frames=frames, height=size, width=size, motion=motion, shapes=shapes)
            assert torch.equal(clip.frames, again.frames) and clip.prompt == again.prompt and clip.spec == again.spec
    assert not torch.equal(random_clip(7).frames, random_clip(8).frames)


def test_default_speed_is_the_training_range_and_shrinks_only_where_paths_would_not_fit():
    def speed(**size):
        return random_clip(5, **size).shapes[0].positions.diff(dim=0).norm(dim=-1)[0]

    assert DEFAULT_SPEED[0] <= speed(frames=8, height=32, width=32) <= DEFAULT_SPEED[1]
    assert DEFAULT_SPEED[0] <= speed(frames=16, height=64, width=64) <= DEFAULT_SPEED[1]
    fit = 0.75 * 32 / (DEFAULT_SPEED[1] * 15)  # 16 frames at full speed would cross 45 px of a 32 px frame
    assert DEFAULT_SPEED[0] * fit <= speed(frames=16, height=32, width=32) <= DEFAULT_SPEED[1] * fit


def test_prompts_name_colour_and_shape():
    spec = ClipSpec((ShapeSpec("circle", "red", (10, 10), 4), ShapeSpec("triangle", "orange", (22, 22), 4)))
    assert render_clip(spec).prompt == "a red circle and an orange triangle"
    for seed in range(20):
        clip = random_clip(seed, shapes=2)
        words = [shape.spec.words for shape in clip.shapes]
        assert clip.prompt == " and ".join(("an " if w[0] in "aeiou" else "a ") + w for w in words)
        assert all(s.spec.kind in SHAPES and s.spec.colour in COLOURS for s in clip.shapes)
        assert clip.shapes[0].spec.colour != clip.shapes[1].spec.colour


@pytest.mark.parametrize("kind", SHAPES)
def test_rendered_centroid_follows_the_stated_motion(kind):
    shape = ShapeSpec(kind, "blue", position=(9.3, 20.6), size=5.5, velocity=(2.35, -1.15))
    clip = render_clip(ClipSpec((shape,), frames=8, height=32, width=32))
    truth = clip.shapes[0]
    steps = torch.arange(8.0, dtype=torch.float64)[:, None]
    expected = torch.tensor([9.3, 20.6], dtype=torch.float64) + steps * torch.tensor([2.35, -1.15], dtype=torch.float64)
    assert torch.allclose(truth.positions, expected)
    measured = _centroids(_coverage_from_pixels(clip.frames, "blue"))
    assert (measured - expected).abs().max() < 0.05  # px, from the pixels alone
    area = _coverage_from_pixels(clip.frames, "blue").sum((-2, -1))
    assert torch.allclose(area.double(), torch.full((8,), shape.area(), dtype=torch.float64), rtol=0.01)


@pytest.mark.parametrize("kind", SHAPES)
def test_zoom_changes_the_area_by_the_square_of_the_stated_scale(kind):
    shape = ShapeSpec(kind, "yellow", position=(32.0, 32.0), size=6.0, zoom=1.07)
    clip = render_clip(ClipSpec((shape,), frames=16, height=64, width=64))
    scales = clip.shapes[0].scales
    assert torch.allclose(scales, 1.07 ** torch.arange(16, dtype=torch.float64))
    area = _coverage_from_pixels(clip.frames, "yellow").sum((-2, -1)).double()
    assert torch.allclose(area / area[0], scales**2, rtol=0.01)
    assert area[-1] / area[0] == pytest.approx(1.07 ** 30, rel=0.01)  # 7.6x: the zoom is not lost in rounding
    assert (_centroids(_coverage_from_pixels(clip.frames, "yellow")) - 32.0).abs().max() < 0.05


def test_two_shapes_each_follow_their_own_motion():
    clip = random_clip(3, shapes=2, frames=16, height=64, width=64)
    for truth in clip.shapes:
        measured = _centroids(truth.coverage)  # each shape's own coverage: they never overlap
        assert (measured - truth.positions).abs().max() < 0.05
        speed = truth.positions.diff(dim=0).norm(dim=-1)
        assert torch.allclose(speed, speed[0].expand(15)) and 1.5 <= speed[0] <= 3.0
    first, second = (truth.coverage > 0 for truth in clip.shapes)
    assert not (first & second).any()


def test_integer_pan_shifts_the_background_by_the_stated_vector_exactly():
    clip = render_clip(
        ClipSpec((), frames=8, height=32, width=32, pan=(2.0, -1.0), background="texture", texture_seed=5)
    )
    frames = clip.frames
    assert torch.allclose(clip.background_offsets[3], torch.tensor([6.0, -3.0], dtype=torch.float64))
    for t in range(1, 8):
        dx, dy = 2 * t, -1 * t
        # content moves by (dx, dy): frame t at (y, x) shows what frame 0 showed at (y - dy, x - dx)
        now = frames[t, max(0, dy) : 32 + min(0, dy), dx:]
        before = frames[0, max(0, -dy) : 32 - max(0, dy), : 32 - dx]
        assert torch.allclose(now, before, atol=1e-6)
    assert not torch.allclose(frames[1], frames[0], atol=0.01)  # the texture has structure to see the shift in


def test_fractional_pan_shift_is_recovered_from_the_pixels():
    pan = (0.6, 1.3)
    clip = render_clip(ClipSpec((), frames=4, height=64, width=64, pan=pan, background="texture", texture_seed=2))
    first, last = clip.frames[0], clip.frames[3]
    candidates = [(dx / 10, dy / 10) for dx in range(0, 41) for dy in range(0, 61)]
    errors = [_shift_error(first, last, shift) for shift in candidates]
    best = candidates[min(range(len(candidates)), key=errors.__getitem__)]
    assert best == pytest.approx((3 * pan[0], 3 * pan[1]), abs=0.11)


def _shift_error(first: torch.Tensor, last: torch.Tensor, shift: tuple[float, float]) -> float:
    """Mean squared difference, away from the borders, between `last` and `first` moved by `shift` (bilinear)."""
    height, width = first.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    grid = torch.stack([(xs - shift[0]) / width * 2 - 1, (ys - shift[1]) / height * 2 - 1], -1)[None]
    moved = F.grid_sample(first.movedim(-1, 0)[None], grid, mode="bilinear", align_corners=False)[0].movedim(0, -1)
    return float(((moved - last)[12:-12, 12:-12] ** 2).mean())


def test_pan_clips_move_shapes_with_the_world():
    clip = random_clip(11, motion="pan", frames=8, height=64, width=64)
    assert clip.spec.background == "texture"
    assert 1.5 <= math.hypot(*clip.pan) <= 3.0
    for truth in clip.shapes:
        assert truth.spec.velocity == clip.pan
        assert (_centroids(truth.coverage) - truth.positions).abs().max() < 0.05


def test_shapes_stay_inside_the_frame():
    for seed in range(30):
        clip = random_clip(seed, motion="translate" if seed % 2 else "zoom", frames=8, height=32, width=32)
        for truth in clip.shapes:
            cover = truth.coverage
            borders = torch.cat([cover[:, 0], cover[:, -1], cover[:, :, 0], cover[:, :, -1]], -1)
            assert borders.max() == 0.0, seed


def test_invalid_specs_say_what_is_wrong():
    with pytest.raises(ValueError, match="shape kind"):
        ShapeSpec("star", "red", (1, 1), 2)
    with pytest.raises(ValueError, match="colour"):
        ShapeSpec("circle", "mauve", (1, 1), 2)
    with pytest.raises(ValueError, match="texture"):
        ClipSpec((), pan=(1.0, 0.0))
    with pytest.raises(ValueError, match="cannot fit"):
        random_clip(0, frames=16, height=32, width=32, speed=(5.0, 6.0))
