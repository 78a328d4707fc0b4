"""Context windows: a clip longer than one motion-module window, processed as overlapping windows.

A motion module attends over the frames of one forward, and was trained on clips of a fixed length
(AnimateDiff: 16 frames; its positional encoding holds 24 (v1) or 32 (v2/v3)). A longer clip is split
into windows of `length` frames; every forward (and every gradient pass of motion guidance) runs on one
window at a time, and the per-window outputs are blended back into the whole clip, frame by frame, with
weights that favour the middle of each window (docs/algorithm.md, "Long videos: context windows").

Schedules (both keep every window at full `length`, so each forward sees the frame count it expects):
- `uniform`: windows start at 0 and step by `length - overlap`; the last one is shifted back to end at
  the last frame (so it may overlap its neighbour by more than `overlap`). The ends of the clip are not
  joined: for a clip with a start and an end.
- `looped`: windows start at 0, step by `length - overlap`, and wrap around the end of the clip back to
  frame 0: `ceil(frames / (length - overlap))` windows, so the last one wraps and overlaps window 0 by at
  least `overlap` frames. The last frame and frame 0 are then blended like neighbours: for videos that
  loop seamlessly.

When `frames <= length` there is a single window: the whole clip, with no fusion at all, so the result
is the window-free one, bit for bit.

Pure torch; never imports ComfyUI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import MotionCloneError

SCHEDULES = ("uniform", "looped")
FUSIONS = ("pyramid", "flat")
TRAINED_LENGTH = 16  # AnimateDiff's motion modules were trained on 16-frame clips


@dataclass(frozen=True)
class ContextWindows:
    """How a clip is split into windows (`length`, `overlap`, `schedule`) and blended back (`fusion`)."""

    length: int = TRAINED_LENGTH
    overlap: int = 4
    schedule: str = "uniform"
    fusion: str = "pyramid"

    def __post_init__(self):
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 2:
            raise MotionCloneError(
                f"The context window length must be an integer of at least 2 frames, got {self.length!r}."
            )
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or not 0 <= self.overlap < self.length:
            raise MotionCloneError(
                f"The context overlap must be an integer in 0..{self.length - 1} (less than the window length "
                f"{self.length}), got {self.overlap!r}. Lower 'overlap' or raise 'length'.")
        if self.schedule not in SCHEDULES:
            raise MotionCloneError(f"Unknown context schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}.")
        if self.fusion not in FUSIONS:
            raise MotionCloneError(f"Unknown context fusion {self.fusion!r}; choose one of {', '.join(FUSIONS)}.")

    @property
    def stride(self) -> int:
        return self.length - self.overlap

    def windows_for(self, frames: int) -> list[torch.Tensor]:
        """The windows of a clip of `frames` frames: int64 frame-index tensors, each of `min(length, frames)`
        frames (one window `0..frames-1` when `frames <= length`)."""
        return [torch.tensor(window, dtype=torch.int64) for window in self.index_lists(frames)]

    def index_lists(self, frames: int) -> list[tuple[int, ...]]:
        """`windows_for` as tuples of frame indices (what a MOTION's window layout is compared by)."""
        if frames < 1:
            raise MotionCloneError(f"A clip needs at least one frame, got {frames}.")
        if frames <= self.length:
            return [tuple(range(frames))]
        if self.schedule == "looped":
            # Enough windows for the last one to wrap past the end and overlap window 0 by at least `overlap`.
            count = -(-frames // self.stride)
            return [tuple((start + i) % frames for i in range(self.length))
                    for start in range(0, count * self.stride, self.stride)]
        starts = []
        start = 0
        while start + self.length < frames:
            starts.append(start)
            start += self.stride
        starts.append(frames - self.length)
        return [tuple(range(s, s + self.length)) for s in starts]

    def describe(self) -> str:
        return f"windows of {self.length} frames, overlap {self.overlap}, {self.schedule}, {self.fusion} fusion"


def fusion_weights(length: int, fusion: str) -> torch.Tensor:
    """`(length,)` float32 per-frame weights of one window's output.

    `flat`: all 1. `pyramid`: `min(i + 1, length - i)` for frame i of the window, a triangle peaking in the
    middle (1, 2, ..., 2, 1), never 0 at the ends: every frame keeps some weight, so a frame at the clip's
    edge that lies in one window only is that window's output unchanged (after dividing by its own weight).
    """
    if fusion == "flat":
        return torch.ones(length, dtype=torch.float32)
    if fusion == "pyramid":
        position = torch.arange(length, dtype=torch.float32)
        return torch.minimum(position + 1, length - position)
    raise MotionCloneError(f"Unknown context fusion {fusion!r}; choose one of {', '.join(FUSIONS)}.")


def fuse(outputs: list[torch.Tensor], windows: list[torch.Tensor], frames: int, fusion: str) -> torch.Tensor:
    """Per-frame weighted average of per-window outputs.

    Args:
        outputs: one `(W, ...)` tensor per window (same trailing shape and dtype), row r belonging to
            frame `windows[k][r]` of the clip.
        windows: int64 frame-index tensors of `ContextWindows.windows_for(frames)`; together they cover
            every frame.
        frames: the clip's frame count F.

    Returns:
        `(F, ...)`: for every frame, `sum_k w_k * out_k / sum_k w_k` over the windows k that hold it, with
        `w_k = fusion_weights(W, fusion)` at the frame's position in window k. Computed in float32 (or
        float64 for float64 outputs) and returned in the outputs' dtype.
    """
    if len(outputs) != len(windows) or not outputs:
        raise MotionCloneError(f"Got {len(outputs)} window outputs for {len(windows)} windows.")
    first = outputs[0]
    work = torch.float64 if first.dtype == torch.float64 else torch.float32
    total = torch.zeros((frames, *first.shape[1:]), dtype=work, device=first.device)
    weight_sum = torch.zeros(frames, dtype=work, device=first.device)
    for output, window in zip(outputs, windows):
        weights = fusion_weights(len(window), fusion).to(device=first.device, dtype=work)
        index = window.to(first.device)
        total.index_add_(0, index, output.to(work) * weights.reshape(-1, *([1] * (output.dim() - 1))))
        weight_sum.index_add_(0, index, weights)
    if bool((weight_sum == 0).any()):
        missing = int(torch.nonzero(weight_sum == 0)[0])
        raise MotionCloneError(f"Frame {missing} of {frames} lies in no window; the windows do not cover the clip.")
    return (total / weight_sum.reshape(-1, *([1] * (first.dim() - 1)))).to(first.dtype)


def overlap_regions(windows: list[tuple[int, ...]] | list[torch.Tensor]) -> list[tuple[int, ...]]:
    """The frames shared by each pair of consecutive windows (in window order, the last with the first
    for a looped layout whose last window wraps), as sorted frame tuples; empty pairs are left out."""
    lists = [tuple(int(i) for i in w) for w in windows]
    pairs = list(zip(lists[:-1], lists[1:]))
    if len(lists) > 2 and any(b < a for a, b in zip(lists[-1][:-1], lists[-1][1:])):
        pairs.append((lists[-1], lists[0]))
    regions = [tuple(sorted(set(a) & set(b))) for a, b in pairs]
    return [r for r in regions if r]
