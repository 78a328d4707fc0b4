"""MotionClone (arXiv 2406.05338) on AnimateDiff, in plain torch.

This package holds the algorithm only: motion modules, checkpoint reading, attention capture. It never
imports ComfyUI; the `nodes` package adapts it to ComfyUI's containers and model-patching API.
"""

from .capture import AttentionCapture, ForwardStopped
from .checkpoint import MotionModuleSpec, build_motion_model, detect_motion_module, load_motion_module, read_state_dict
from .errors import FrameCountError, IncompatibleModelError, MotionCloneError, MotionModuleFormatError
from .layout import comfy_block_of, validate_block_names
from .motion_module import AnimateDiffMotionModel, MotionModule, TemporalAttention, temporal_attention_probs

__all__ = [
    "AnimateDiffMotionModel",
    "AttentionCapture",
    "ForwardStopped",
    "FrameCountError",
    "IncompatibleModelError",
    "MotionCloneError",
    "MotionModule",
    "MotionModuleFormatError",
    "MotionModuleSpec",
    "TemporalAttention",
    "build_motion_model",
    "comfy_block_of",
    "detect_motion_module",
    "load_motion_module",
    "read_state_dict",
    "temporal_attention_probs",
    "validate_block_names",
]
