"""Reference-clip preprocessing: pick the frames whose motion is cloned, and resize them to the generation size."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import MotionCloneError
from .validation import require_finite_number

RESIZE_MODES = ("stretch", "crop")
FRAME_SELECTION_MODES = ("span", "fps", "whole clip")
_ROUNDING_SLACK = 1e-6  # in source frames: keeps 7.5 from becoming 7.4999999 through float error
# The limits of Select Frames' inputs (the node declares them from here): a suggested fix never leaves them.
SECONDS_STEP = 0.01  # the step of every seconds and fps input, and the least span_seconds, fps and target_fps
MAX_FPS = 1000.0  # the most fps and target_fps
MAX_SPAN_SECONDS = 3600.0
MAX_START_SECONDS = 36000.0


@dataclass(frozen=True)
class FrameSelection:
    """Which source frames to keep, and the frame rate the kept frames play at to keep the clip's real speed."""

    indices: tuple[int, ...]
    fps: float  # frames / span_seconds
    span_seconds: float  # the stretch of the clip the frames cover, from start_seconds

    @property
    def repeated(self) -> int:
        """How many kept frames repeat the previous one (the selection is denser than the clip's frames)."""
        return sum(a == b for a, b in zip(self.indices, self.indices[1:]))


def select_frames(clip_frames: int, clip_fps: float, frames: int, mode: str, *, span_seconds: float = 2.0,
                  target_fps: float = 8.0, start_seconds: float = 0.0) -> FrameSelection:
    """The `frames` source frames, evenly spaced in time, that stand for a stretch of a clip.

    Source frame `k` of a clip of `clip_frames` frames at `clip_fps` shows at `k / clip_fps` seconds. The
    selection samples `span` seconds from `start_seconds` at a step of `span / frames`: kept frame `i` is
    the source frame nearest to `start_seconds + i * span / frames` (a tie goes to the later frame). Played
    at `frames / span` fps, the kept frames move at the clip's real speed. `span` is, by mode:

    - `span`: `span_seconds`;
    - `fps`: `frames / target_fps`, i.e. the clip re-timed to `target_fps`;
    - `whole clip`: the rest of the clip from `start_seconds` (`clip_frames / clip_fps - start_seconds`).

    A step shorter than the clip's frame interval repeats source frames (see `FrameSelection.repeated`).
    A selection that would need frames past the clip's end is refused with the longest span, the most
    frames or the lowest fps that fit; frames are never invented past the end.
    """
    if mode not in FRAME_SELECTION_MODES:
        raise MotionCloneError(f"mode must be one of {FRAME_SELECTION_MODES}, got '{mode}'.")
    for value, name in ((clip_fps, "fps"), (span_seconds, "span_seconds"), (target_fps, "target_fps"),
                        (start_seconds, "start_seconds")):
        require_finite_number(value, name)
    if clip_frames < 1:
        raise MotionCloneError("'images' holds no frames; connect the frames of the reference clip.")
    if not clip_fps > 0:
        raise MotionCloneError(f"'fps' must be the clip's frame rate (above 0), got {clip_fps}; wire it from "
                               "Get Video Components' fps output.")
    if frames < 1:
        raise MotionCloneError(f"'frames' must be at least 1, got {frames}.")
    duration = clip_frames / clip_fps
    clip = f"the clip has {clip_frames} frames at {clip_fps:g} fps ({duration:.2f} s)"
    if start_seconds < 0 or _nearest_frame(start_seconds * clip_fps) >= clip_frames:
        raise MotionCloneError(f"'start_seconds' ({start_seconds:g} s) must lie inside the clip, but {clip}; "
                               f"use a start of at most {_floor_to_step((clip_frames - 1) / clip_fps):.2f} s.")
    if mode == "span":
        if not span_seconds > 0:
            raise MotionCloneError(f"'span_seconds' must be above 0, got {span_seconds}.")
        span = span_seconds
    elif mode == "fps":
        if not target_fps > 0:
            raise MotionCloneError(f"'target_fps' must be above 0, got {target_fps}.")
        span = frames / target_fps
    else:
        span = duration - start_seconds
    indices = _evenly_spaced(frames, span, clip_fps, start_seconds)
    if mode == "whole clip":  # many more frames than the clip has can round the last one past the end
        indices = tuple(min(index, clip_frames - 1) for index in indices)
    if indices[-1] >= clip_frames:
        raise MotionCloneError(_too_short_message(mode, clip, clip_frames, clip_fps, frames, span, start_seconds))
    return FrameSelection(indices=indices, fps=frames / span, span_seconds=span)


def _nearest_frame(position: float) -> int:
    return math.floor(position + 0.5 + _ROUNDING_SLACK)


def _evenly_spaced(frames: int, span: float, clip_fps: float, start_seconds: float) -> tuple[int, ...]:
    return tuple(_nearest_frame((start_seconds + i * span / frames) * clip_fps) for i in range(frames))


def _floor_to_step(seconds: float) -> float:
    """`seconds` rounded down to the inputs' step: a suggested limit that still holds after typing it."""
    return math.floor(seconds / SECONDS_STEP + _ROUNDING_SLACK) * SECONDS_STEP


def _too_short_message(mode: str, clip: str, clip_frames: int, clip_fps: float, frames: int, span: float,
                       start_seconds: float) -> str:
    last_time = start_seconds + (frames - 1) * span / frames
    start = f" from {start_seconds:g} s" if start_seconds else ""
    fixes = []
    # The last kept frame sits at start + span * (frames - 1) / frames: the longest span puts it on the last frame.
    longest = ((clip_frames - 1) / clip_fps - start_seconds) * frames / (frames - 1)
    if mode == "span":
        if _floor_to_step(longest) >= SECONDS_STEP:  # a very short clip fits no span the input accepts
            fixes.append(f"lower 'span_seconds' to at most {_floor_to_step(longest):.2f}")
    else:  # fps mode: the step is fixed, so fewer frames fit too
        fitting_frames = 0
        while _nearest_frame((start_seconds + fitting_frames * span / frames) * clip_fps) < clip_frames:
            fitting_frames += 1
        lowest_fps = math.ceil(frames / longest / SECONDS_STEP - _ROUNDING_SLACK) * SECONDS_STEP
        if lowest_fps <= MAX_FPS:
            fixes.append(f"raise 'target_fps' to at least {lowest_fps:.2f}")
        fixes.append(f"lower 'frames' to at most {fitting_frames}")
    if start_seconds > 0:
        fixes.append("start earlier ('start_seconds')")
    fixes.append("use mode 'whole clip' (the frames spread over the clip, whatever its length)")
    return (f"The clip is too short for this selection: {frames} frames over {span:.2f} s{start} need the clip up to "
            f"{last_time:.2f} s, but {clip}. To fix it, {', '.join(fixes[:-1])}{', or ' if len(fixes) > 1 else ''}"
            f"{fixes[-1]}.")


def resize_frames(frames: torch.Tensor, width: int, height: int, mode: str) -> torch.Tensor:
    """Resize `(F, H, W, C)` frames in [0, 1] to `(F, height, width, C)`.

    `stretch` is the official preprocessing (bilinear, `align_corners=True`, aspect ratio not kept);
    `crop` first cuts the centre to the target aspect ratio, then resizes the same way.
    """
    if mode not in RESIZE_MODES:
        raise MotionCloneError(f"resize mode must be one of {RESIZE_MODES}, got '{mode}'.")
    if width % 8 or height % 8 or width <= 0 or height <= 0:
        raise MotionCloneError(
            f"width and height must be positive multiples of 8 (the VAE's factor), got {width}x{height}."
        )
    if mode == "crop":
        frames = _center_crop_to_aspect(frames, width / height)
    if frames.shape[1:3] == (height, width):
        return frames
    pixels = frames.movedim(-1, 1)
    resized = F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=True)
    return resized.movedim(1, -1).clamp(0.0, 1.0)


def _center_crop_to_aspect(frames: torch.Tensor, aspect: float) -> torch.Tensor:
    _, h, w, _ = frames.shape
    if w / h > aspect:  # too wide: cut the sides
        new_w = max(1, round(h * aspect))
        left = (w - new_w) // 2
        return frames[:, :, left : left + new_w]
    new_h = max(1, round(w / aspect))
    top = (h - new_h) // 2
    return frames[:, top : top + new_h]
