"""Reference-clip preprocessing (spec §2): resize frames to the generation size."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import MotionCloneError

RESIZE_MODES = ("stretch", "crop")


def resize_frames(frames: torch.Tensor, width: int, height: int, mode: str) -> torch.Tensor:
    """Resize `(F, H, W, C)` frames in [0, 1] to `(F, height, width, C)`.

    `stretch` is the official preprocessing (bilinear, `align_corners=True`, aspect ratio not kept);
    `crop` first cuts the centre to the target aspect ratio, then resizes the same way.
    """
    if mode not in RESIZE_MODES:
        raise MotionCloneError(f"resize mode must be one of {RESIZE_MODES}, got '{mode}'.")
    if width % 8 or height % 8 or width <= 0 or height <= 0:
        raise MotionCloneError(f"width and height must be positive multiples of 8 (the VAE's factor), got {width}x{height}.")
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
