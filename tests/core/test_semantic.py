"""Location-aware semantic loss (docs/algorithm.md §5) against direct formulas written independently here."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from motionclone.errors import MotionCloneError
from motionclone.motion_module import TemporalAttention
from motionclone.semantic import (
    global_semantic_layer_loss,
    keys_to_frame_major,
    pooled_features,
    semantic_layer_loss,
    semantic_loss,
)

FRAMES, POSITIONS, CHANNELS = 5, 12, 8


def _keys(seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(FRAMES, POSITIONS, CHANNELS, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _weights(seed: int, dtype=torch.float64) -> torch.Tensor:
    weights = torch.rand(FRAMES, POSITIONS, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    weights[weights < 0.3] = 0
    return weights


def _masks(seed: int) -> tuple[torch.Tensor, ...]:
    ref_fg, app_fg = _weights(seed), _weights(seed + 1)
    return ref_fg, 1 - ref_fg, app_fg, 1 - app_fg


def _direct_pool(keys, weights):
    pooled = torch.zeros(keys.shape[0], keys.shape[2], dtype=torch.float64)
    for f in range(keys.shape[0]):
        total_weight = 0.0
        for p in range(keys.shape[1]):
            pooled[f] += keys[f, p].double() * weights[f, p].double()
            total_weight += weights[f, p].item()
        pooled[f] /= total_weight + 1e-5
    return pooled


def _direct_layer_loss(gen, app, ref_fg, ref_bg, app_fg, app_bg):
    fg = ((_direct_pool(app, app_fg) - _direct_pool(gen, ref_fg)) ** 2).sum() / (FRAMES * CHANNELS)
    bg = ((_direct_pool(app, app_bg) - _direct_pool(gen, ref_bg)) ** 2).sum() / (FRAMES * CHANNELS)
    return fg + bg


def test_pooled_features_equals_the_direct_sum():
    keys, weights = _keys(0), _weights(1)
    weights[2] = 0  # an empty frame pools to zero
    pooled = pooled_features(keys, weights)
    assert pooled.shape == (FRAMES, CHANNELS)
    torch.testing.assert_close(pooled, _direct_pool(keys, weights), atol=1e-12, rtol=0)
    assert pooled[2].eq(0).all()
    assert torch.equal(pooled_features(keys, weights.view(FRAMES, 3, 4)), pooled)  # (F, H, W) weights too


def test_pooled_features_computes_fp16_keys_in_float32():
    keys, weights = _keys(0, torch.float16) * 100, _weights(1, torch.float32)
    pooled = pooled_features(keys, weights)
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled.double(), _direct_pool(keys, weights), atol=1e-4, rtol=1e-6)


def test_layer_loss_equals_the_direct_formula():
    gen, app, masks = _keys(0), _keys(1), _masks(2)
    torch.testing.assert_close(semantic_layer_loss(gen, app, *masks), _direct_layer_loss(gen, app, *masks),
                               atol=1e-12, rtol=0)


def test_global_loss_equals_the_official_broadcast_mse():
    gen, app = _keys(0), _keys(1)
    target = app.mean(dim=(0, 1)).view(1, 1, CHANNELS)  # official: (1, 1, C) ...
    generated = gen.mean(dim=1).view(1, FRAMES, CHANNELS)  # ... against (1, F, C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mse_loss warns when it broadcasts; that broadcast is the point here
        official = F.mse_loss(target, generated)
    loss = global_semantic_layer_loss(gen, app)
    assert torch.equal(loss, official)
    direct = sum(
        ((gen[f].sum(0) / POSITIONS - app.sum((0, 1)) / (FRAMES * POSITIONS))[c] ** 2).item()
        for f in range(FRAMES)
        for c in range(CHANNELS)
    )
    assert loss.item() == pytest.approx(direct / (FRAMES * CHANNELS), rel=1e-12)


def test_gradients_reach_only_the_generated_keys():
    gen, app = _keys(0).requires_grad_(), _keys(1).requires_grad_()
    masks = tuple(m.requires_grad_() for m in _masks(2))
    for loss in (semantic_layer_loss(gen, app, *masks), global_semantic_layer_loss(gen, app)):
        loss.backward()
        assert gen.grad is not None and gen.grad.abs().sum() > 0
        assert app.grad is None and all(m.grad is None for m in masks)
        gen.grad = None


def test_zero_when_the_videos_agree():
    keys, masks = _keys(0), _masks(2)
    ref_fg, ref_bg, _, _ = masks
    assert semantic_layer_loss(keys, keys.clone(), ref_fg, ref_bg, ref_fg, ref_bg).item() == 0.0
    same_mean_every_frame = keys - keys.mean(dim=1, keepdim=True) + keys.mean(dim=(0, 1))
    assert global_semantic_layer_loss(same_mean_every_frame, keys).item() == pytest.approx(0.0, abs=1e-24)


LAYERS = [
    f"up_blocks.{block}.motion_modules.{module}.attention_blocks.{attention}"
    for block in (1, 2)
    for module in range(3)
    for attention in range(2)
]


def test_total_is_the_official_weighted_mean_over_all_layers():
    """Official: 100 * mean over the 12 layers of (weight_each / 100) * L_m, weight_each = [400, 200] (walk.yaml)."""
    generated = {name: _keys(i) for i, name in enumerate(LAYERS)}
    appearance = {name: _keys(100 + i) for i, name in enumerate(LAYERS)}
    masks = {name: _masks(200 + 2 * i) for i, name in enumerate(LAYERS)}
    weight_each = {"up_blocks.1": 400.0, "up_blocks.2": 200.0}
    weights = {name: weight_each[name[:11]] for name in LAYERS}

    per_layer = torch.stack([_direct_layer_loss(generated[n], appearance[n], *masks[n]) for n in LAYERS])
    official = 100 * torch.mean(torch.tensor([weights[n] / 100 for n in LAYERS], dtype=torch.float64) * per_layer)
    torch.testing.assert_close(semantic_loss(generated, appearance, weights, 12, masks), official,
                               atol=1e-10, rtol=1e-12)

    per_layer_global = torch.stack([global_semantic_layer_loss(generated[n], appearance[n]) for n in LAYERS])
    official_global = 100 * torch.mean(
        torch.tensor([weights[n] / 100 for n in LAYERS], dtype=torch.float64) * per_layer_global
    )
    torch.testing.assert_close(semantic_loss(generated, appearance, weights, 12, None), official_global,
                               atol=1e-10, rtol=1e-12)


class _Untouchable:
    """Stands in for a zero-weight layer's tensors: any use at all fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"a zero-weight layer was used ({name})")


def test_zero_weight_layers_are_never_read():
    """weight_each [500, 0] (fox.yaml): up_blocks.2 layers are listed, counted in the mean, and never computed."""
    weights = {name: (500.0 if name.startswith("up_blocks.1") else 0.0) for name in LAYERS}
    active = [n for n in LAYERS if weights[n]]
    generated = {n: _keys(i) for i, n in enumerate(active)}
    appearance = {n: _keys(50 + i) for i, n in enumerate(active)}
    masks = {n: _masks(100 + i) for i, n in enumerate(active)}
    nan = torch.full((FRAMES, POSITIONS, CHANNELS), float("nan"))
    poisoned = {n: _Untouchable() for n in LAYERS if not weights[n]}
    poisoned_nan = {n: nan for n in LAYERS if not weights[n]}

    expected = sum(500.0 * _direct_layer_loss(generated[n], appearance[n], *masks[n]) for n in active) / 12
    for extra in (poisoned, poisoned_nan, {}):
        masks_extra = {n: (nan[..., 0],) * 4 for n in extra}
        loss = semantic_loss({**generated, **extra}, {**appearance, **extra}, weights, 12, {**masks, **masks_extra})
        torch.testing.assert_close(loss, expected, atol=1e-10, rtol=1e-12)
        loss = semantic_loss({**generated, **extra}, {**appearance, **extra}, weights, 12, None)
        assert torch.isfinite(loss)


def test_total_refuses_bad_input():
    generated, appearance = {"a": _keys(0)}, {"a": _keys(1)}
    with pytest.raises(MotionCloneError, match=">= 0"):
        semantic_loss(generated, appearance, {"a": -1.0}, 1, None)
    with pytest.raises(MotionCloneError, match="switch semantic guidance off"):
        semantic_loss(generated, appearance, {"a": 0.0}, 1, None)
    with pytest.raises(MotionCloneError, match="layer_count"):
        semantic_loss(generated, appearance, {"a": 1.0, "b": 1.0}, 1, None)
    with pytest.raises(MotionCloneError, match="no appearance keys"):
        semantic_loss(generated, {}, {"a": 1.0}, 1, None)
    with pytest.raises(MotionCloneError, match="no masks"):
        semantic_loss(generated, appearance, {"a": 1.0}, 1, {})
    with pytest.raises(MotionCloneError, match="same size and frame count"):
        semantic_loss(generated, {"a": _keys(1)[:3]}, {"a": 1.0}, 1, None)
    with pytest.raises(MotionCloneError, match="same block resolution"):
        semantic_layer_loss(_keys(0), _keys(1), *(m[:, :6] for m in _masks(2)))


def test_keys_to_frame_major_matches_the_temporal_attention_layout():
    """TemporalAttention's k is to_k(x + PE) with positions in the batch axis: (B*HW, F, C)."""
    torch.manual_seed(0)
    attention = TemporalAttention(CHANNELS, max_frames=32, heads=2)
    batch = 2
    tokens = torch.randn(batch * FRAMES, POSITIONS, CHANNELS)  # (B*F, HW, C), frames in the batch axis as in ComfyUI
    # The same rearrangement and projection as TemporalAttention.forward, for the keys it attends with.
    x = tokens.reshape(batch, FRAMES, POSITIONS, CHANNELS).transpose(1, 2).reshape(batch * POSITIONS, FRAMES, CHANNELS)
    keys = attention.to_k(attention.pos_encoder(x))
    video = 1
    frame_major = keys_to_frame_major(keys.reshape(batch, POSITIONS, FRAMES, CHANNELS)[video])
    assert frame_major.shape == (FRAMES, POSITIONS, CHANNELS)
    for f, p in ((0, 0), (3, 7), (FRAMES - 1, POSITIONS - 1)):
        expected = attention.to_k(tokens[video * FRAMES + f, p] + attention.pos_encoder.pe[0, f])
        torch.testing.assert_close(frame_major[f, p], expected, atol=1e-6, rtol=0)
    with pytest.raises(MotionCloneError, match="positions, frames, channels"):
        keys_to_frame_major(keys.unsqueeze(0))
