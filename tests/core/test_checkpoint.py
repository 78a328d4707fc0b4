"""Motion-module files: formats, version detection, and clear refusals."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch
from tiny_models import TINY_CHANNELS, tiny_motion_state_dict

from motionclone import MotionModuleFormatError, detect_motion_module, load_motion_module
from motionclone.motion_module import AnimateDiffMotionModel


def _save(state, path):
    if str(path).endswith(".safetensors"):
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return str(path)


@pytest.mark.parametrize(
    "version, has_mid, max_frames",
    [("v1", False, 24), ("v2", True, 32), ("v3", False, 32), ("AnimateLCM", True, 64)],
)
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_versions_are_detected_and_weights_load_exactly(tmp_path, version, has_mid, max_frames, suffix):
    state = tiny_motion_state_dict(version, seed=3)
    model, spec = load_motion_module(_save(state, tmp_path / f"mm{suffix}"))
    assert (spec.version, spec.has_mid_block, spec.max_frames, spec.channels) == (
        version, has_mid, max_frames, TINY_CHANNELS
    )
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert model.max_frames == max_frames and not any(p.requires_grad for p in model.parameters())
    assert version in spec.describe() and f"{max_frames} frames" in spec.describe()


def test_animatelcm_positional_encoding_is_rebuilt_sinusoidally(tmp_path):
    model, _ = load_motion_module(_save(tiny_motion_state_dict("AnimateLCM"), tmp_path / "lcm.safetensors"))
    reference = AnimateDiffMotionModel(TINY_CHANNELS, True, 64)
    pe = (model.up_blocks[1].motion_modules[0].temporal_transformer.transformer_blocks[0]
          .attention_blocks[0].pos_encoder.pe)
    assert pe.shape == (1, 64, 128)
    assert torch.equal(pe, reference.up_blocks[1].motion_modules[0].temporal_transformer.transformer_blocks[0]
                       .attention_blocks[0].pos_encoder.pe)


def test_ckpt_wrapped_in_state_dict_key_loads(tmp_path):
    path = _save({"state_dict": tiny_motion_state_dict("v2")}, tmp_path / "wrapped.ckpt")
    assert load_motion_module(path)[1].version == "v2"


def test_full_size_v3_layout_is_detected_from_shapes():
    with torch.device("meta"):
        state = AnimateDiffMotionModel((320, 640, 1280, 1280), False, 32).state_dict()
    spec = detect_motion_module(state)
    assert (spec.version, spec.channels, spec.max_frames) == ("v3", (320, 640, 1280, 1280), 32)


def test_truncated_file_is_refused_naming_the_file(tmp_path):
    path = _save(tiny_motion_state_dict("v3"), tmp_path / "broken.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(MotionModuleFormatError, match="broken.safetensors.*damaged"):
        load_motion_module(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_ckpt_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"down_blocks.0.motion_modules.0.x": _Payload()}, str(path))
    with pytest.raises(MotionModuleFormatError, match="evil.ckpt.*never runs code"):
        load_motion_module(str(path))


def test_missing_keys_are_refused(tmp_path):
    state = tiny_motion_state_dict("v3")
    del state["up_blocks.2.motion_modules.1.temporal_transformer.proj_out.weight"]
    with pytest.raises(MotionModuleFormatError, match="incomplete.*1 missing"):
        load_motion_module(_save(state, tmp_path / "partial.safetensors"))


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"down_blocks.0.temporal_attentions.0.transformer_blocks.0.attention_blocks.0."
          "pos_encoder.positional_encoding": (1, 24, 8)}, "HotShot-XL"),
        ({"down_blocks.0.motion_modules.0.transformer_blocks.0.attn1.to_q.weight": (8, 8)}, "diffusers MotionAdapter"),
        ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3)}, "no AnimateDiff motion modules"),
        ({f"down_blocks.{i}.motion_modules.0.temporal_transformer.proj_in.weight": (8, 8) for i in range(3)}, "SDXL"),
        ({"conv_in.weight": (8, 9, 3, 3),
          "down_blocks.3.motion_modules.0.temporal_transformer.proj_in.weight": (8, 8)}, "PIA"),
        ({}, "empty"),
    ],
)
def test_foreign_files_are_refused_with_what_they_are(tmp_path, keys, message):
    state = {k: torch.zeros(shape) for k, shape in keys.items()}
    path = _save(state, tmp_path / "foreign.safetensors")
    with pytest.raises(MotionModuleFormatError, match=message) as error:
        load_motion_module(path)
    assert "foreign.safetensors" in str(error.value)


def test_missing_file_is_a_motionclone_error(tmp_path):
    with pytest.raises(MotionModuleFormatError, match="does not exist"):
        load_motion_module(str(tmp_path / "nope.ckpt"))


def test_loader_builds_the_requested_storage_dtype_and_converts_copies(tmp_path):
    from motionclone import convert_motion_model

    state = tiny_motion_state_dict("v2", seed=3)
    path = _save(state, tmp_path / "mm.safetensors")
    model, _ = load_motion_module(path, dtype=torch.float16, compute_dtype=torch.float32)
    assert model.weight_dtype == torch.float16 and model.compute_dtype == torch.float32
    assert all(torch.equal(model.state_dict()[k], v.half()) for k, v in state.items() if not k.endswith(".pe"))
    converted = convert_motion_model(model, dtype=torch.float32)
    assert converted.weight_dtype == torch.float32 and converted.compute_dtype is None
    assert converted.family == model.family == "AnimateDiff v2 SD1.5"
    assert all(torch.equal(converted.state_dict()[k], v.float()) for k, v in model.state_dict().items())
    assert model.weight_dtype == torch.float16 and not any(p.requires_grad for p in converted.parameters())
