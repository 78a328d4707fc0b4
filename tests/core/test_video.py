"""Reference-clip resizing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from motionclone import MotionCloneError, resize_frames


def _clip() -> torch.Tensor:
    return torch.rand(3, 96, 160, 3, generator=torch.Generator().manual_seed(0))


def test_stretch_is_the_official_bilinear_resize():
    clip = _clip()
    expected = F.interpolate(clip.permute(0, 3, 1, 2), size=(64, 128), mode="bilinear", align_corners=True).permute(0, 2, 3, 1)
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


@pytest.mark.parametrize("width, height, mode", [(100, 64, "stretch"), (64, 0, "crop"), (64, 64, "pad")])
def test_invalid_requests_are_refused(width, height, mode):
    with pytest.raises(MotionCloneError):
        resize_frames(_clip(), width, height, mode)
