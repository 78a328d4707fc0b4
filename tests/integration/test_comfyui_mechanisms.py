"""How the pack meets what ComfyUI changed in 2026, on every ComfyUI the tier runs against (tiny models):

- patch and wrapper objects are shared between MODEL clones (0.14): guided branches of one MODEL in one prompt
  each give what they give alone;
- per-run state is released after sampling: the MODEL leaves a guided run with the weights it came with;
- `forward_timestep_embed_patch` is consulted for every layer, the first matching class wins (0.20): our handler
  runs for our motion modules only, beside another pack's temporal layers and handler;
- multi-GPU work units (0.23) and ComfyUI's own context windows split forwards: refused by every node that reads
  or guides motion, at its door and during sampling;
- dynamic VRAM (0.16): a guided run on a MODEL that ComfyUI loads dynamically runs on its classic delegate.
"""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from comfy_harness import PromptFailed, loaded_pack_module
from prompts import FRAMES, HEIGHT, WIDTH

STEPS, GUIDED = 4, 2


def _latent(path) -> torch.Tensor:
    return safetensors.torch.load_file(str(path))["samples"]


def _base(frames: int = FRAMES) -> dict:
    """Tiny SD1.5 + v3 module ('apply'), prompts, an empty latent, the moving-square clip and its VAE."""
    return {
        "model": {"class_type": "MotionCloneTestTinySD15", "inputs": {"seed": 1}},
        "load": {"class_type": "MotionCloneLoadAnimateDiff", "inputs": {"motion_module": "tiny_v3.safetensors"}},
        "apply": {"class_type": "MotionCloneApplyAnimateDiff",
                  "inputs": {"model": ["model", 0], "motion_model": ["load", 0], "beta_schedule": "sqrt_linear"}},
        "positive": {"class_type": "MotionCloneTestRandomConditioning", "inputs": {"seed": 2}},
        "negative": {"class_type": "MotionCloneTestRandomConditioning", "inputs": {"seed": 3}},
        "reference_prompt": {"class_type": "MotionCloneTestRandomConditioning", "inputs": {"seed": 4}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": frames}},
        "clip": {"class_type": "MotionCloneTestMovingSquare", "inputs": {"frames": frames, "width": 160, "height": 96}},
        "vae": {"class_type": "MotionCloneTestTinyVAE", "inputs": {"seed": 0}},
    }


def _extract(prompt: dict, name: str, model: list, seed: int, timestep: int) -> list:
    prompt[name] = {"class_type": "MotionCloneExtractMotion", "inputs": {
        "model": model, "images": ["clip", 0], "vae": ["vae", 0], "conditioning": ["reference_prompt", 0],
        "width": WIDTH, "height": HEIGHT, "resize": "stretch", "timestep": timestep, "seed": seed,
        "blocks": "up_blocks.1", "top_k": 1}}
    return [name, 0]


def _ksampler(model: list) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": model, "seed": 5, "steps": STEPS, "cfg": 8.5, "sampler_name": "ddim", "scheduler": "ddim_uniform",
        "positive": ["positive", 0], "negative": ["negative", 0], "latent_image": ["latent", 0], "denoise": 1.0}}


def _guidance(model: list, motion: list, weight: float, **extra) -> dict:
    return {"class_type": "MotionCloneGuidance", "inputs": {
        "model": model, "motion": motion, "motion_weight": weight, "guided_fraction": 0.5, "warm_up_steps": 1,
        "cool_down_steps": 1, **extra}}


def _sampler(model: list, motion: list, weight: float, **extra) -> dict:
    return {"class_type": "MotionCloneSampler", "inputs": {
        "model": model, "seed": 5, "steps": STEPS, "guided_steps": GUIDED, "guided_fraction": 0.3, "cfg": 8.5,
        "positive": ["positive", 0], "negative": ["negative", 0], "latent_image": ["latent", 0], "motion": motion,
        "motion_weight": weight, "warm_up_steps": 1, "cool_down_steps": 1, **extra}}


# Branches sampled from one MODEL ('apply', or one Context Windows node on it): (nodes by name, output node).
# Motions "a" and "b" are read at different timesteps and seeds; weights differ too.
def _branch_nodes(branch: str) -> dict:
    apply, windowed = ["apply", 0], ["windows", 0]
    return {
        "plain": {"out": _ksampler(apply)},
        "guidance 2000 a": {"g": _guidance(apply, ["motion_a", 0], 2000.0), "out": _ksampler(["g", 0])},
        "guidance 500 b": {"g": _guidance(apply, ["motion_b", 0], 500.0), "out": _ksampler(["g", 0])},
        "sampler 2000 a": {"out": _sampler(apply, ["motion_a", 0], 2000.0)},
        "sampler 500 b semantic": {
            "semantic": {"class_type": "MotionCloneSemanticGuidance",
                         "inputs": {"weight_up_blocks_1": 500.0, "weight_up_blocks_2": 0.0}},
            "out": _sampler(apply, ["motion_b", 0], 500.0, semantic_guidance=["semantic", 0])},
        "windowed sampler 2000 a": {"out": _sampler(windowed, ["windowed_motion_a", 0], 2000.0)},
        "windowed guidance 500 b": {"g": _guidance(windowed, ["windowed_motion_b", 0], 500.0),
                                    "out": _ksampler(["g", 0])},
    }[branch]


WINDOWED_FRAMES = 6  # in windows of 4 overlapping by 2: two windows


def _branches_prompt(tmp_path, branches: list[str], tag: str) -> dict:
    windowed = any(b.startswith("windowed") for b in branches)
    prompt = _base(WINDOWED_FRAMES if windowed else FRAMES)
    if windowed:
        prompt["windows"] = {"class_type": "MotionCloneContextWindows", "inputs": {
            "model": ["apply", 0], "length": 4, "overlap": 2, "schedule": "uniform", "fusion": "pyramid"}}
        _extract(prompt, "windowed_motion_a", ["windows", 0], seed=5, timestep=400)
        _extract(prompt, "windowed_motion_b", ["windows", 0], seed=6, timestep=300)
    else:
        _extract(prompt, "motion_a", ["apply", 0], seed=5, timestep=400)
        _extract(prompt, "motion_b", ["apply", 0], seed=6, timestep=300)
    for index, branch in enumerate(branches):
        nodes = _branch_nodes(branch)
        renamed = {name: f"{name}_{index}" for name in nodes}
        for name, node in nodes.items():
            inputs = {key: [renamed[value[0]], value[1]] if isinstance(value, list) and value[0] in renamed else value
                      for key, value in node["inputs"].items()}
            prompt[renamed[name]] = {**node, "inputs": inputs}
        prompt[f"save_{index}"] = {"class_type": "MotionCloneTestSaveLatent", "inputs": {
            "samples": [renamed["out"], 0], "path": str(tmp_path / f"{tag}_{branch}.safetensors")}}
    return prompt


@pytest.mark.parametrize("branches", [
    ["guidance 2000 a", "guidance 500 b", "plain", "sampler 2000 a", "sampler 500 b semantic"],
    ["windowed sampler 2000 a", "windowed guidance 500 b"],
], ids=["window-free", "context windows"])
def test_guided_branches_of_one_model_in_one_prompt_each_give_their_lone_result(comfyui, tmp_path, branches):
    comfyui.run_prompt(_branches_prompt(tmp_path, branches, "together"))
    for branch in branches:
        comfyui.run_prompt(_branches_prompt(tmp_path, [branch], "alone"))
    results = {branch: _latent(tmp_path / f"together_{branch}.safetensors") for branch in branches}
    for branch in branches:
        assert torch.equal(results[branch], _latent(tmp_path / f"alone_{branch}.safetensors")), branch
    for first, second in zip(branches, branches[1:]):  # the branches differ: sharing would show
        assert not torch.equal(results[first], results[second]), (first, second)


def _tiny_models(comfyui):
    model = comfyui.node("MotionCloneTestTinySD15")().build(seed=1)[0]
    motion = comfyui.node("MotionCloneLoadAnimateDiff").execute(motion_module="tiny_v3.safetensors").args[0]
    return comfyui.node("MotionCloneApplyAnimateDiff").execute(model=model, motion_model=motion,
                                                               beta_schedule="sqrt_linear").args[0]


def _guided_run(comfyui, model, **extra):
    """Extract Motion, then MotionClone Sampler: `(latent, motion)`."""
    conditioning = [comfyui.node("MotionCloneTestRandomConditioning")().build(seed)[0] for seed in (2, 3, 4)]
    clip = comfyui.node("MotionCloneTestMovingSquare")().build(FRAMES, 160, 96)[0]
    vae = comfyui.node("MotionCloneTestTinyVAE")().build(0)[0]
    motion = comfyui.node("MotionCloneExtractMotion").execute(
        model=model, width=WIDTH, height=HEIGHT, resize="stretch", timestep=400, seed=5, blocks="up_blocks.1", top_k=1,
        images=clip, vae=vae, conditioning=conditioning[2]).args[0]
    latent = {"samples": torch.zeros(FRAMES, 4, HEIGHT // 8, WIDTH // 8)}
    out = comfyui.node("MotionCloneSampler").execute(
        model=model, seed=5, steps=STEPS, guided_steps=GUIDED, guided_fraction=0.3, cfg=8.5, positive=conditioning[0],
        negative=conditioning[1], latent_image=latent, motion=motion, motion_weight=2000.0, warm_up_steps=1,
        cool_down_steps=1, **extra).args[0]
    return out["samples"], motion


def _weights(model) -> dict:
    """Every parameter and buffer of the UNet and the motion model, by (module, name): the tensor object itself.
    By module object, not by path: a loaded UNet holds the motion modules injected, which shifts the paths."""
    roots = [model.model.diffusion_model, *(p.model for p in model.get_additional_models_with_key("motionclone"))]
    return {(id(module), name): tensor for root in roots for module in root.modules()
            for table in (module._parameters, module._buffers) for name, tensor in table.items() if tensor is not None}


@pytest.mark.parametrize("memory_mode", ["fast", "low"])
def test_a_guided_run_leaves_the_model_with_the_weights_it_came_with_and_a_second_run_is_bit_identical(
    comfyui, memory_mode
):
    with torch.inference_mode():
        model = _tiny_models(comfyui)
        before = _weights(model)
        assert all(tensor.is_inference() for tensor in before.values())  # as ComfyUI's loaders leave them
        grad_mode = torch.is_grad_enabled()
        first, _ = _guided_run(comfyui, model, memory_mode=memory_mode)
        after = _weights(model)
        second, _ = _guided_run(comfyui, model, memory_mode=memory_mode)
        assert torch.is_grad_enabled() == grad_mode
    changed = [name for name in before if after[name] is not before[name]]
    assert not changed, f"{len(changed)} weights replaced after the run, e.g. {changed[:3]}"
    assert torch.equal(first, second)


def test_an_interrupted_guided_run_also_puts_the_weights_back(comfyui):
    import comfy.model_management

    with torch.inference_mode():
        model = _tiny_models(comfyui)
        before = _weights(model)
        # in the first gradient pass (call 1 is the extraction)
        interrupting = comfyui.node("MotionCloneTestInterruptAtCall")().patch(model, 2)[0]
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _guided_run(comfyui, interrupting)
        comfy.model_management.interrupt_current_processing(False)
        after = _weights(model)
    assert [name for name in before if after[name] is not before[name]] == []


@pytest.mark.parametrize("handler_first", [False, True], ids=["their handler after ours", "their handler first"])
def test_our_timestep_embed_handler_runs_our_modules_and_never_another_packs_layers(comfyui, tmp_path, handler_first):
    report = tmp_path / "handled.json"
    with torch.inference_mode():
        alone, _ = _guided_run(comfyui, _tiny_models(comfyui))
        model = comfyui.node("MotionCloneTestForeignTemporalLayer")().patch(_tiny_models(comfyui), str(report),
                                                                            handler_first)[0]
        beside, _ = _guided_run(comfyui, model)
    handled = json.loads(report.read_text())
    assert handled and set(handled) == {"Layer"}  # their handler got their layers, never our motion modules
    assert torch.equal(alone, beside)  # their identity layers changed nothing: ours ran as without them


def _refused(comfyui, prompt: dict, node: str, cause: str) -> None:
    with pytest.raises(PromptFailed, match=f"'{node}' cannot read or guide motion {cause}"):
        comfyui.run_prompt(prompt)


SPLITTERS = {
    "multi-GPU work units": ({"class_type": "MotionCloneTestMultiGPUClone", "inputs": {}},
                             "on a MODEL set up for several GPUs \\('MultiGPU Work Units'\\)"),
    "core context windows": ({"class_type": "ContextWindowsManual",
                              "inputs": {"context_length": 4, "context_overlap": 1}},
                             "through ComfyUI's own context windows"),
}


def _with_splitter(prompt: dict, splitter: str, after: list) -> list:
    node, _ = SPLITTERS[splitter]
    prompt["splitter"] = {**node, "inputs": {**node["inputs"], "model": after}}
    return ["splitter", 0]


def _requires(comfyui, splitter: str) -> None:
    if splitter == "core context windows" and "ContextWindowsManual" not in comfyui.nodes.NODE_CLASS_MAPPINGS:
        pytest.skip(f"ComfyUI {comfyui.version} has no core context-window nodes")


@pytest.mark.parametrize("splitter", list(SPLITTERS))
@pytest.mark.parametrize("node", ["MotionClone: Extract Motion", "MotionClone Sampler", "MotionClone: Guidance",
                                  "MotionClone: Cross-Attention Mask"])
def test_every_node_that_reads_or_guides_motion_refuses_split_forwards_at_its_door(comfyui, tmp_path, splitter, node):
    _requires(comfyui, splitter)
    prompt = _base()
    motion = _extract(prompt, "motion", ["apply", 0], seed=5, timestep=400)
    split = _with_splitter(prompt, splitter, ["apply", 0])
    if node == "MotionClone: Extract Motion":
        motion = _extract(prompt, "motion", split, seed=5, timestep=400)
        prompt["save"] = {"class_type": "MotionCloneSaveMotion",
                          "inputs": {"motion": motion, "filename_prefix": "split"}}
    elif node == "MotionClone Sampler":
        prompt["out"] = _sampler(split, motion, 2000.0)
    elif node == "MotionClone: Guidance":
        prompt["g"] = _guidance(split, motion, 2000.0)
        prompt["out"] = _ksampler(["g", 0])
    else:
        prompt["tiny_clip"] = {"class_type": "MotionCloneTestTinyCLIP", "inputs": {"seed": 3}}
        prompt["encoded"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["clip", 0], "vae": ["vae", 0]}}
        prompt["out"] = {"class_type": "MotionCloneCrossAttentionMask", "inputs": {
            "model": split, "clip": ["tiny_clip", 0], "prompt": "a square moving right", "subject": "square",
            "threshold": 0.3, "blur_kernel_size": 1, "blur_sigma": 1.0, "centroid_sigma": 5.0, "timestep": 400,
            "seed": 5, "latent": ["encoded", 0]}}
        prompt["save"] = {"class_type": "MotionCloneTestSaveMask",
                          "inputs": {"mask": ["out", 0], "path": str(tmp_path / "m")}}
    if "save" not in prompt:
        prompt["save"] = {"class_type": "MotionCloneTestSaveLatent",
                          "inputs": {"samples": ["out", 0], "path": str(tmp_path / "x")}}
    _refused(comfyui, prompt, node, SPLITTERS[splitter][1])


@pytest.mark.parametrize("splitter", list(SPLITTERS))
def test_guidance_refuses_forwards_split_by_a_node_after_it_before_any_forward(comfyui, tmp_path, splitter):
    """MODEL -> Guidance -> splitter -> KSampler: only the sampling run sees the split."""
    _requires(comfyui, splitter)
    prompt = _base()
    motion = _extract(prompt, "motion", ["apply", 0], seed=5, timestep=400)
    prompt["g"] = _guidance(["apply", 0], motion, 2000.0)
    prompt["out"] = _ksampler(_with_splitter(prompt, splitter, ["g", 0]))
    prompt["save"] = {"class_type": "MotionCloneTestSaveLatent",
                      "inputs": {"samples": ["out", 0], "path": str(tmp_path / "x")}}
    import comfy.model_patcher

    if splitter == "multi-GPU work units" and not hasattr(comfy.model_patcher.ModelPatcher, "deepclone_multigpu"):
        comfyui.run_prompt(prompt)  # this ComfyUI has no multi-GPU work units: the clone is an unused extra model
        return
    _refused(comfyui, prompt, "MotionClone: Guidance", SPLITTERS[splitter][1])


def _dynamic_vram_double(comfyui, reloadable: bool = True):
    """A tiny SD1.5 MODEL on a patcher that answers `is_dynamic()` as ComfyUI's `ModelPatcherDynamic` does, with
    core's own `get_non_dynamic_delegate`, and (`reloadable`) the reload factory core loaders register. On a CPU
    ComfyUI never builds the real dynamic patcher (it falls back to the classic one), so this stands in for what
    Load Checkpoint returns on an NVIDIA GPU; everything else is core's."""
    import comfy.model_patcher

    class ReportsDynamic(comfy.model_patcher.ModelPatcher):
        non_dynamic_delegate_model = None
        get_non_dynamic_delegate = comfy.model_patcher.ModelPatcherDynamic.get_non_dynamic_delegate

        def is_dynamic(self):
            return True

    def load(disable_dynamic: bool = False):
        classic = comfyui.node("MotionCloneTestTinySD15")().build(seed=1)[0]
        patcher = (comfy.model_patcher.ModelPatcher if disable_dynamic else ReportsDynamic)(
            classic.model, classic.load_device, classic.offload_device)
        patcher.cached_patcher_init = (load, ()) if reloadable else None
        return patcher

    return load()


def _has_dynamic_vram() -> bool:
    import inspect

    import comfy.model_patcher

    return "disable_dynamic" in inspect.signature(comfy.model_patcher.ModelPatcher.clone).parameters


@pytest.mark.parametrize("memory_mode", ["fast", "low"])
def test_a_guided_run_on_a_dynamic_vram_model_samples_its_classic_delegate_with_the_classic_result(
    comfyui, memory_mode
):
    if not _has_dynamic_vram():
        pytest.skip(f"ComfyUI {comfyui.version} has no dynamic VRAM (ModelPatcher.clone takes no disable_dynamic)")
    motion_model = comfyui.node("MotionCloneLoadAnimateDiff").execute(motion_module="tiny_v3.safetensors").args[0]

    def animated(model):
        return comfyui.node("MotionCloneApplyAnimateDiff").execute(model=model, motion_model=motion_model,
                                                                   beta_schedule="sqrt_linear").args[0]

    with torch.inference_mode():
        classic, _ = _guided_run(comfyui, animated(comfyui.node("MotionCloneTestTinySD15")().build(seed=1)[0]),
                                 memory_mode=memory_mode)
        dynamic = animated(_dynamic_vram_double(comfyui))
        assert dynamic.is_dynamic()
        # every layer of the dynamic model's UNet: memory modes patch layers, which must be the delegate's
        forwards = []
        hooks = [layer.register_forward_pre_hook(lambda *a: forwards.append(torch.is_grad_enabled()))
                 for layer in dynamic.model.diffusion_model.modules()]
        try:
            delegated, _ = _guided_run(comfyui, dynamic, memory_mode=memory_mode)
        finally:
            for hook in hooks:
                hook.remove()
    # the dynamic model only read the reference (extraction), never a gradient pass
    assert forwards and not any(forwards)
    assert torch.equal(classic, delegated)


def test_guidance_on_a_dynamic_vram_model_returns_its_classic_delegate_and_a_loader_without_reload_is_refused(comfyui):
    if not _has_dynamic_vram():
        pytest.skip(f"ComfyUI {comfyui.version} has no dynamic VRAM (ModelPatcher.clone takes no disable_dynamic)")
    motion_model = comfyui.node("MotionCloneLoadAnimateDiff").execute(motion_module="tiny_v3.safetensors").args[0]
    IncompatibleModelError = loaded_pack_module("motionclone.errors").IncompatibleModelError
    with torch.inference_mode():
        _, motion = _guided_run(comfyui, _tiny_models(comfyui))
        for reloadable in (True, False):
            model = comfyui.node("MotionCloneApplyAnimateDiff").execute(
                model=_dynamic_vram_double(comfyui, reloadable), motion_model=motion_model,
                beta_schedule="sqrt_linear").args[0]
            guide = comfyui.node("MotionCloneGuidance").execute
            settings = {"model": model, "motion": motion, "motion_weight": 2000.0, "guided_fraction": 0.3,
                        "warm_up_steps": 1, "cool_down_steps": 1}
            if reloadable:
                guided = guide(**settings).args[0]
                assert model.is_dynamic() and not guided.is_dynamic()
                assert guided.model is not model.model and guided.get_wrappers("predict_noise", "motionclone_guidance")
                assert guided.get_additional_models_with_key("motionclone")  # the motion modules came along
            else:
                with pytest.raises(IncompatibleModelError,
                                   match="loaded with dynamic VRAM by a loader that cannot reload it without"
                                   ".*start ComfyUI with --disable-dynamic-vram"):
                    guide(**settings)
