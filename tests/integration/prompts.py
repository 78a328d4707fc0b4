"""API-format prompts for the integration tier, built from the tiny test nodes and stock ComfyUI nodes."""

from __future__ import annotations

FRAMES, WIDTH, HEIGHT = 4, 128, 128  # 16x16 latents: up_blocks.1 attends over 4x4 positions


def video_prompt(save_path: str, motion_module: str | None = None, beta_schedule: str = "sqrt_linear", *,
                 lora: str | None = None, probe_path: str | None = None, frames: int = FRAMES,
                 sampler: str = "KSampler", steps: int = 3, seed: int = 7, context_length: int | None = None) -> dict:
    """TinySD15 [-> LoRA] [-> Load + Apply AnimateDiff] [-> context windows] [-> gradient probe] -> sampler
    -> SaveLatent."""
    prompt = {
        "model": {"class_type": "MotionCloneTestTinySD15", "inputs": {"seed": 1}},
        "positive": {"class_type": "MotionCloneTestRandomConditioning", "inputs": {"seed": 2}},
        "negative": {"class_type": "MotionCloneTestRandomConditioning", "inputs": {"seed": 3}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": frames}},
    }
    model = ["model", 0]
    if lora:
        prompt["lora"] = {"class_type": "LoraLoaderModelOnly",
                          "inputs": {"model": model, "lora_name": lora, "strength_model": 1.0}}
        model = ["lora", 0]
    if motion_module:
        prompt["load"] = {"class_type": "MotionCloneLoadAnimateDiff", "inputs": {"motion_module": motion_module}}
        prompt["apply"] = {"class_type": "MotionCloneApplyAnimateDiff",
                           "inputs": {"model": model, "motion_model": ["load", 0], "beta_schedule": beta_schedule}}
        model = ["apply", 0]
    if context_length:
        prompt["windows"] = {"class_type": "ContextWindowsManual",
                             "inputs": {"model": model, "context_length": context_length, "context_overlap": 4}}
        model = ["windows", 0]
    if probe_path:
        prompt["probe"] = {"class_type": "MotionCloneTestGradientProbe",
                           "inputs": {"model": model, "report_path": probe_path, "blocks": "up_blocks.1"}}
        model = ["probe", 0]
    if sampler == "KSampler":
        prompt["sample"] = {"class_type": "KSampler", "inputs": {
            "model": model, "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": "ddim",
            "scheduler": "ddim_uniform", "positive": ["positive", 0], "negative": ["negative", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}}
    else:
        prompt.update({
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "guider": {"class_type": "CFGGuider", "inputs": {
                "model": model, "positive": ["positive", 0], "negative": ["negative", 0], "cfg": 7.5}},
            "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "sigmas": {"class_type": "BasicScheduler", "inputs": {
                "model": model, "scheduler": "normal", "steps": steps, "denoise": 1.0}},
            "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0], "sigmas": ["sigmas", 0],
                "latent_image": ["latent", 0]}},
        })
    prompt["save"] = {"class_type": "MotionCloneTestSaveLatent",
                      "inputs": {"samples": ["sample", 0], "path": save_path}}
    return prompt


def _motion_model_nodes(prompt: dict, motion_module: str) -> list:
    prompt.update({
        "model": {"class_type": "MotionCloneTestTinySD15", "inputs": {"seed": 1}},
        "load": {"class_type": "MotionCloneLoadAnimateDiff", "inputs": {"motion_module": motion_module}},
        "apply": {"class_type": "MotionCloneApplyAnimateDiff", "inputs": {
            "model": ["model", 0], "motion_model": ["load", 0], "beta_schedule": "sqrt_linear"}},
        "positive": {"class_type": "MotionCloneTestRandomConditioning", "inputs": {"seed": 2}},
        "negative": {"class_type": "MotionCloneTestRandomConditioning", "inputs": {"seed": 3}},
        "latent": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": FRAMES}},
    })
    return ["apply", 0]


def extract_nodes(prompt: dict, model: list, *, seed: int = 5, frames: int = FRAMES, width: int = WIDTH,
                  height: int = HEIGHT, resize: str = "stretch", top_k: int = 1, blocks: str = "up_blocks.1") -> list:
    """A moving-square clip -> tiny VAE -> Extract Motion; returns the MOTION link."""
    prompt.update({
        "clip": {"class_type": "MotionCloneTestMovingSquare", "inputs": {"frames": frames, "width": 160, "height": 96}},
        "vae": {"class_type": "MotionCloneTestTinyVAE", "inputs": {"seed": 0}},
        "reference_prompt": {"class_type": "MotionCloneTestRandomConditioning", "inputs": {"seed": 4}},
        "extract": {"class_type": "MotionCloneExtractMotion", "inputs": {
            "model": model, "images": ["clip", 0], "vae": ["vae", 0], "conditioning": ["reference_prompt", 0],
            "width": width, "height": height, "resize": resize, "timestep": 400, "seed": seed, "blocks": blocks,
            "top_k": top_k}},
    })
    return ["extract", 0]


def extract_prompt(motion_module: str = "tiny_v3.safetensors", filename_prefix: str = "motion", **extract) -> dict:
    prompt: dict = {}
    model = _motion_model_nodes(prompt, motion_module)
    motion = extract_nodes(prompt, model, **extract)
    prompt["save_motion"] = {"class_type": "MotionCloneSaveMotion",
                             "inputs": {"motion": motion, "filename_prefix": filename_prefix}}
    return prompt


def motionclone_prompt(save_path: str, *, motion_file: str | None = None, weight: float = 2000.0, steps: int = 6,
                       guided_steps: int = 3, seed: int = 5, motion_module: str = "tiny_v3.safetensors",
                       interrupt_at_call: int | None = None, graph_report: str | None = None,
                       latent_size: tuple[int, int, int] | None = None, **extract) -> dict:
    """[Extract Motion | Load Motion] -> MotionClone Sampler -> SaveLatent."""
    prompt: dict = {}
    model = _motion_model_nodes(prompt, motion_module)
    if motion_file:
        prompt["load_motion"] = {"class_type": "MotionCloneLoadMotion", "inputs": {"motion_file": motion_file}}
        motion = ["load_motion", 0]
    else:
        motion = extract_nodes(prompt, model, seed=seed, **extract)
    if latent_size:
        frames, width, height = latent_size
        prompt["latent"]["inputs"].update({"batch_size": frames, "width": width, "height": height})
    sampling_model = model
    if interrupt_at_call:
        prompt["interrupt"] = {"class_type": "MotionCloneTestInterruptAtCall",
                               "inputs": {"model": model, "call": interrupt_at_call}}
        sampling_model = ["interrupt", 0]
    if graph_report:
        prompt["graph"] = {"class_type": "MotionCloneTestGraphProbe",
                           "inputs": {"model": sampling_model, "report_path": graph_report}}
        sampling_model = ["graph", 0]
    prompt["sample"] = {"class_type": "MotionCloneSampler", "inputs": {
        "model": sampling_model, "seed": seed, "steps": steps, "guided_steps": guided_steps, "guided_fraction": 0.3,
        "cfg": 8.5, "positive": ["positive", 0], "negative": ["negative", 0], "latent_image": ["latent", 0],
        "motion": motion, "motion_weight": weight, "warm_up_steps": 1, "cool_down_steps": 1}}
    prompt["save"] = {"class_type": "MotionCloneTestSaveLatent",
                      "inputs": {"samples": ["sample", 0], "path": save_path}}
    return prompt


def plain_ddim_prompt(save_path: str, *, steps: int = 6, guided_steps: int = 3, seed: int = 5,
                      motion_module: str = "tiny_v3.safetensors") -> dict:
    """SamplerCustom with the stock ddim sampler over MotionClone's schedule: what weight 0 must reproduce."""
    prompt: dict = {}
    model = _motion_model_nodes(prompt, motion_module)
    prompt.update({
        "schedule": {"class_type": "MotionCloneScheduler", "inputs": {
            "model": model, "steps": steps, "guided_steps": guided_steps, "guided_fraction": 0.3}},
        "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
        "sample": {"class_type": "SamplerCustom", "inputs": {
            "model": model, "add_noise": True, "noise_seed": seed, "cfg": 8.5, "positive": ["positive", 0],
            "negative": ["negative", 0], "sampler": ["select", 0], "sigmas": ["schedule", 0],
            "latent_image": ["latent", 0]}},
        "save": {"class_type": "MotionCloneTestSaveLatent", "inputs": {"samples": ["sample", 0], "path": save_path}},
    })
    return prompt


def guidance_ksampler_prompt(save_path: str, report_path: str, *, weight: float, steps: int = 8, seed: int = 5,
                             motion_module: str = "tiny_v3.safetensors") -> dict:
    """Extract Motion -> MotionClone: Guidance -> loss probe -> stock KSampler (ddim)."""
    prompt: dict = {}
    model = _motion_model_nodes(prompt, motion_module)
    motion = extract_nodes(prompt, model, seed=seed)
    prompt.update({
        "guidance": {"class_type": "MotionCloneGuidance", "inputs": {
            "model": model, "motion": motion, "motion_weight": weight, "guided_fraction": 0.5,
            "warm_up_steps": 1, "cool_down_steps": 1}},
        "probe": {"class_type": "MotionCloneTestMotionLossProbe", "inputs": {
            "model": ["guidance", 0], "motion": motion, "report_path": report_path}},
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["probe", 0], "seed": seed, "steps": steps, "cfg": 8.5, "sampler_name": "ddim",
            "scheduler": "ddim_uniform", "positive": ["positive", 0], "negative": ["negative", 0],
            "latent_image": ["latent", 0], "denoise": 1.0}},
        "save": {"class_type": "MotionCloneTestSaveLatent", "inputs": {"samples": ["sample", 0], "path": save_path}},
    })
    return prompt
