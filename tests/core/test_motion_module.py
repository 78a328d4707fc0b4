"""The motion module's architecture, forward, and attention probabilities against direct formulas."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import TINY_CHANNELS, tiny_motion_state_dict

from motionclone import AnimateDiffMotionModel, AttentionCapture, ForwardStopped, FrameCountError, attention_probs
from motionclone.motion_module import MotionModule, sinusoidal_positional_encoding

# One module's keys as the released AnimateDiff files (mm_sd_v15_v2.ckpt, v3_sd15_mm.ckpt) list them.
RELEASED_MODULE_KEYS = sorted(
    ["norm.weight", "norm.bias", "proj_in.weight", "proj_in.bias", "proj_out.weight", "proj_out.bias",
     "transformer_blocks.0.ff.net.0.proj.weight", "transformer_blocks.0.ff.net.0.proj.bias",
     "transformer_blocks.0.ff.net.2.weight", "transformer_blocks.0.ff.net.2.bias",
     "transformer_blocks.0.ff_norm.weight", "transformer_blocks.0.ff_norm.bias"]
    + [f"transformer_blocks.0.attention_blocks.{i}.{p}" for i in (0, 1)
       for p in ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias", "pos_encoder.pe")]
    + [f"transformer_blocks.0.norms.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
)


def test_state_dict_keys_match_the_released_format():
    model = AnimateDiffMotionModel(TINY_CHANNELS, has_mid_block=True)
    prefix = "up_blocks.1.motion_modules.2.temporal_transformer."
    keys = sorted(k[len(prefix):] for k in model.state_dict() if k.startswith(prefix))
    assert keys == RELEASED_MODULE_KEYS
    module_names = {k.split(".temporal_transformer.")[0] for k in model.state_dict()}
    assert len(module_names) == 8 + 1 + 12


@pytest.mark.parametrize("has_mid, expected", [(False, 417_137_600), (True, 417_137_600 + 22 * 1280**2 + 21 * 1280)])
def test_full_size_parameter_count_matches_animatediff(has_mid, expected):
    # 22C^2 + 21C per module; v1/v3 = 417.1M, v2 = 453.2M (AnimateDiff README).
    with torch.device("meta"):
        model = AnimateDiffMotionModel((320, 640, 1280, 1280), has_mid_block=has_mid)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_positional_encoding_formula():
    pe = sinusoidal_positional_encoding(24, 8)
    p, i = 5, 3
    assert pe.shape == (1, 24, 8)
    assert pe[0, p, 2 * i].item() == pytest.approx(math.sin(p / 10000 ** (2 * i / 8)), abs=1e-6)
    assert pe[0, p, 2 * i + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * i / 8)), abs=1e-6)


def _loaded_model(version="v2", zero_out=False):
    model = AnimateDiffMotionModel(TINY_CHANNELS, has_mid_block=True)
    model.load_state_dict(tiny_motion_state_dict(version, seed=1, zero_out=zero_out))
    return model.eval()


def test_zero_initialised_module_is_the_identity():
    module = _loaded_model(zero_out=True).up_blocks[1].motion_modules[0]
    x = torch.randn(2 * 6, 128, 3, 5)
    assert torch.equal(module(x, frames=6), x)


def test_module_mixes_frames_of_one_video_but_not_across_videos():
    module = _loaded_model().up_blocks[1].motion_modules[0]
    x = torch.randn(2 * 6, 128, 3, 5)
    out = module(x, frames=6)
    changed = x.clone()
    changed[7, :, 1, 2] += 1.0  # second video, frame 1, one position
    diff = (module(changed, frames=6) - out).abs().amax(dim=1)
    assert diff[:6].max() == 0  # the first video is independent
    assert diff[6:, 1, 2].min() > 0  # every frame of the second video sees the change


def _reference_probs(attention, x, frames):
    """Direct per-(position, head) loops over the published formula softmax(q k^T / sqrt(d))."""
    batch_frames, positions, channels = x.shape
    heads, d = attention.heads, channels // attention.heads
    seq = x.reshape(batch_frames // frames, frames, positions, channels).transpose(1, 2).reshape(-1, frames, channels)
    seq = seq + attention.pos_encoder.pe[:, :frames]
    q, k = seq @ attention.to_q.weight.T, seq @ attention.to_k.weight.T
    out = torch.empty(seq.shape[0], heads, frames, frames, dtype=torch.float64)
    for n in range(seq.shape[0]):
        for h in range(heads):
            qh, kh = q[n, :, h * d:(h + 1) * d].double(), k[n, :, h * d:(h + 1) * d].double()
            logits = qh @ kh.T / math.sqrt(d)
            out[n, h] = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
            out[n, h] /= out[n, h].sum(dim=1, keepdim=True)
    return out


def test_captured_probabilities_match_a_direct_computation():
    attention = (_loaded_model().up_blocks[1].motion_modules[1].temporal_transformer.transformer_blocks[0]
                 .attention_blocks[1])
    frames, x = 5, torch.randn(2 * 5, 6, 128)
    capture = AttentionCapture(("up_blocks.1",))
    explicit = attention(x, frames, capture)
    probs = capture.probs[attention.name]
    assert attention.name == "up_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.1"
    assert probs.shape == (2 * 6, 8, 5, 5) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.double(), _reference_probs(attention, x, frames), rtol=1e-5, atol=1e-6)
    # The fused kernel (no capture) gives the same layer output as the explicit softmax.
    torch.testing.assert_close(attention(x, frames), explicit, rtol=1e-5, atol=1e-5)


def test_probabilities_are_differentiable_with_respect_to_the_input():
    model = _loaded_model()
    x = torch.randn(4, 128, 2, 2, requires_grad=True)
    capture = AttentionCapture(("up_blocks.1",))
    model.up_blocks[1].motion_modules[0](x, frames=4, capture=capture)
    loss = sum((p[..., 0] ** 2).mean() for p in capture.probs.values())
    (grad,) = torch.autograd.grad(loss, x)
    assert len(capture.probs) == 2 and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_attention_probs_rows_sum_to_one_in_fp32_for_fp16_input():
    q, k = torch.randn(3, 4, 16).half(), torch.randn(3, 4, 16).half()
    probs = attention_probs(q, k, heads=8)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 8, 4))


def test_capture_selects_blocks_and_stops_after_the_last_module():
    model = _loaded_model()
    assert model.last_module_in(("up_blocks.1",)) == "up_blocks.1.motion_modules.2"
    assert len(model.attention_layer_names(("up_blocks.1",))) == 6
    assert len(model.attention_layer_names(("up_blocks.1", "up_blocks.2"))) == 12
    capture = AttentionCapture(("up_blocks.1",), stop_after="up_blocks.1.motion_modules.2")
    x = torch.randn(4, 128, 2, 2)
    model.up_blocks[1].motion_modules[1](x, 4, capture)  # not the last: no stop
    with pytest.raises(ForwardStopped, match="up_blocks.1.motion_modules.2"):
        model.up_blocks[1].motion_modules[2](x, 4, capture)
    assert sorted(capture.probs) == model.attention_layer_names(("up_blocks.1",))[2:]


def test_more_frames_than_the_positional_encoding_is_a_clear_error():
    module = MotionModule(32, max_frames=24)
    with pytest.raises(FrameCountError, match="at most 24 frames"):
        module(torch.randn(25, 32, 2, 2), frames=25)


def test_block_names_are_validated_against_the_model_layout():
    from motionclone import MotionCloneError, validate_block_names

    assert validate_block_names(("up_blocks.1", "up_blocks.2"), has_mid_block=False) == ("up_blocks.1", "up_blocks.2")
    assert validate_block_names(("mid_block",), has_mid_block=True) == ("mid_block",)
    with pytest.raises(MotionCloneError, match="Unknown motion-module block 'mid_block'"):
        validate_block_names(("mid_block",), has_mid_block=False)
    with pytest.raises(MotionCloneError, match="up_blocks.4"):
        validate_block_names(("up_blocks.4",), has_mid_block=True)


@pytest.mark.parametrize(
    "name, block",
    [("down_blocks.0.motion_modules.0", ("input", 1)), ("down_blocks.3.motion_modules.1", ("input", 11)),
     ("mid_block.motion_modules.0", ("middle", 0)), ("up_blocks.0.motion_modules.0", ("output", 0)),
     ("up_blocks.1.motion_modules.2", ("output", 5)), ("up_blocks.3.motion_modules.2", ("output", 11))],
)
def test_diffusers_names_map_to_comfyui_blocks(name, block):
    from motionclone import comfy_block_of

    assert comfy_block_of(name) == block


class _NoInit:
    def reset_parameters(self):  # weights come from a state dict (torch's init has no fp8 kernels)
        pass


class _CastPerCall:
    """A pure-torch stand-in for a host's manual-cast layers: weights stored in any dtype, cast to the input's."""

    built: list[torch.nn.Module] = []

    class Linear(_NoInit, torch.nn.Linear):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _CastPerCall.built.append(self)

        def forward(self, x):
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return torch.nn.functional.linear(x, self.weight.to(x.dtype), bias)

    class LayerNorm(_NoInit, torch.nn.LayerNorm):
        def forward(self, x):
            return torch.nn.functional.layer_norm(
                x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps
            )

    class GroupNorm(_NoInit, torch.nn.GroupNorm):
        def forward(self, x):
            return torch.nn.functional.group_norm(
                x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps
            )


def _module_input(seed=4):
    return torch.randn(2 * 4, 128, 3, 2, generator=torch.Generator().manual_seed(seed))


def test_layers_come_from_the_operations_namespace_with_the_released_parameter_names():
    _CastPerCall.built.clear()
    model = AnimateDiffMotionModel(TINY_CHANNELS, True, operations=_CastPerCall, dtype=torch.float16,
                                   compute_dtype=torch.float32)
    reference = AnimateDiffMotionModel(TINY_CHANNELS, True)
    assert list(model.state_dict()) == list(reference.state_dict())
    assert len(_CastPerCall.built) == sum(isinstance(m, torch.nn.Linear) for m in reference.modules())
    assert all(isinstance(m, _CastPerCall.GroupNorm) for m in model.modules() if isinstance(m, torch.nn.GroupNorm))
    assert all(isinstance(m, _CastPerCall.LayerNorm) for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    assert model.weight_dtype == torch.float16 and model.compute_dtype == torch.float32
    assert {m.compute_dtype for m in model.modules_in_forward_order()} == {torch.float32}
    # The positional encoding stays float32 whatever the weights' dtype.
    assert {b.dtype for name, b in model.named_buffers()} == {torch.float32}


def test_fp16_storage_with_fp32_compute_matches_the_fp32_model():
    state = tiny_motion_state_dict("v2", seed=1)
    fp32 = AnimateDiffMotionModel(TINY_CHANNELS, True)
    fp32.load_state_dict(state)
    cast = AnimateDiffMotionModel(TINY_CHANNELS, True, operations=_CastPerCall, dtype=torch.float16)
    cast.load_state_dict(state)
    x = _module_input()
    expected = fp32.up_blocks[1].motion_modules[0](x, frames=4)
    out = cast.up_blocks[1].motion_modules[0](x, frames=4)
    assert out.dtype == torch.float32
    # Only the weights are rounded to fp16 (relative error 2^-11): the module's contribution (up to ~7.6 here)
    # moves by 3.6e-3 at most (measured); 1e-2 leaves room for other CPUs' kernels.
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-2)
    assert not torch.equal(out, expected)


def test_fp8_storage_runs_through_group_norm_with_casting_layers():
    state = tiny_motion_state_dict("v3", seed=1)
    plain = AnimateDiffMotionModel(TINY_CHANNELS, False, dtype=torch.float8_e4m3fn, operations=_CastPerCall)
    plain.load_state_dict(state)
    module = plain.up_blocks[1].motion_modules[0]
    assert module.temporal_transformer.norm.weight.dtype == torch.float8_e4m3fn
    out = module(_module_input(), frames=4)
    fp32 = AnimateDiffMotionModel(TINY_CHANNELS, False)
    fp32.load_state_dict(state)
    expected = fp32.up_blocks[1].motion_modules[0](_module_input(), frames=4)
    assert torch.isfinite(out).all()
    # fp8 e4m3 keeps 3 mantissa bits: the module's own contribution (out - x) keeps its direction (0.998 measured).
    contribution, reference = (out - _module_input()).flatten(), (expected - _module_input()).flatten()
    assert torch.nn.functional.cosine_similarity(contribution, reference, dim=0) > 0.99


