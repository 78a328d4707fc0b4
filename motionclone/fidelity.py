"""Motion fidelity: how closely a generated clip's motion follows a reference clip's (docs/fidelity.md).

Both clips are resized to one working size, a grid of points is tracked through each with OpenCV's
pyramidal Lucas-Kanade tracker (forward-backward checked), and the frame-to-frame displacements of
the surviving tracks are compared:

- `motion_fidelity`: the score of Diffusion Motion Transfer (Yatim et al., CVPR 2024): for a pair of
  tracks, the mean over frame steps of the cosine between their displacements; each generated track is
  matched to its most similar reference track and the matches are averaged. The reverse direction and
  the symmetric average are reported too.
- `camera_fidelity`: the global (median) motion per frame step of each clip, compared by cosine, and
  the ratio of their mean magnitudes.
- `segmented_fidelity`: either score over overlapping segments of a long clip, each tracked with a fresh
  grid, averaged: tracks rarely survive 40+ frames, so the whole-clip score would measure track loss.

Pure numpy/torch + OpenCV (imported on first use, so the pack loads without it). Never imports ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import MotionCloneError

MIN_WORKING_SIDE = 128  # small clips are upscaled: Lucas-Kanade needs a few pixels of edge inside its window
MAX_WORKING_SIDE = 256  # large clips are downscaled: the score needs directions, not full resolution
GRID_SIZES = (4, 64)  # points along the long side, inclusive range
STILL_FRACTION = 1 / 512  # a step shorter than this fraction of the working long side is "no motion"
MIN_EIGENVALUE = 1e-3  # Lucas-Kanade drops points whose window has less structure (flat areas)
MODES = ("object tracks", "camera")


@dataclass(frozen=True)
class Tracks:
    """Grid tracks of one clip at the working size.

    `positions` `(N, F, 2)` float64 `(x, y)` in working pixels (continuous coordinates: pixel centres at
    +0.5) of the N tracks that survived every frame; `starts` `(G, 2)` the whole grid at frame 0 (N <= G);
    `size` the working `(height, width)`.
    """

    positions: np.ndarray
    starts: np.ndarray
    size: tuple[int, int]

    @property
    def still_length(self) -> float:
        """Step length (working px) below which a displacement counts as no motion."""
        return STILL_FRACTION * max(self.size)

    @property
    def displacements(self) -> np.ndarray:
        """`(N, F-1, 2)` frame-to-frame displacements."""
        return np.diff(self.positions, axis=1)

    @property
    def count(self) -> int:
        return int(self.positions.shape[0])


@dataclass(frozen=True)
class FidelityResult:
    """`score`: mean over generated tracks of the best match among reference tracks (DMT's score);
    `reverse`: the same from the reference side; `symmetric`: their average. All in [-1, 1]."""

    score: float
    reverse: float
    symmetric: float
    reference: Tracks
    generated: Tracks

    def describe(self) -> str:
        return (f"motion fidelity {self.score:.3f} (generated -> reference; reverse {self.reverse:.3f}, symmetric "
                f"{self.symmetric:.3f}); tracks: reference {self.reference.count}/{len(self.reference.starts)}, "
                f"generated {self.generated.count}/{len(self.generated.starts)}")


@dataclass(frozen=True)
class CameraResult:
    """`cosine` between the two global-motion sequences (in [-1, 1]), `magnitude_ratio` = generated mean
    speed / reference mean speed; `reference_motion`, `generated_motion` `(F-1, 2)` per frame step, in
    pixels of the reference clip (the generated clip's motion as if it had the reference's size)."""

    cosine: float
    magnitude_ratio: float
    reference_motion: np.ndarray
    generated_motion: np.ndarray
    reference: Tracks
    generated: Tracks

    def describe(self) -> str:
        ref, gen = (np.linalg.norm(m, axis=-1).mean() for m in (self.reference_motion, self.generated_motion))
        return (f"camera motion cosine {self.cosine:.3f}, magnitude ratio {self.magnitude_ratio:.3f} (generated "
                f"{gen:.2f} / reference {ref:.2f} px per frame); tracks: reference {self.reference.count}, "
                f"generated {self.generated.count}")


def working_size(reference: torch.Tensor) -> tuple[int, int]:
    """`(height, width)` both clips are tracked at: the reference's aspect ratio, long side clamped
    to [MIN_WORKING_SIDE, MAX_WORKING_SIDE]."""
    height, width = int(reference.shape[1]), int(reference.shape[2])
    long_side = max(height, width)
    target = min(max(long_side, MIN_WORKING_SIDE), MAX_WORKING_SIDE)
    scale = target / long_side
    return max(8, round(height * scale)), max(8, round(width * scale))


def track_grid(frames: torch.Tensor, grid_size: int = 16, size: tuple[int, int] | None = None) -> Tracks:
    """Track a grid through `frames` `(F, H, W, C)` in [0, 1], resized to `size` `(height, width)`.

    The grid has `grid_size` points along the long side (cell centres, same spacing on the short side).
    Each frame step tracks the surviving points forward and back; a point is lost when Lucas-Kanade
    reports failure (too little structure in its window, see MIN_EIGENVALUE), leaves the frame, or comes
    back more than `max(0.5, spacing / 4)` px from where it started. A lost point is dropped from the clip.
    """
    cv2 = _cv2()
    size = size or working_size(frames)
    images = _to_uint8(frames, size)
    height, width = size
    long_side = max(height, width)
    spacing = long_side / grid_size
    columns, rows = max(1, round(width / spacing)), max(1, round(height / spacing))
    xs, ys = (np.arange(columns) + 0.5) * width / columns, (np.arange(rows) + 0.5) * height / rows
    # OpenCV puts pixel centres at integers; our grid is in continuous coordinates (centres at +0.5).
    starts = np.stack(np.meshgrid(xs - 0.5, ys - 0.5), -1).reshape(-1, 2)
    window = 2 * int(np.clip(long_side / 16, 4, 15)) + 1
    levels = int(np.clip(math.floor(math.log2(min(height, width) / 32)), 0, 3))  # coarsest level >= 32 px
    params = dict(winSize=(window, window), maxLevel=levels, minEigThreshold=MIN_EIGENVALUE,
                  criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01))
    backtrack_limit = max(0.5, spacing / 4)
    alive = np.arange(len(starts))
    path = [starts.astype(np.float32)]
    for previous, current in zip(images[:-1], images[1:]):
        points = path[-1][alive].reshape(-1, 1, 2)
        if len(points) == 0:
            path.append(path[-1].copy())
            continue
        forward, status, _ = cv2.calcOpticalFlowPyrLK(previous, current, points, None, **params)
        back, back_status, _ = cv2.calcOpticalFlowPyrLK(current, previous, forward, None, **params)
        forward, back = forward.reshape(-1, 2), back.reshape(-1, 2)
        inside = ((forward[:, 0] >= 0) & (forward[:, 0] <= width - 1)
                  & (forward[:, 1] >= 0) & (forward[:, 1] <= height - 1))
        consistent = np.linalg.norm(back - points.reshape(-1, 2), axis=1) <= backtrack_limit
        keep = status.ravel().astype(bool) & back_status.ravel().astype(bool) & inside & consistent
        step = path[-1].copy()
        step[alive[keep]] = forward[keep]
        path.append(step)
        alive = alive[keep]
    positions = np.stack(path, 1)[alive].astype(np.float64) + 0.5
    return Tracks(positions, starts + 0.5, (height, width))


def motion_fidelity(reference: torch.Tensor, generated: torch.Tensor, grid_size: int = 16) -> FidelityResult:
    """DMT's motion-fidelity score of `generated` against `reference`, both `(F, H, W, C)` in [0, 1].

    Per track pair and frame step: the cosine between the two displacements; when both are shorter than
    `Tracks.still_length` the step counts 1 (both still agree), when only one is, 0 (no direction to
    compare). The pair's similarity is the mean over steps.
    """
    reference_tracks, generated_tracks = _track_both(reference, generated, grid_size)
    similarity = track_similarity(generated_tracks, reference_tracks)  # (generated, reference)
    score = float(similarity.max(axis=1).mean())
    reverse = float(similarity.max(axis=0).mean())
    return FidelityResult(score, reverse, (score + reverse) / 2, reference_tracks, generated_tracks)


def track_similarity(a: Tracks, b: Tracks) -> np.ndarray:
    """`(Na, Nb)` mean over frame steps of the displacement cosine (still steps as in `motion_fidelity`)."""
    units_a, still_a = _unit_steps(a)
    units_b, still_b = _unit_steps(b)
    steps = units_a.shape[1]
    dots = units_a.reshape(len(units_a), -1) @ units_b.reshape(len(units_b), -1).T
    both_still = still_a.astype(np.float64) @ still_b.astype(np.float64).T
    return (dots + both_still) / steps


def camera_fidelity(reference: torch.Tensor, generated: torch.Tensor, grid_size: int = 16) -> CameraResult:
    """Compare the global motion of two clips `(F, H, W, C)`: per frame step, the median displacement
    of all surviving tracks (robust to a moving subject covering less than half the points).

    `cosine` is the cosine between the two sequences flattened to vectors of `2 (F-1)` numbers (1 when
    both are still, 0 when only one is); `magnitude_ratio` the generated mean step length over the
    reference's (1 when both are still, inf when only the reference is).
    """
    reference_tracks, generated_tracks = _track_both(reference, generated, grid_size)
    pixels_per_working_px = max(reference.shape[1:3]) / max(reference_tracks.size)
    ref_motion, gen_motion = (global_motion(t) * pixels_per_working_px for t in (reference_tracks, generated_tracks))
    still = reference_tracks.still_length * pixels_per_working_px
    ref_speed, gen_speed = (float(np.linalg.norm(m, axis=-1).mean()) for m in (ref_motion, gen_motion))
    ref_still, gen_still = ref_speed < still, gen_speed < still
    if ref_still or gen_still:
        cosine = 1.0 if ref_still and gen_still else 0.0
    else:
        cosine = float((ref_motion * gen_motion).sum() / (np.linalg.norm(ref_motion) * np.linalg.norm(gen_motion)))
    if ref_still:
        ratio = 1.0 if gen_still else math.inf
    else:
        ratio = gen_speed / ref_speed
    return CameraResult(cosine, ratio, ref_motion, gen_motion, reference_tracks, generated_tracks)


@dataclass(frozen=True)
class SegmentedResult:
    """`score`: the mean of `scores`, one per segment `(start, stop)` of `segments` (frames start..stop-1),
    each the segment's `motion_fidelity` score or `camera_fidelity` cosine; `first` the full result of
    `first_segment`, the first segment tracked in both clips (its tracks are what the node plots)."""

    score: float
    segments: tuple[tuple[int, int], ...]
    scores: tuple[float, ...]
    first: FidelityResult | CameraResult
    first_segment: tuple[int, int]

    def describe(self) -> str:
        parts = ", ".join(
            f"{start}-{stop - 1}: {score:.3f}" for (start, stop), score in zip(self.segments, self.scores)
        )
        return (f"mean over {len(self.segments)} segments of {self.segments[0][1] - self.segments[0][0]} frames "
                f"{self.score:.3f} (frames {parts}); first tracked segment: {self.first.describe()}")


def segments_of(frames: int, length: int) -> list[tuple[int, int]]:
    """`(start, stop)` of overlapping segments of `length` frames covering `frames` frames: stride
    `length // 2`, the last one ending at the last frame; `[(0, frames)]` when `frames <= length`."""
    if frames <= length:
        return [(0, frames)]
    stride = max(1, length // 2)
    starts = list(range(0, frames - length + 1, stride))
    if starts[-1] + length < frames:
        starts.append(frames - length)
    return [(start, start + length) for start in starts]


def segmented_fidelity(reference: torch.Tensor, generated: torch.Tensor, segment_frames: int, grid_size: int = 16,
                       mode: str = MODES[0]) -> SegmentedResult:
    """`mode`'s score ("object tracks": DMT's `motion_fidelity`, "camera": `camera_fidelity`'s cosine) of
    each segment of `segments_of(F, segment_frames)` of two clips `(F, H, W, C)`, and their mean.

    Every segment places a new grid on its first frame, so a track lost in one segment is re-acquired in
    the next. A segment of `generated` in which no point survives scores 0 (nothing there follows the
    reference); one of `reference` in which none survives stops with an error naming its frames.
    """
    reference, generated = _check_clip(reference, "reference"), _check_clip(generated, "generated")
    if mode not in MODES:
        raise MotionCloneError(f"'mode' must be one of {', '.join(MODES)}, got {mode!r}.")
    if segment_frames < 2:
        raise MotionCloneError(f"'segment_frames' must be at least 2 (motion needs two frames), got {segment_frames}. "
                               "Use 0 to score the whole clip at once, or e.g. 16 for a long clip.")
    if not GRID_SIZES[0] <= grid_size <= GRID_SIZES[1]:
        raise MotionCloneError(f"'grid_size' must be between {GRID_SIZES[0]} and {GRID_SIZES[1]}, got {grid_size}.")
    _check_same_frames(reference, generated)
    score_of = motion_fidelity if mode == MODES[0] else camera_fidelity
    segments = segments_of(int(reference.shape[0]), segment_frames)
    scores, first, first_segment = [], None, None
    for start, stop in segments:
        try:
            result = score_of(reference[start:stop], generated[start:stop], grid_size)
        except MotionCloneError:
            if track_grid(reference[start:stop], grid_size, working_size(reference)).count == 0:
                raise MotionCloneError(
                    f"No point of 'reference' could be tracked through frames {start}-{stop - 1} (flat or noise-only "
                    "frames, or content that changes completely between frames). Check the clip, or raise grid_size."
                ) from None
            scores.append(0.0)
            continue
        if first is None:
            first, first_segment = result, (start, stop)
        scores.append(float(result.score if mode == MODES[0] else result.cosine))
    if first is None:
        raise MotionCloneError(
            f"No point of 'generated' could be tracked through any segment of {segment_frames} frames (flat or "
            "noise-only frames). Check the clip, or raise grid_size to try more points.")
    return SegmentedResult(float(np.mean(scores)), tuple(segments), tuple(scores), first, first_segment)


def global_motion(tracks: Tracks) -> np.ndarray:
    """`(F-1, 2)` median displacement per frame step over all tracks."""
    return np.median(tracks.displacements, axis=0)


def plot_tracks(reference: torch.Tensor, generated: torch.Tensor, reference_tracks: Tracks,
                generated_tracks: Tracks, panel_side: int = 384) -> torch.Tensor:
    """`(1, H, 2W + gap, 3)` float32 in [0, 1]: each clip's first frame (dimmed) with its tracks drawn as
    polylines ending in a dot, reference left, generated right. A track's colour is the direction of its
    overall motion (hue wheel: right red, down yellow-green, left cyan, up violet), so the same motion
    has the same colour in both panels; still tracks are grey dots."""
    cv2 = _cv2()
    height, width = reference_tracks.size
    scale = panel_side / max(height, width)
    panel_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    panels = []
    for frames, tracks, label in (
        (reference, reference_tracks, "reference"), (generated, generated_tracks, "generated"),
    ):
        canvas = (_to_uint8(frames[:1], panel_size)[0].astype(np.float32) * 0.45).astype(np.uint8)
        canvas = np.ascontiguousarray(canvas)
        for track in tracks.positions:
            points = np.round(track * scale * 16).astype(np.int32)  # 4 fractional bits for sub-pixel drawing
            motion = track[-1] - track[0]
            if np.linalg.norm(np.diff(track, axis=0), axis=1).max() < tracks.still_length:
                cv2.circle(canvas, tuple(int(v) for v in points[-1]), 16 * 2, (150, 150, 150), -1, cv2.LINE_AA, 4)
                continue
            colour = _direction_colour(motion)
            cv2.polylines(canvas, [points.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA, 4)
            cv2.circle(canvas, tuple(int(v) for v in points[-1]), 16 * 3, colour, -1, cv2.LINE_AA, 4)
        cv2.putText(canvas, f"{label} ({tracks.count} tracks)", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                    (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(canvas)
    gap = np.full((panel_size[0], 8, 3), 255, np.uint8)
    image = np.concatenate([panels[0], gap, panels[1]], axis=1)
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None]


def _direction_colour(motion: np.ndarray) -> tuple[int, int, int]:
    cv2 = _cv2()
    hue = int(round((math.degrees(math.atan2(motion[1], motion[0])) % 360) / 2))  # OpenCV hue is 0-179
    rgb = cv2.cvtColor(np.array([[[hue, 255, 255]]], np.uint8), cv2.COLOR_HSV2RGB)[0, 0]
    return tuple(int(c) for c in rgb)


def _unit_steps(tracks: Tracks) -> tuple[np.ndarray, np.ndarray]:
    """`(N, F-1, 2)` unit displacements (zero where still) and `(N, F-1)` still flags."""
    steps = tracks.displacements
    lengths = np.linalg.norm(steps, axis=-1)
    still = lengths < tracks.still_length
    units = np.where(still[..., None], 0.0, steps / np.maximum(lengths, 1e-12)[..., None])
    return units, still


def _track_both(reference: torch.Tensor, generated: torch.Tensor, grid_size: int) -> tuple[Tracks, Tracks]:
    reference, generated = _check_clip(reference, "reference"), _check_clip(generated, "generated")
    _check_same_frames(reference, generated)
    if not GRID_SIZES[0] <= grid_size <= GRID_SIZES[1]:
        raise MotionCloneError(f"'grid_size' must be between {GRID_SIZES[0]} and {GRID_SIZES[1]}, got {grid_size}.")
    size = working_size(reference)
    tracks = []
    for clip, name in ((reference, "reference"), (generated, "generated")):
        found = track_grid(clip, grid_size, size)
        if found.count == 0:
            raise MotionCloneError(
                f"No point of '{name}' could be tracked through all {clip.shape[0]} frames (flat or "
                "noise-only frames, or content that changes completely between frames). Check the clip, or "
                "raise grid_size to try more points.")
        tracks.append(found)
    return tracks[0], tracks[1]


def _check_same_frames(reference: torch.Tensor, generated: torch.Tensor) -> None:
    if reference.shape[0] != generated.shape[0]:
        raise MotionCloneError(
            f"'reference' has {reference.shape[0]} frames but 'generated' has {generated.shape[0]}. "
            "Motion is compared frame step by frame step: give both the same frame count, e.g. take the first "
            f"{min(reference.shape[0], generated.shape[0])} frames of the longer one with the stock "
            "'ImageFromBatch' node.")


def _check_clip(clip, name: str) -> torch.Tensor:
    if not isinstance(clip, torch.Tensor):
        clip = torch.as_tensor(np.asarray(clip))
    if clip.ndim != 4 or clip.shape[-1] not in (1, 3, 4):
        raise MotionCloneError(f"'{name}' must be an IMAGE batch (frames, height, width, 3), got shape "
                               f"{tuple(clip.shape)}. Connect the frames of a video (e.g. from a video loader).")
    if clip.shape[0] < 2:
        raise MotionCloneError(f"'{name}' has {clip.shape[0]} frame(s); motion needs at least 2. Connect the whole "
                               "clip (the batch is the frame axis), not a single image.")
    return clip


def _to_uint8(frames: torch.Tensor, size: tuple[int, int]) -> list[np.ndarray]:
    """Frames `(F, H, W, C)` in [0, 1] -> list of `(height, width, 3)` uint8 RGB at `size`."""
    cv2 = _cv2()
    pixels = frames.detach().float().cpu().clamp(0, 1).numpy()
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    pixels = np.round(pixels[..., :3] * 255).astype(np.uint8)
    height, width = size
    shrinking = height * width < pixels.shape[1] * pixels.shape[2]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    return [np.ascontiguousarray(cv2.resize(frame, (width, height), interpolation=interpolation)) for frame in pixels]


def _cv2():
    try:
        import cv2
    except ImportError as error:
        raise MotionCloneError(
            "Motion fidelity needs OpenCV, which is not installed in ComfyUI's Python. Install it with "
            "`python -m pip install opencv-python-headless` (the pack's requirements.txt lists it), "
            "then restart ComfyUI."
        ) from error
    return cv2
