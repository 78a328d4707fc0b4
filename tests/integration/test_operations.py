"""The motion module as a ComfyUI model: comfy.ops layers, the MODEL's weight dtypes, fp16 and fp8 storage."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from comfy_harness import loaded_pack_module
from prompts import FRAMES, motionclone_prompt, video_prompt
from tiny_models import TINY_CHANNELS, tiny_motion_state_dict


def _latent(path) -> torch.Tensor:
    return safetensors.torch.load_file(str(path))["samples"]


def _load(comfyui, motion_module="tiny_v3.safetensors"):
    return comfyui.node("MotionCloneLoadAnimateDiff").execute(motion_module=motion_module).args[0]


def _apply(comfyui, model, motion):
    return comfyui.node("MotionCloneApplyAnimateDiff").execute(
        model=model, motion_model=motion, beta_schedule="sqrt_linear"
    ).args[0]


def _tiny_unet(comfyui, weight_dtype="default"):
    return comfyui.node("MotionCloneTestTinySD15")().build(seed=1, weight_dtype=weight_dtype)[0]


def _plain_torch_motion_model():
    # The pack's class as ComfyUI loaded it: the UNet's patch recognises its motion modules by that class.
    model = loaded_pack_module("motionclone").AnimateDiffMotionModel(TINY_CHANNELS, False, 32)
    model.load_state_dict(tiny_motion_state_dict("v3", seed=11))
    return model.eval().requires_grad_(False)


def _module_input():
    return torch.randn(2 * FRAMES, 128, 4, 4, generator=torch.Generator().manual_seed(3))


def _ksample(comfyui, model):
    positive = comfyui.node("MotionCloneTestRandomConditioning")().build(2)[0]
    negative = comfyui.node("MotionCloneTestRandomConditioning")().build(3)[0]
    latent = {"samples": torch.zeros(FRAMES, 4, 16, 16)}
    return comfyui.node("KSampler")().sample(
        model, 3, 3, 7.5, "ddim", "ddim_uniform", positive, negative, latent
    )[0]["samples"]


def test_loader_builds_comfy_layers_in_comfyuis_unet_dtype(comfyui):
    import comfy.ops

    motion = _load(comfyui).model
    linears = [m for m in motion.modules() if isinstance(m, torch.nn.Linear)]
    norms = [m for m in motion.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))]
    assert linears and all(type(m) is comfy.ops.disable_weight_init.Linear for m in linears)
    assert {type(m) for m in norms} == {
        comfy.ops.disable_weight_init.LayerNorm, comfy.ops.disable_weight_init.GroupNorm
    }
    assert all(hasattr(m, "comfy_cast_weights") for m in linears + norms)  # what low-VRAM partial loading looks for
    assert motion.weight_dtype == torch.float32 and motion.compute_dtype is None  # ComfyUI's choice on a CPU


def test_default_fp32_path_is_bit_identical_to_plain_torch_layers(comfyui):
    """Same weights built both ways: the module outputs and a whole KSampler run agree bit for bit."""
    patching = loaded_pack_module("nodes.engine.motion_model")
    comfy_built = _load(comfyui)
    plain = _plain_torch_motion_model()
    x = _module_input()
    for ours, reference in zip(comfy_built.model.modules_in_forward_order(), plain.modules_in_forward_order()):
        if ours.channels == x.shape[1]:
            assert torch.equal(ours(x, FRAMES), reference(x, FRAMES)), ours.name
    model = _tiny_unet(comfyui)
    with torch.inference_mode():
        from_comfy_layers = _ksample(comfyui, _apply(comfyui, model, comfy_built))
        from_torch_layers = _ksample(comfyui, _apply(comfyui, model, patching.wrap_motion_model(plain)))
    assert torch.equal(from_comfy_layers, from_torch_layers)


def test_apply_converts_the_motion_module_to_the_models_fp16_storage_with_fp32_compute(comfyui):
    import comfy.ops

    patching = loaded_pack_module("nodes.engine.motion_model")
    motion = _load(comfyui)
    fp16_model = _tiny_unet(comfyui, "fp16")
    assert (fp16_model.model.get_dtype(), fp16_model.model.manual_cast_dtype) == (torch.float16, torch.float32)
    converted = patching.motion_model_of(_apply(comfyui, fp16_model, motion))
    # the loader's output is untouched
    assert converted is not motion.model and motion.model.weight_dtype == torch.float32
    assert converted.weight_dtype == torch.float16 and converted.compute_dtype == torch.float32
    assert all(type(m) is comfy.ops.manual_cast.Linear for m in converted.modules() if isinstance(m, torch.nn.Linear))
    same = patching.motion_model_of(_apply(comfyui, _tiny_unet(comfyui), motion))
    assert same is motion.model  # matching dtypes: no copy
    x = _module_input()
    module, reference = converted.up_blocks[1].motion_modules[0], motion.model.up_blocks[1].motion_modules[0]
    out, expected = module(x, FRAMES), reference(x, FRAMES)
    assert out.dtype == torch.float32
    # Only the weights are rounded to fp16 (2^-11 relative): measured 4.6e-3 at most on a contribution up to ~8.3.
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-2)
    assert not torch.equal(out, expected)


def test_fp16_storage_samples_close_to_the_fp32_model(comfyui):
    motion = _load(comfyui)
    with torch.inference_mode():
        fp32 = _ksample(comfyui, _apply(comfyui, _tiny_unet(comfyui), motion))
        fp16 = _ksample(comfyui, _apply(comfyui, _tiny_unet(comfyui, "fp16"), motion))
    assert torch.isfinite(fp16).all()
    # UNet and motion weights rounded to fp16, compute in fp32, 3 ddim steps: measured 7e-4 relative.
    assert (fp16 - fp32).norm() / fp32.norm() < 2e-2


@pytest.fixture
def fp8_unet_flag():
    """ComfyUI started with --fp8_e4m3fn-unet."""
    from comfy.cli_args import args

    before = args.fp8_e4m3fn_unet
    args.fp8_e4m3fn_unet = True
    yield
    args.fp8_e4m3fn_unet = before


def _fp8_prompt(path, weight):
    prompt = motionclone_prompt(str(path), weight=weight, steps=4, guided_steps=2)
    prompt["model"]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    return prompt


def test_fp8_storage_samples_and_guides(comfyui, tmp_path, fp8_unet_flag):
    """As with --fp8_e4m3fn-unet and a UNet in fp8: fp8 weights, fp32 compute (CPU), gradients through both."""
    patching = loaded_pack_module("nodes.engine.motion_model")
    motion = _load(comfyui).model
    assert motion.weight_dtype == torch.float8_e4m3fn and motion.compute_dtype == torch.float32
    norm = motion.up_blocks[1].motion_modules[0].temporal_transformer.norm
    assert norm.weight.dtype == torch.float8_e4m3fn and norm.comfy_cast_weights  # plain GroupNorm has no fp8 kernel
    assert patching.motion_model_of(
        _apply(comfyui, _tiny_unet(comfyui, "fp8_e4m3fn"), _load(comfyui))
    ).weight_dtype == torch.float8_e4m3fn
    unguided, guided = tmp_path / "unguided.safetensors", tmp_path / "guided.safetensors"
    unguided_losses = comfyui.run_prompt(_fp8_prompt(unguided, 0.0))["sample"]["motion_loss"]
    losses = comfyui.run_prompt(_fp8_prompt(guided, 2000.0))["sample"]["motion_loss"]
    assert len(losses) == 2 and all(loss > 0 and loss == loss for loss in losses)
    assert losses[0] == pytest.approx(unguided_losses[0], rel=1e-5)  # the same start; then guidance lowers it
    assert losses[1] < unguided_losses[1]
    assert torch.isfinite(_latent(guided)).all() and torch.isfinite(_latent(unguided)).all()
    assert (_latent(guided) - _latent(unguided)).abs().mean() > 1e-3


def test_fp8_model_with_an_fp32_loaded_motion_module_animates(comfyui, tmp_path):
    """UNETLoader's weight_dtype fp8_e4m3fn without the flag: Apply stores the motion module in fp8 too."""
    path = tmp_path / "fp8.safetensors"
    prompt = video_prompt(str(path), motion_module="tiny_v3.safetensors", beta_schedule="keep MODEL's")
    prompt["model"]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    comfyui.run_prompt(prompt)
    plain_path = tmp_path / "plain_fp8.safetensors"
    plain = video_prompt(str(plain_path))
    plain["model"]["inputs"]["weight_dtype"] = "fp8_e4m3fn"
    comfyui.run_prompt(plain)
    animated, unanimated = _latent(path), _latent(plain_path)
    assert torch.isfinite(animated).all() and (animated - unanimated).abs().mean() > 1e-3


def test_low_vram_partial_loading_casts_the_motion_layers_per_call(comfyui):
    """ComfyUI's partial load leaves layers over the budget offloaded and switches their per-call casting on."""
    motion = _load(comfyui)
    module = motion.model.up_blocks[1].motion_modules[0]
    x = _module_input()
    expected = module(x, FRAMES)
    motion.load(motion.load_device, lowvram_model_memory=1, full_load=False)
    try:
        layers = [m for m in motion.model.modules() if hasattr(m, "comfy_cast_weights")]
        cast = [m for m in layers if m.comfy_cast_weights]
        assert cast and len(cast) >= len(layers) // 2
        assert torch.equal(module(x, FRAMES), expected)
    finally:
        motion.unpatch_model(motion.offload_device)
    assert not any(m.comfy_cast_weights for m in layers)
