"""Subject masks (docs/algorithm.md §5): OpenCV parity of the blur, edge cases, and an independent official pipeline."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motionclone.errors import MotionCloneError
from motionclone.masks import (
    binary_mask,
    centroid_gaussian,
    gaussian_blur,
    gaussian_kernel_1d,
    generated_subject_weights,
    normalise_per_frame,
    reference_subject_weights,
    subject_attention,
    upsample_weights,
)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- Gaussian kernel and blur ------------------------------------------------------------------------------


@pytest.mark.parametrize("size, sigma", [(1, 1.0), (3, 0.5), (5, 1.0), (7, 2.5), (9, 1.3), (15, 4.0)])
def test_kernel_equals_opencv(size, sigma):
    expected = cv2.getGaussianKernel(size, sigma)[:, 0]
    kernel = gaussian_kernel_1d(size, sigma)
    assert kernel.dtype == torch.float64 and kernel.shape == (size,)
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("size, sigma", [(3, 0.8), (5, 1.0), (7, 2.0), (9, 3.0), (11, 1.5), (23, 5.0)])
def test_blur_equals_opencv_reflect_101_including_the_borders(size, sigma):
    images = torch.rand(3, 12, 17, generator=_generator(size))
    images[1] = 0
    images[1, 0, 0] = images[1, 11, 16] = images[1, 5, 0] = 1  # content on the corners and edges
    images[2] = (images[2] > 0.7).float()  # a binary mask, what the pack blurs
    blurred = gaussian_blur(images, size, sigma)
    assert blurred.dtype == torch.float32 and blurred.shape == images.shape
    for frame, result in zip(images, blurred):
        expected = cv2.GaussianBlur(frame.numpy(), (size, size), sigma, borderType=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-6)


def test_blur_keeps_the_mass_of_content_away_from_the_borders():
    masks = torch.zeros(2, 20, 20, dtype=torch.float64)
    masks[0, 7:12, 8:11] = 1
    masks[1, 9, 9] = 1
    blurred = gaussian_blur(masks, 7, 1.5)
    torch.testing.assert_close(blurred.sum(dim=(1, 2)), masks.sum(dim=(1, 2)), atol=1e-5, rtol=0)
    assert blurred[1, 9, 9] < 1 and blurred[1, 9, 10] > 0  # it really spreads


def test_kernel_size_one_is_the_identity_whatever_the_sigma():
    masks = torch.rand(2, 4, 5, generator=_generator(0))
    assert torch.equal(gaussian_blur(masks, 1, 0.0), masks)


def test_blur_refuses_what_it_cannot_do():
    masks = torch.rand(2, 4, 6)
    assert gaussian_blur(masks, 7, 1.0).shape == masks.shape  # 2 * 4 - 1 = 7 still fits
    with pytest.raises(MotionCloneError, match="kernel_size <= 7"):
        gaussian_blur(masks, 9, 1.0)
    with pytest.raises(MotionCloneError, match="odd number"):
        gaussian_blur(masks, 4, 1.0)
    with pytest.raises(MotionCloneError, match="odd number"):
        gaussian_kernel_1d(0, 1.0)
    with pytest.raises(MotionCloneError, match="sigma must be > 0"):
        gaussian_blur(masks, 3, 0.0)
    with pytest.raises(MotionCloneError, match=r"\(frames, height, width\)"):
        gaussian_blur(masks[0], 3, 1.0)


# --- normalisation, threshold, centroid ---------------------------------------------------------------------


def test_normalisation_and_threshold_per_frame_exact_values():
    attention = torch.tensor([[0.0, 1.0, 2.0, 4.0], [3.0, 3.0, 3.0, 3.0], [-1.0, 1.0, 0.0, 0.5]], dtype=torch.float64)
    normalised = normalise_per_frame(attention)
    expected = torch.tensor(
        [[0.0, 1 / (4 + 1e-5), 2 / (4 + 1e-5), 4 / (4 + 1e-5)], [0.0] * 4,
         [0.0, 2 / (2 + 1e-5), 1 / (2 + 1e-5), 1.5 / (2 + 1e-5)]],
        dtype=torch.float64,
    )
    assert torch.equal(normalised, expected)
    assert torch.equal(binary_mask(normalised, 0.3),
                       torch.tensor([[0.0, 0, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.float64))
    assert torch.equal(normalise_per_frame(attention.view(3, 2, 2)), expected.view(3, 2, 2))
    with pytest.raises(MotionCloneError, match=r"\[0, 1\]"):
        binary_mask(normalised, 1.5)


def test_centroid_of_a_symmetric_blob_is_exact():
    mask = torch.zeros(2, 9, 11)
    mask[0, 2:5, 3:8] = 1  # centre (3, 5)
    mask[1, 6, 1] = mask[1, 6, 9] = mask[1, 8, 5] = mask[1, 4, 5] = 1  # a diamond centred on (6, 5)
    bump = centroid_gaussian(mask, 2.0)
    rows, columns = torch.meshgrid(torch.arange(9.0), torch.arange(11.0), indexing="ij")
    for frame, (cy, cx) in enumerate([(3, 5), (6, 5)]):
        assert bump[frame, cy, cx] == 1.0 and bump[frame].max() == 1.0
        expected = torch.exp(-((rows - cy) ** 2 + (columns - cx) ** 2) / 8.0)
        torch.testing.assert_close(bump[frame], expected, atol=1e-7, rtol=0)


def test_empty_frames_give_zero_foreground_and_full_background_without_nan():
    attention = torch.rand(4, 8, 8, generator=_generator(1))
    attention[1] = 0.25  # constant attention: normalises to 0, nothing passes the threshold
    normalised = normalise_per_frame(attention)
    assert centroid_gaussian(binary_mask(normalised, 0.3), 5.0)[1].eq(0).all()
    for fg, bg in (
        reference_subject_weights(normalised, 0.3, 1, 1.0, 5.0),
        reference_subject_weights(normalised, 0.3, 5, 1.0, 5.0),
        reference_subject_weights(normalised, 0.3, 3, 1.0, 0.0),
        generated_subject_weights(normalised, 0.3, 3, 1.0),
    ):
        assert torch.isfinite(fg).all() and torch.isfinite(bg).all()
        assert fg[1].eq(0).all() and bg[1].eq(1).all()
        assert fg[0].sum() > 0


def test_reference_weights_without_centroid_and_with_blur():
    normalised = normalise_per_frame(torch.rand(3, 10, 10, generator=_generator(2)))
    mask = binary_mask(normalised, 0.4)
    soft = gaussian_blur(mask, 5, 1.2)
    fg, bg = reference_subject_weights(normalised, 0.4, 5, 1.2, 0.0)
    assert torch.equal(fg, soft) and torch.equal(bg, 1 - soft)
    fg, bg = reference_subject_weights(normalised, 0.4, 5, 1.2, 3.0)
    bump = centroid_gaussian(mask, 3.0)
    assert torch.equal(fg, bump * soft) and torch.equal(bg, (1 - bump) * (1 - soft))
    with pytest.raises(MotionCloneError, match="centroid_sigma"):
        reference_subject_weights(normalised, 0.4, 1, 1.0, -1.0)


def test_upsample_is_nearest():
    weights = torch.arange(12.0).view(2, 2, 3)
    up = upsample_weights(weights, 2)
    assert up.shape == (2, 4, 6)
    assert torch.equal(up, F.interpolate(weights.unsqueeze(1), scale_factor=2, mode="nearest").squeeze(1))
    assert torch.equal(upsample_weights(weights, 1), weights)
    with pytest.raises(MotionCloneError, match="factor"):
        upsample_weights(weights, 0)


# --- cross-attention averaging -------------------------------------------------------------------------------


def _cross_attention(frames: int, heads: int, side: int, tokens: int, seed: int) -> torch.Tensor:
    """`(frames, heads, side*side, tokens)` softmax probabilities with a moving blob on tokens 2 and 3."""
    generator = _generator(seed)
    logits = torch.randn(frames, heads, side * side, tokens, generator=generator)
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    for f in range(frames):
        cy, cx = side / 4 + f * side / (2 * frames), side / 3 + f % 3
        blob = torch.exp(-((rows - cy) ** 2 + (columns - cx) ** 2) / (side / 2.5)).flatten()
        logits[f, :, :, 2:4] += 4 * blob.view(1, -1, 1)
    return torch.softmax(logits, dim=-1)


def test_subject_attention_averages_layers_heads_and_tokens():
    layers = [_cross_attention(3, 4, 5, 10, seed) for seed in range(3)]
    result = subject_attention(layers, [2, 3, 7])
    direct = torch.zeros(3, 25, dtype=torch.float64)
    for probs in layers:
        for head in range(4):
            for token in (2, 3, 7):
                direct += probs[:, head, :, token].double()
    torch.testing.assert_close(result.double(), direct / (3 * 4 * 3), atol=1e-7, rtol=0)
    assert result.shape == (3, 25) and result.dtype == torch.float32
    assert torch.equal(subject_attention(layers[:1], [5]), layers[0][..., 5].mean(dim=1))


def test_subject_attention_refuses_bad_input():
    layers = [_cross_attention(2, 2, 3, 6, 0)]
    with pytest.raises(MotionCloneError, match=r"0\.\.5"):
        subject_attention(layers, [6])
    with pytest.raises(MotionCloneError, match="No token positions"):
        subject_attention(layers, [])
    with pytest.raises(MotionCloneError, match="No cross-attention layers"):
        subject_attention([], [1])
    with pytest.raises(MotionCloneError, match="Every cross-attention layer"):
        subject_attention([layers[0], _cross_attention(2, 2, 4, 6, 1)], [1])


# --- the official compute_cross_attn_mask, written independently from docs/algorithm.md §5 ----------------


def _official_centroid_gaussian(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Per frame: the mean coordinate of the mask's cells, then an isotropic Gaussian around it (float64)."""
    frames, side, _ = mask.shape
    out = np.zeros(mask.shape)
    grid_y, grid_x = np.mgrid[0:side, 0:side]
    for f in range(frames):
        ys, xs = np.nonzero(mask[f])
        cy, cx = ys.mean(), xs.mean()
        out[f] = np.exp(-((grid_y - cy) ** 2 + (grid_x - cx) ** 2) / (2 * sigma**2))
    return out


def _official_masks(cross_attn2_prob: dict, tok_ex: int, tok_app: int, tr_ex: float, tr_app: float, frames: int = 16):
    """Four dicts block -> (F, HW, 1): reference fg/bg and app fg/bg for up_blocks.1 and up_blocks.2."""
    reshaped = []
    for prob in cross_attn2_prob.values():
        batch_heads, cells, tokens = prob.shape
        reshaped.append(prob.reshape(2, frames, batch_heads // (2 * frames), cells, tokens))
    averaged = torch.cat(reshaped, dim=2).mean(dim=2)  # (2, F, HW, 77)
    ref_attn = averaged[0][:, :, tok_ex : tok_ex + 1]
    app_attn = averaged[1][:, :, tok_app : tok_app + 1]

    def min_max(a):
        low, high = a.min(dim=1, keepdim=True)[0], a.max(dim=1, keepdim=True)[0]
        return (a - low) / (high - low + 1e-5)

    side = int(math.sqrt(cells))
    ref_bin = (min_max(ref_attn) > tr_ex).float()
    g = torch.from_numpy(_official_centroid_gaussian(ref_bin.reshape(frames, side, side).numpy(), 5)).float()
    g = g.reshape(frames, cells, 1)
    ref_fg, ref_bg = g * ref_bin, (1 - g) * (1 - ref_bin)
    app_fg = (min_max(app_attn) > tr_app).float()
    app_bg = 1 - app_fg

    def up(mask):
        return F.interpolate(mask.reshape(frames, 1, side, side), scale_factor=2, mode="nearest").reshape(frames, -1, 1)

    return tuple({"up_blocks.1": m, "up_blocks.2": up(m)} for m in (ref_fg, ref_bg, app_fg, app_bg))


@pytest.mark.parametrize("frames", [16, 5])
def test_pipeline_equals_the_official_mask_computation(frames):
    heads, side, tokens, tok_ex, tok_app = 8, 16, 77, 2, 3
    layers = {f"up_blocks.1.attentions.{k}.transformer_blocks.0.attn2": torch.cat(
        [_cross_attention(frames, heads, side, tokens, 10 * k),
         _cross_attention(frames, heads, side, tokens, 10 * k + 1)]
    ).reshape(2 * frames * heads, side * side, tokens) for k in range(3)}
    expected = _official_masks(layers, tok_ex, tok_app, 0.3, 0.3, frames)

    per_branch = [prob.reshape(2, frames, heads, side * side, tokens) for prob in layers.values()]
    ref = normalise_per_frame(subject_attention([p[0] for p in per_branch], [tok_ex]).view(frames, side, side))
    app = normalise_per_frame(subject_attention([p[1] for p in per_branch], [tok_app]).view(frames, side, side))
    ours_1 = (*reference_subject_weights(ref, 0.3, 1, 1.0, 5.0), *generated_subject_weights(app, 0.3, 1, 1.0))
    ours_2 = tuple(upsample_weights(m, 2) for m in ours_1)

    for ours, official in zip(ours_1, expected):
        assert torch.equal(ours.reshape(frames, -1, 1), official["up_blocks.1"])
    for ours, official in zip(ours_2, expected):
        assert torch.equal(ours.reshape(frames, -1, 1), official["up_blocks.2"])
    assert 0 < expected[0]["up_blocks.1"].count_nonzero() < frames * side * side  # the masks are not trivial
