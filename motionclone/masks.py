"""Subject masks from spatial cross-attention, for location-aware semantic guidance (docs/algorithm.md §5, §10).

The official v1 `compute_cross_attn_mask`, for up_blocks.1:
  1. average the subject token's cross-attention probabilities over the heads of the block's layers;
  2. min-max normalise per frame;
  3. reference video: binary mask `m = norm > tau`, times a Gaussian bump centred on the mask's centroid
     (sigma = 5 cells; it is called a blur but is not a filter): fg = g m, bg = (1 - g)(1 - m);
  4. generated ("app") video: fg = norm > tau, bg = 1 - fg;
  5. up_blocks.2 reuses the up_blocks.1 masks, nearest-upsampled x2.
Here the frame count is free (the official code hard-codes 16), an empty frame gives zero foreground instead
of NaN, and a true Gaussian filter (OpenCV-compatible) can optionally soften the binary masks.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .errors import MotionCloneError

NORMALISE_EPSILON = 1e-5  # official: (a - min) / (max - min + 1e-5)


def _precise_dtype(device: torch.device) -> torch.dtype:
    """float64 for the Gaussian weights (MPS has none, so float32 there)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    """At least float32: masks and attention averages are not worth doing in half precision."""
    return torch.promote_types(t.dtype, torch.float32) if t.is_floating_point() else torch.float32


def _require_frames_grid(t: torch.Tensor, what: str) -> None:
    if t.ndim != 3:
        raise MotionCloneError(
            f"{what} must be (frames, height, width), got shape {tuple(t.shape)}; reshape (F, H*W) to (F, H, W)."
        )


def subject_attention(layer_probs: Sequence[torch.Tensor], token_positions: Sequence[int]) -> torch.Tensor:
    """How much each position attends to the subject's tokens (docs/algorithm.md §5, masks).

    Args:
        layer_probs: per spatial cross-attention layer of one block, `(F, heads, HW, T)` softmax probabilities
            over the T text tokens; all layers at the same F, HW and T.
        token_positions: the subject's token columns (0 is the BOS token). Several positions (a word split
            into sub-tokens, or several words) are averaged.

    Returns:
        `(F, HW)`: the mean over every (layer, head) pair and every listed token, as the official code's
        concatenation of the layers along the head axis followed by a mean. At least float32.
    """
    if not layer_probs:
        raise MotionCloneError("No cross-attention layers were given; capture at least one attn2 layer of the block.")
    positions = [operator.index(p) for p in token_positions]
    if not positions:
        raise MotionCloneError("No token positions were given; name the subject word so its tokens can be found.")
    frames, _, cells, tokens = layer_probs[0].shape
    for probs in layer_probs:
        if probs.ndim != 4 or (probs.shape[0], probs.shape[2], probs.shape[3]) != (frames, cells, tokens):
            raise MotionCloneError(
                f"Every cross-attention layer must be (frames={frames}, heads, positions={cells}, tokens={tokens}), "
                f"got {tuple(probs.shape)}; use layers of one block and one video."
            )
    if not all(0 <= p < tokens for p in positions):
        raise MotionCloneError(
            f"Token positions must lie in 0..{tokens - 1}, got {positions}; the prompt is shorter than that."
        )
    index = torch.tensor(positions, device=layer_probs[0].device)
    columns = torch.cat([probs.index_select(-1, index) for probs in layer_probs], dim=1)  # (F, all heads, HW, P)
    return columns.to(_float_dtype(columns)).mean(dim=(1, 3))


def normalise_per_frame(attention: torch.Tensor) -> torch.Tensor:
    """Official min-max normalisation per frame (docs/algorithm.md §5): `(a - min) / (max - min + 1e-5)`.

    Args:
        attention: `(F, HW)` or `(F, H, W)`; min and max are taken over everything but the frame axis.

    Returns:
        The same shape, values in [0, 1).
    """
    flat = attention.flatten(1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return ((flat - low) / (high - low + NORMALISE_EPSILON)).reshape(attention.shape)


def binary_mask(normalised: torch.Tensor, threshold: float) -> torch.Tensor:
    """`normalised > threshold` as 0/1 floats of the same shape (docs/algorithm.md §5; tau = 0.3 by default)."""
    if not isinstance(threshold, numbers.Real) or not 0.0 <= threshold <= 1.0:
        raise MotionCloneError(
            f"The mask threshold must be a number in [0, 1] (normalised attention), got {threshold!r}."
        )
    return (normalised > threshold).to(_float_dtype(normalised))


def _check_kernel_size(kernel_size: int) -> int:
    size = operator.index(kernel_size)
    if size < 1 or size % 2 == 0:
        raise MotionCloneError(f"The blur kernel size must be an odd number >= 1 (1 = no blur), got {kernel_size}.")
    return size


def gaussian_kernel_1d(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """`(kernel_size,)` normalised Gaussian taps, the values of `cv2.getGaussianKernel(kernel_size, sigma)`.

    `w_i = exp(-(i - (kernel_size - 1) / 2)^2 / (2 sigma^2))`, divided by its sum; computed in float64.
    """
    size = _check_kernel_size(kernel_size)
    if not isinstance(sigma, numbers.Real) or not sigma > 0:
        raise MotionCloneError(f"The blur sigma must be > 0 (in feature cells), got {sigma!r}.")
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(offsets**2 * (-0.5 / float(sigma) ** 2))
    return (taps / taps.sum()).to(dtype)


def gaussian_blur(masks: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter of each frame, as `cv2.GaussianBlur(img, (k, k), sigma)` with BORDER_REFLECT_101.

    Args:
        masks: `(F, H, W)`.
        kernel_size: odd; 1 returns a copy unchanged (sigma is then ignored). At most 2 min(H, W) - 1,
            the widest window that mirroring without repeating the edge (torch 'reflect') can fill.
        sigma: standard deviation in cells, > 0.

    Returns:
        `(F, H, W)` in the dtype of `masks` (computed in at least float32).
    """
    _require_frames_grid(masks, "The masks to blur")
    size = _check_kernel_size(kernel_size)
    if size == 1:
        return masks.clone()
    radius = size // 2
    height, width = masks.shape[1:]
    if radius >= min(height, width):
        raise MotionCloneError(
            f"A blur kernel of {size} cells does not fit a {height}x{width} mask (border mirroring needs "
            f"kernel_size <= {2 * min(height, width) - 1}); use a smaller kernel."
        )
    work_dtype = _float_dtype(masks)
    taps = gaussian_kernel_1d(size, sigma, work_dtype).to(masks.device)
    x = masks.to(work_dtype).unsqueeze(1)  # (F, 1, H, W): each frame filtered on its own
    # Rows then columns, as OpenCV's separable filter; 'reflect' is BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba).
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), taps.view(1, 1, 1, size))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), taps.view(1, 1, size, 1))
    return x.squeeze(1).to(masks.dtype)


def centroid_gaussian(mask: torch.Tensor, sigma: float) -> torch.Tensor:
    """Official "Gaussian blur" of the reference mask (docs/algorithm.md §5): a bump at each frame's centroid.

    Args:
        mask: `(F, H, W)` binary.
        sigma: width of the bump in cells (official 5), > 0.

    Returns:
        `(F, H, W)`: `exp(-((y - c_y)^2 + (x - c_x)^2) / (2 sigma^2))` with (c_y, c_x) the mean row and column
        of the frame's mask cells; 0 everywhere in a frame whose mask is empty (the official code gets NaN).
    """
    _require_frames_grid(mask, "The mask")
    if not isinstance(sigma, numbers.Real) or not sigma > 0:
        raise MotionCloneError(f"The centroid Gaussian sigma must be > 0 (in feature cells), got {sigma!r}.")
    precise = _precise_dtype(mask.device)
    weights = mask.to(precise)
    rows = torch.arange(mask.shape[1], dtype=precise, device=mask.device)
    columns = torch.arange(mask.shape[2], dtype=precise, device=mask.device)
    count = weights.sum(dim=(1, 2))
    safe_count = count.clamp_min(1.0)  # empty frames are zeroed below; this only avoids 0/0
    centre_y = (weights.sum(dim=2) * rows).sum(dim=1) / safe_count
    centre_x = (weights.sum(dim=1) * columns).sum(dim=1) / safe_count
    squared_distance = (rows.view(1, -1, 1) - centre_y.view(-1, 1, 1)) ** 2 + (
        columns.view(1, 1, -1) - centre_x.view(-1, 1, 1)
    ) ** 2
    bump = torch.exp(-squared_distance / (2.0 * float(sigma) ** 2))
    bump = torch.where(count.view(-1, 1, 1) > 0, bump, torch.zeros_like(bump))
    return bump.to(_float_dtype(mask))


def reference_subject_weights(
    normalised: torch.Tensor, threshold: float, blur_kernel_size: int, blur_sigma: float, centroid_sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background weights of the reference video (docs/algorithm.md §5).

    Args:
        normalised: `(F, H, W)` from `normalise_per_frame`.
        threshold: tau_ex (official 0.3; 0.2 in walk.yaml).
        blur_kernel_size, blur_sigma: optional softening of the binary mask (`gaussian_blur`; 1 = off).
        centroid_sigma: > 0 multiplies by `centroid_gaussian`; 0 leaves the (soft) mask as it is.

    Returns:
        `(foreground, background)`, each `(F, H, W)`. With centroid_sigma > 0: `g soft` and `(1 - g)(1 - soft)`;
        blur off and centroid_sigma = 5 is exactly the official `M_ex^fg = g m`, `M_ex^bg = (1 - g)(1 - m)`.
        Without: `soft` and `1 - soft`. An empty frame gets foreground 0 and background 1.
    """
    _require_frames_grid(normalised, "The normalised reference attention")
    if not isinstance(centroid_sigma, numbers.Real) or not centroid_sigma >= 0:
        raise MotionCloneError(f"centroid_sigma must be >= 0 (0 = no centroid weighting), got {centroid_sigma!r}.")
    mask = binary_mask(normalised, threshold)
    soft = gaussian_blur(mask, blur_kernel_size, blur_sigma)
    if centroid_sigma == 0:
        return soft, 1 - soft
    bump = centroid_gaussian(mask, centroid_sigma)
    return bump * soft, (1 - bump) * (1 - soft)


def generated_subject_weights(
    normalised: torch.Tensor, threshold: float, blur_kernel_size: int, blur_sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background weights of the generated ("app") video (docs/algorithm.md §5).

    Args:
        normalised: `(F, H, W)` from `normalise_per_frame`; threshold: tau_app (official 0.3).
        blur_kernel_size, blur_sigma: optional `gaussian_blur` of the binary mask (1 = off, the official form).

    Returns:
        `(foreground, background)`, each `(F, H, W)`: the (blurred) binary mask and one minus it.
    """
    _require_frames_grid(normalised, "The normalised generated attention")
    foreground = gaussian_blur(binary_mask(normalised, threshold), blur_kernel_size, blur_sigma)
    return foreground, 1 - foreground


def upsample_weights(weights: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour upsampling, `(F, H, W) -> (F, H*factor, W*factor)` (docs/algorithm.md §5).

    The official up_blocks.2 masks are the up_blocks.1 masks upsampled this way with factor 2.
    """
    _require_frames_grid(weights, "The weights to upsample")
    factor = operator.index(factor)
    if factor < 1:
        raise MotionCloneError(f"The upsampling factor must be a whole number >= 1, got {factor}.")
    return weights.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)

