"""API-format prompts for DDIM inversion, subject masks and semantic guidance (tiny models, real tokenizer)."""

from __future__ import annotations

from prompts import FRAMES, HEIGHT, WIDTH

REFERENCE_TEXT = "a square moving right"
NEW_TEXT = "a ball rolling on grass"


def _reference_nodes(
    prompt: dict, motion_module: str = "tiny_v3.safetensors", output_scale: float = 1.0
) -> tuple[list, list, list]:
    """Tiny SD1.5 + motion module, tiny CLIP and VAE, the moving-square clip encoded; returns (model, clip, latent)."""
    prompt.update({
        "model": {"class_type": "MotionCloneTestTinySD15", "inputs": {"seed": 1, "output_scale": output_scale}},
        "load": {"class_type": "MotionCloneLoadAnimateDiff", "inputs": {"motion_module": motion_module}},
        "apply": {"class_type": "MotionCloneApplyAnimateDiff",
                  "inputs": {"model": ["model", 0], "motion_model": ["load", 0], "beta_schedule": "sqrt_linear"}},
        "clip": {"class_type": "MotionCloneTestTinyCLIP", "inputs": {"seed": 3}},
        "vae": {"class_type": "MotionCloneTestTinyVAE", "inputs": {"seed": 0}},
        "frames": {"class_type": "MotionCloneTestMovingSquare",
                   "inputs": {"frames": FRAMES, "width": WIDTH, "height": HEIGHT}},
        "encode": {"class_type": "VAEEncode", "inputs": {"pixels": ["frames", 0], "vae": ["vae", 0]}},
        "reference_text": {"class_type": "CLIPTextEncode", "inputs": {"text": REFERENCE_TEXT, "clip": ["clip", 0]}},
    })
    return ["apply", 0], ["clip", 0], ["encode", 0]


def _inversion_node(prompt: dict, model: list, latent: list, steps: int) -> list:
    prompt["invert"] = {"class_type": "MotionCloneDDIMInversion", "inputs": {
        "model": model, "latent": latent, "conditioning": ["reference_text", 0], "steps": steps}}
    return ["invert", 0]


def reconstruction_prompt(clip_path: str, noised_path: str, reconstructed_path: str, steps: int,
                          output_scale: float = 1.0) -> dict:
    """Inversion -> SamplerCustom (euler, no added noise, the reversed sigmas): should give the clip back."""
    prompt: dict = {}
    model, _, latent = _reference_nodes(prompt, output_scale=output_scale)
    _inversion_node(prompt, model, latent, steps)
    prompt.update({
        "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "reconstruct": {"class_type": "SamplerCustom", "inputs": {
            "model": model, "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": ["reference_text", 0],
            "negative": ["reference_text", 0], "sampler": ["select", 0], "sigmas": ["invert", 2],
            "latent_image": ["invert", 1]}},
        "save_clip": {"class_type": "MotionCloneTestSaveLatent", "inputs": {"samples": latent, "path": clip_path}},
        "save_noised": {"class_type": "MotionCloneTestSaveLatent",
                        "inputs": {"samples": ["invert", 1], "path": noised_path}},
        "save_reconstruction": {"class_type": "MotionCloneTestSaveLatent",
                                "inputs": {"samples": ["reconstruct", 0], "path": reconstructed_path}},
    })
    return prompt


def mask_nodes(prompt: dict, model: list, clip: list, source: dict | None, *, name: str, text: str, subject: str,
               blur_kernel_size: int = 1) -> list:
    """A Cross-Attention Mask node; `source` is {"inversion": link} or {"latent": link} or None."""
    prompt[name] = {"class_type": "MotionCloneCrossAttentionMask", "inputs": {
        "model": model, "clip": clip, "prompt": text, "subject": subject, "threshold": 0.3,
        "blur_kernel_size": blur_kernel_size, "blur_sigma": 1.0, "centroid_sigma": 5.0, "timestep": 400, "seed": 5,
        **(source or {})}}
    return [name, 1]


def semantic_prompt(save_path: str, *, semantic_weight: float, motion_weight: float = 0.0, subjects: bool = True,
                    steps: int = 6, guided_steps: int = 3, inversion_steps: int = 8, seed: int = 5,
                    semantic: bool = True, subject_word: str = "ball") -> dict:
    """Inversion -> Extract Motion (per step) + masks -> Semantic Guidance -> MotionClone Sampler -> SaveLatent."""
    prompt: dict = {}
    model, clip, latent = _reference_nodes(prompt)
    inversion = _inversion_node(prompt, model, latent, inversion_steps)
    prompt.update({
        "new_text": {"class_type": "CLIPTextEncode", "inputs": {"text": NEW_TEXT, "clip": clip}},
        "negative_text": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        "empty": {"class_type": "EmptyLatentImage", "inputs": {"width": WIDTH, "height": HEIGHT, "batch_size": FRAMES}},
        "extract": {"class_type": "MotionCloneExtractMotion", "inputs": {
            "model": model, "inversion": inversion, "conditioning": ["reference_text", 0], "width": WIDTH,
            "height": HEIGHT, "resize": "stretch", "timestep": 400, "seed": seed, "blocks": "up_blocks.1", "top_k": 1,
            "steps": steps, "guided_steps": guided_steps, "guided_fraction": 0.3}},
        "sample": {"class_type": "MotionCloneSampler", "inputs": {
            "model": model, "seed": seed, "steps": steps, "guided_steps": guided_steps, "guided_fraction": 0.3,
            "cfg": 8.5, "positive": ["new_text", 0], "negative": ["negative_text", 0], "latent_image": ["empty", 0],
            "motion": ["extract", 0], "motion_weight": motion_weight, "warm_up_steps": 1, "cool_down_steps": 1}},
        "save": {"class_type": "MotionCloneTestSaveLatent", "inputs": {"samples": ["sample", 0], "path": save_path}},
    })
    if semantic:
        masks = {}
        if subjects:
            masks = {
                "reference_mask": mask_nodes(prompt, model, clip, {"inversion": inversion}, name="reference_mask",
                                             text=REFERENCE_TEXT, subject="square"),
                "subject_mask": mask_nodes(prompt, model, clip, None, name="subject_mask", text=NEW_TEXT,
                                           subject=subject_word),
            }
        prompt["semantic"] = {"class_type": "MotionCloneSemanticGuidance", "inputs": {
            "weight_up_blocks_1": semantic_weight, "weight_up_blocks_2": 0.0, **masks}}
        prompt["sample"]["inputs"]["semantic_guidance"] = ["semantic", 0]
    return prompt
