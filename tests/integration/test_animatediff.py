"""AnimateDiff inside a real ComfyUI: registry, sampling through stock samplers, LoRA, isolation, gradients."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.torch
import torch
from comfy_harness import PromptFailed, loaded_pack_module
from prompts import FRAMES, video_prompt
from tiny_models import tiny_motion_state_dict

OUR_NODES = ("MotionCloneLoadAnimateDiff", "MotionCloneApplyAnimateDiff")


def _latent(path) -> torch.Tensor:
    return safetensors.torch.load_file(str(path))["samples"]


def _sample(comfyui, tmp_path, name, **kwargs) -> torch.Tensor:
    path = str(tmp_path / f"{name}.safetensors")
    comfyui.run_prompt(video_prompt(path, **kwargs))
    return _latent(path)


def test_nodes_are_registered_with_tooltips_on_every_input(comfyui):
    for node_id in OUR_NODES:
        node = comfyui.node(node_id)
        inputs = node.INPUT_TYPES()["required"]
        assert inputs, node_id
        for name, spec in inputs.items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
        assert node.CATEGORY == "MotionClone"
    spec = comfyui.node("MotionCloneLoadAnimateDiff").INPUT_TYPES()["required"]["motion_module"]
    options = spec[0] if isinstance(spec[0], list) else spec[1]["options"]  # classic and V3 combo layouts
    assert {"tiny_v3.safetensors", "tiny_v3_zero.safetensors", "tiny_v2.ckpt"} <= set(options)


def test_zero_initialised_module_leaves_sampling_bit_identical(comfyui, tmp_path):
    plain = _sample(comfyui, tmp_path, "plain")
    animated = _sample(comfyui, tmp_path, "zero", motion_module="tiny_v3_zero.safetensors",
                       beta_schedule="keep MODEL's")
    assert plain.shape == (FRAMES, 4, 16, 16)
    assert torch.equal(plain, animated)


@pytest.mark.parametrize("motion_module", ["tiny_v3.safetensors", "tiny_v2.ckpt"])
def test_trained_module_changes_the_video_through_ksampler(comfyui, tmp_path, motion_module):
    plain = _sample(comfyui, tmp_path, "plain")
    animated = _sample(comfyui, tmp_path, "animated", motion_module=motion_module, beta_schedule="keep MODEL's")
    assert torch.isfinite(animated).all()
    assert (animated - plain).abs().mean() > 1e-3


def test_samplercustomadvanced_samples_the_patched_model(comfyui, tmp_path):
    zero = _sample(comfyui, tmp_path, "zero", motion_module="tiny_v3_zero.safetensors", sampler="SamplerCustomAdvanced")
    animated = _sample(comfyui, tmp_path, "animated", motion_module="tiny_v3.safetensors",
                       sampler="SamplerCustomAdvanced")
    assert torch.isfinite(animated).all() and (animated - zero).abs().mean() > 1e-3


def test_sqrt_linear_schedule_is_patched_in(comfyui):
    model = comfyui.node("MotionCloneTestTinySD15")().build(seed=1)[0]
    motion = comfyui.node("MotionCloneLoadAnimateDiff").execute(motion_module="tiny_v3.safetensors").args[0]
    patched = comfyui.node("MotionCloneApplyAnimateDiff").execute(
        model=model, motion_model=motion, beta_schedule="sqrt_linear"
    ).args[0]
    betas = np.linspace(0.00085, 0.012, 1000, dtype=np.float64)  # diffusers "linear", AnimateDiff's schedule
    alphas_cumprod = np.cumprod(1 - betas)
    expected = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    sigmas = patched.get_model_object("model_sampling").sigmas.double().numpy()
    np.testing.assert_allclose(sigmas, expected, rtol=1e-5)
    assert model.get_model_object("model_sampling").sigmas[-1].item() == pytest.approx(14.6146, abs=1e-3)


def test_lora_patched_model_animates_and_yields_gradients_inside_the_executor(comfyui, tmp_path):
    """The gradient of a loss on up_blocks.1 temporal attention, taken mid-sampling in PromptExecutor."""
    _write_tiny_lora(os.path.join(comfyui.models_dir, "loras", "tiny_lora.safetensors"))
    report = tmp_path / "probe.json"
    without = _sample(comfyui, tmp_path, "nolora", motion_module="tiny_v3.safetensors")
    with_lora = _sample(comfyui, tmp_path, "lora", motion_module="tiny_v3.safetensors", lora="tiny_lora.safetensors",
                        probe_path=str(report))
    assert (with_lora - without).abs().mean() > 1e-4
    records = json.loads(report.read_text())
    assert len(records) == 3  # one per sampling step
    for record in records:
        assert record["inference_mode_outside"], "the probe must run inside ComfyUI's inference mode"
        assert record["finite"] and record["grad_norm"] > 0
        assert record["grad_shape"] == record["x_shape"] == [FRAMES, 4, 16, 16] and record["frames"] == FRAMES
        assert record["later_blocks_run"] == 0, "the gradient forward ran past up_blocks.1"
        assert record["central_difference"] == pytest.approx(record["directional_derivative"], rel=0.05)


def _write_tiny_lora(path):
    generator = torch.Generator().manual_seed(5)
    state = {}
    for block in ("output_blocks.3.1", "output_blocks.4.1", "input_blocks.1.1"):
        base = f"diffusion_model.{block}.transformer_blocks.0.attn1.to_q"
        width = 128 if block.startswith("output") else 32
        state[f"{base}.lora_up.weight"] = torch.randn(width, 2, generator=generator)
        state[f"{base}.lora_down.weight"] = torch.randn(2, width, generator=generator)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    safetensors.torch.save_file(state, path)


def _patcher_state(model):
    return (
        {k: len(v) for k, v in model.patches.items()},
        dict(model.object_patches),
        repr(model.model_options),
        {k: list(v) for k, v in model.injections.items()},
        {k: len(v) for k, v in model.additional_models.items()},
        repr(model.wrappers),
    )


def _ksample(comfyui, model, seed=3):
    positive = comfyui.node("MotionCloneTestRandomConditioning")().build(2)[0]
    negative = comfyui.node("MotionCloneTestRandomConditioning")().build(3)[0]
    latent = {"samples": torch.zeros(FRAMES, 4, 16, 16)}
    return comfyui.node("KSampler")().sample(
        model, seed, 2, 7.5, "ddim", "ddim_uniform", positive, negative, latent
    )[0]["samples"]


def test_original_model_is_untouched_after_apply_and_after_sampling(comfyui):
    with torch.inference_mode():
        model = comfyui.node("MotionCloneTestTinySD15")().build(seed=1)[0]
        before = _patcher_state(model)
        plain = _ksample(comfyui, model)
        motion = comfyui.node("MotionCloneLoadAnimateDiff").execute(motion_module="tiny_v3.safetensors").args[0]
        patched = comfyui.node("MotionCloneApplyAnimateDiff").execute(
            model=model, motion_model=motion, beta_schedule="sqrt_linear"
        ).args[0]
        assert _patcher_state(model) == before
        animated = _ksample(comfyui, patched)
        after = _ksample(comfyui, model)  # the animated run left the UNet injected; ComfyUI must eject it
    assert _patcher_state(model) == before
    assert not any(type(m).__name__ == "MotionModule" for m in model.model.diffusion_model.modules())
    assert torch.equal(plain, after) and not torch.equal(plain, animated)


def _apply(comfyui, model, motion_module="tiny_v3.safetensors"):
    motion = comfyui.node("MotionCloneLoadAnimateDiff").execute(motion_module=motion_module).args[0]
    return comfyui.node("MotionCloneApplyAnimateDiff").execute(
        model=model, motion_model=motion, beta_schedule="sqrt_linear"
    ).args[0]


def test_refusals_name_the_problem(comfyui, tmp_path):
    errors = loaded_pack_module("motionclone.errors")
    with torch.inference_mode():
        model = comfyui.node("MotionCloneTestTinySD15")().build(seed=1)[0]
        patched = _apply(comfyui, model)
        with pytest.raises(errors.IncompatibleModelError, match="already carries MotionClone"):
            _apply(comfyui, patched)
        ade = model.clone()
        import comfy.patcher_extension

        ade.set_injections("ADE", [comfy.patcher_extension.PatcherInjection(lambda p: None, lambda p: None)])
        with pytest.raises(errors.IncompatibleModelError, match="AnimateDiff-Evolved"):
            _apply(comfyui, ade)
        sd2 = comfyui.node("MotionCloneTestTinySD15")().build(seed=1, architecture="SD20")[0]
        with pytest.raises(errors.IncompatibleModelError, match="need an SD1.5 MODEL.*SD20"):
            _apply(comfyui, sd2)
        wide = os.path.join(comfyui.models_dir, "animatediff_models", "wide.safetensors")
        safetensors.torch.save_file(tiny_motion_state_dict("v3", channels=(64, 128, 256, 256)), wide)
        with pytest.raises(errors.IncompatibleModelError, match="64 channels but the UNet block"):
            _apply(comfyui, model, "wide.safetensors")


def test_too_many_frames_is_a_clear_error_through_the_executor(comfyui, tmp_path):
    with pytest.raises(PromptFailed, match="33 frames but the motion module supports at most 32") as error:
        comfyui.run_prompt(
            video_prompt(str(tmp_path / "x.safetensors"), motion_module="tiny_v3.safetensors", frames=33)
        )
    assert error.value.details["exception_type"].endswith("FrameCountError")


def test_long_videos_run_through_comfyui_context_windows(comfyui, tmp_path):
    if tuple(int(p) for p in comfyui.version.split(".")[:2]) < (0, 4):
        pytest.skip("ComfyUI < 0.4 context windows fail on per-frame timesteps (comfy/context_windows.py set_step)")
    video = _sample(comfyui, tmp_path, "long", motion_module="tiny_v3.safetensors", frames=40, context_length=16,
                    steps=2)
    assert video.shape == (40, 4, 16, 16) and torch.isfinite(video).all()
    with pytest.raises(PromptFailed, match="at most 32 frames"):  # each window is still checked
        comfyui.run_prompt(video_prompt(str(tmp_path / "x.safetensors"), motion_module="tiny_v3.safetensors",
                                        frames=40, context_length=36, steps=1))


def test_comfyui_reads_the_pyproject(comfyui):
    """ComfyUI's own parser of custom-node pyproject files (used for version requirements)."""
    parser = pytest.importorskip("comfy_config.config_parser")
    config = parser.extract_node_configuration(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    )
    assert config.project.name == "comfyui-motionclone"
    assert config.tool_comfy.publisher_id and config.tool_comfy.display_name == "MotionClone"
    assert config.project.supported_comfyui_version == ">=0.8.0"
    assert config.tool_comfy.icon.endswith("icon.svg")
    assert config.tool_comfy.includes == ["workflows"]
    assert [m.location for m in config.tool_comfy.models] == ["/animatediff_models/v3_sd15_mm.ckpt"]


def test_modules_are_injected_where_animatediff_puts_them_and_ejected_after(comfyui):
    import comfy.model_management

    with torch.inference_mode():
        model = comfyui.node("MotionCloneTestTinySD15")().build(seed=1)[0]
        patched = _apply(comfyui, model, "tiny_v2.ckpt")  # v2: with the mid-block module
        comfy.model_management.load_models_gpu([patched])
        unet = model.model.diffusion_model
        layout = {
            **{f"input_blocks.{i}": [type(layer).__name__ for layer in b] for i, b in enumerate(unet.input_blocks)},
            "middle_block": [type(layer).__name__ for layer in unet.middle_block],
            **{f"output_blocks.{i}": [type(layer).__name__ for layer in b] for i, b in enumerate(unet.output_blocks)},
        }
        comfy.model_management.unload_all_models()
    assert layout["input_blocks.1"] == ["ResBlock", "SpatialTransformer", "MotionModule"]
    assert layout["input_blocks.3"] == ["Downsample"]
    assert layout["input_blocks.10"] == ["ResBlock", "MotionModule"]
    assert layout["middle_block"] == ["ResBlock", "SpatialTransformer", "MotionModule", "ResBlock"]
    assert layout["output_blocks.2"] == ["ResBlock", "MotionModule", "Upsample"]
    assert layout["output_blocks.5"] == ["ResBlock", "SpatialTransformer", "MotionModule", "Upsample"]
    assert layout["output_blocks.11"] == ["ResBlock", "SpatialTransformer", "MotionModule"]
    assert sum(names.count("MotionModule") for names in layout.values()) == 21
    assert not any(type(m).__name__ == "MotionModule" for m in unet.modules())


def test_patched_model_is_reusable_and_clonable_after_sampling(comfyui):
    with torch.inference_mode():
        patched = _apply(comfyui, comfyui.node("MotionCloneTestTinySD15")().build(seed=1)[0])
        first = _ksample(comfyui, patched)
        second = _ksample(comfyui, patched)  # already loaded and injected
        downstream = patched.clone()  # cloned while injected, as a node after 'Apply AnimateDiff' would
        third = _ksample(comfyui, downstream)
    assert torch.equal(first, second) and torch.equal(first, third)
