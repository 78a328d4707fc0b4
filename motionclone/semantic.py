"""Location-aware semantic guidance, MotionClone v1's appearance term (docs/algorithm.md §5).

The features are the temporal-attention keys `k = to_k(x + PE)` of the motion-module layers. The generated
video's keys are pooled with the *reference* video's subject masks (motion is cloned, so the new subject
should sit where the reference subject was) and pulled towards the keys of an unguided "appearance"
video, pooled with that video's own masks:

    L_m = MSE(pool(K_app, M_app^fg), pool(K_gen, M_ref^fg)) + MSE(pool(K_app, M_app^bg), pool(K_gen, M_ref^bg))

Without a subject (camera motion) the per-frame mean key of the generated video is pulled towards the
appearance video's mean key over all frames ("global mode"). Only the generated keys receive gradients.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .errors import MotionCloneError

POOL_EPSILON = 1e-5  # official: sum(K M) / (sum(M) + 1e-5)

SubjectWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # ref fg, ref bg, app fg, app bg


def _loss_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """At least float32: pooled sums over HW positions can overflow fp16 (docs/algorithm.md §10)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def keys_to_frame_major(keys: torch.Tensor) -> torch.Tensor:
    """`(HW, F, C) -> (F, HW, C)`: the layout the semantic loss pools over.

    `TemporalAttention` computes its keys as `(B*HW, F, C)`: spatial positions in the batch axis (batch
    major), frames as the sequence, positional encoding already added. Take one video's `(HW, F, C)` slice
    (`k.reshape(B, HW, F, C)[b]`) and pass it here. The result is a view.
    """
    if keys.ndim != 3:
        raise MotionCloneError(
            f"Temporal-attention keys must be (positions, frames, channels), got shape {tuple(keys.shape)}."
        )
    return keys.transpose(0, 1)


def pooled_features(keys: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean key per frame (docs/algorithm.md §5): `sum_p K[f, p] M[f, p] / (sum_p M[f, p] + 1e-5)`.

    Args:
        keys: `(F, HW, C)`; weights: `(F, HW)` (or `(F, H, W)`, flattened) non-negative mask weights.

    Returns:
        `(F, C)` in at least float32. A frame with no weight pools to 0.
    """
    weights = weights.reshape(weights.shape[0], -1)
    if keys.ndim != 3 or weights.shape != keys.shape[:2]:
        raise MotionCloneError(
            f"Mask weights {tuple(weights.shape)} do not fit keys {tuple(keys.shape)}: expected (frames, positions) "
            "matching (frames, positions, channels); the mask must come from the same block resolution and frame count."
        )
    dtype = _loss_dtype(keys, weights)
    keys, weights = keys.to(dtype), weights.to(dtype)
    return torch.einsum("fpc,fp->fc", keys, weights) / (weights.sum(dim=1, keepdim=True) + POOL_EPSILON)


def _require_same_shape(generated_keys: torch.Tensor, appearance_keys: torch.Tensor) -> None:
    if generated_keys.ndim != 3 or generated_keys.shape != appearance_keys.shape:
        raise MotionCloneError(
            f"Generated keys {tuple(generated_keys.shape)} and appearance keys {tuple(appearance_keys.shape)} must "
            "both be (frames, positions, channels) of one shape: both videos need the same size and frame count."
        )


def semantic_layer_loss(
    generated_keys: torch.Tensor,
    appearance_keys: torch.Tensor,
    reference_fg: torch.Tensor,
    reference_bg: torch.Tensor,
    appearance_fg: torch.Tensor,
    appearance_bg: torch.Tensor,
) -> torch.Tensor:
    """Per-layer location-aware loss (docs/algorithm.md §5).

    Args:
        generated_keys, appearance_keys: `(F, HW, C)` (`keys_to_frame_major`); only the first gets gradients.
        reference_fg, reference_bg: `(F, HW)` weights of the reference video, pooling the generated keys.
        appearance_fg, appearance_bg: `(F, HW)` weights of the appearance video, pooling its own keys.

    Returns:
        Scalar `MSE(f_app^fg, f_gen^fg) + MSE(f_app^bg, f_gen^bg)`, each a mean over F x C.
    """
    _require_same_shape(generated_keys, appearance_keys)
    appearance_keys = appearance_keys.detach()
    target_fg = pooled_features(appearance_keys, appearance_fg.detach())
    target_bg = pooled_features(appearance_keys, appearance_bg.detach())
    generated_fg = pooled_features(generated_keys, reference_fg.detach())
    generated_bg = pooled_features(generated_keys, reference_bg.detach())
    return F.mse_loss(generated_fg, target_fg) + F.mse_loss(generated_bg, target_bg)


def global_semantic_layer_loss(generated_keys: torch.Tensor, appearance_keys: torch.Tensor) -> torch.Tensor:
    """Per-layer loss without a subject, camera-motion mode (docs/algorithm.md §5, global mode).

    Args:
        generated_keys, appearance_keys: `(F, HW, C)`; only the first gets gradients.

    Returns:
        Scalar: the mean over F x C of `(mean_p K_gen[f, p] - mean_{f,p} K_app[f, p])^2`, i.e. the official
        MSE of a `(1, 1, C)` target broadcast against `(1, F, C)` generated means.
    """
    _require_same_shape(generated_keys, appearance_keys)
    dtype = _loss_dtype(generated_keys)
    target = appearance_keys.detach().to(dtype).mean(dim=(0, 1))  # (C,)
    generated = generated_keys.to(dtype).mean(dim=1)  # (F, C)
    return ((generated - target) ** 2).mean()


def semantic_loss(
    generated_keys: Mapping[str, torch.Tensor],
    appearance_keys: Mapping[str, torch.Tensor],
    layer_weights: Mapping[str, float],
    layer_count: int,
    masks: Mapping[str, SubjectWeights] | None,
) -> torch.Tensor:
    """Total location-aware semantic loss (docs/algorithm.md §5): `sum_m w_m L_m / layer_count`.

    The official total is `100 * mean over all listed layers of (weight_each / 100) L_m`, which is the same
    number: with weight_each [500, 0] on up_blocks.1 and .2 (6 layers each) use weight 500 for the six
    up_blocks.1 layers, 0 for the others, and layer_count = 12.

    Args:
        generated_keys, appearance_keys: layer -> `(F, HW, C)`; needed only for layers of nonzero weight.
        layer_weights: layer -> weight >= 0. Layers of weight 0 are skipped: never read, never computed.
        layer_count: the divisor, the number of layers the official mean runs over (zero-weight ones included).
        masks: layer -> `(ref_fg, ref_bg, app_fg, app_bg)`, each `(F, HW)`; None = global (camera) mode.

    Returns:
        A scalar in at least float32, differentiable with respect to the generated keys only.
    """
    for name, weight in layer_weights.items():
        if not isinstance(weight, numbers.Real) or not weight >= 0:
            raise MotionCloneError(f"Semantic weight of layer {name} must be a number >= 0, got {weight!r}.")
    active = [(name, float(weight)) for name, weight in layer_weights.items() if weight != 0]
    if not active:
        raise MotionCloneError(
            "Every semantic layer weight is 0; switch semantic guidance off instead of weighting it to nothing."
        )
    if not isinstance(layer_count, int) or layer_count < len(active):
        raise MotionCloneError(
            f"layer_count must be a whole number >= the {len(active)} weighted layers (it counts every listed "
            f"layer), got {layer_count!r}."
        )
    total = None
    for name, weight in active:
        tables = (("generated keys", generated_keys), ("appearance keys", appearance_keys))
        missing = [what for what, table in tables if name not in table]
        if masks is not None and name not in masks:
            missing.append("masks")
        if missing:
            raise MotionCloneError(
                f"Layer {name} has a semantic weight but no {' or '.join(missing)} were captured for it."
            )
        if masks is None:
            term = global_semantic_layer_loss(generated_keys[name], appearance_keys[name])
        else:
            term = semantic_layer_loss(generated_keys[name], appearance_keys[name], *masks[name])
        total = weight * term if total is None else total + weight * term
    return total / layer_count
