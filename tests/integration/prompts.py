"""API-format prompts for the integration tier, built from the tiny test nodes and stock ComfyUI nodes."""

from __future__ import annotations

FRAMES, WIDTH, HEIGHT = 4, 128, 128  # 16x16 latents: up_blocks.1 attends over 4x4 positions


def video_prompt(save_path: str, motion_module: str | None = None, beta_schedule: str = "sqrt_linear", *,
                 lora: str | None = None, probe_path: str | None = None, frames: int = FRAMES,
                 sampler: str = "KSampler", steps: int = 3, seed: int = 7, context_length: int | None = None) -> dict:
    """TinySD15 [-> LoRA] [-> Load + Apply AnimateDiff] [-> context windows] [-> gradient probe] -> sampler -> SaveLatent."""
    prompt = {
        "model": {"class_type": "MotionCloneTestTinySD15", "inputs": {"seed": 1}},
        "positive": {"class_type": "MotionCloneTestRandomConditioning", "inputs": {"seed": 2}},
        "negative": {"class_type": "MotionCloneTestRandomConditioning", "inputs": {"seed": 3}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": frames}},
    }
    model = ["model", 0]
    if lora:
        prompt["lora"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": model, "lora_name": lora, "strength_model": 1.0}}
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
            "model": model, "seed": seed, "steps": steps, "cfg": 7.5, "sampler_name": "ddim", "scheduler": "ddim_uniform",
            "positive": ["positive", 0], "negative": ["negative", 0], "latent_image": ["latent", 0], "denoise": 1.0}}
    else:
        prompt.update({
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "guider": {"class_type": "CFGGuider", "inputs": {"model": model, "positive": ["positive", 0], "negative": ["negative", 0], "cfg": 7.5}},
            "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "normal", "steps": steps, "denoise": 1.0}},
            "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0], "sigmas": ["sigmas", 0], "latent_image": ["latent", 0]}},
        })
    prompt["save"] = {"class_type": "MotionCloneTestSaveLatent", "inputs": {"samples": ["sample", 0], "path": save_path}}
    return prompt
