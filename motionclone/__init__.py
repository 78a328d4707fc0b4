"""MotionClone (arXiv 2406.05338) on AnimateDiff, in plain torch.

The pure layer: the algorithm (motion modules, checkpoint reading, attention capture, the motion
representation and its loss, the schedule, the guided DDIM step, DDIM inversion, semantic guidance, context
windows) and what surrounds it without ComfyUI: frame selection, memory arithmetic, the motion-fidelity
score with its point tracker, and the toy world. It never imports ComfyUI; the `nodes` package adapts it to
ComfyUI's containers and model-patching API.
"""

from .capture import AttentionCapture, ForwardStopped
from .checkpoint import (
    MotionModuleSpec,
    build_motion_model,
    convert_motion_model,
    detect_motion_module,
    load_motion_module,
    read_state_dict,
)
from .ddim import GuidanceLog, euler_step, guided_ddim_step, sample_motionclone
from .errors import (
    FrameCountError,
    IncompatibleModelError,
    MotionCloneError,
    MotionFileError,
    MotionMismatchError,
    MotionModuleFormatError,
)
from .layout import comfy_block_of, validate_block_names
from .motion_file import load_motion, save_motion
from .motion_module import (
    AnimateDiffMotionModel,
    MotionModule,
    TemporalAttention,
    TorchOperations,
    attend,
    attention_probs,
)
from .representation import (
    MotionMetadata,
    MotionRepresentation,
    index_dtype_for,
    motion_loss,
    stack_timesteps,
    stack_windows,
    top_k_representation,
)
from .schedule import (
    CombinedWeights,
    GuidanceRamp,
    GuidanceSettings,
    GuidedStepPlan,
    MotionCloneSchedule,
    motionclone_timesteps,
    resolve_guided_steps,
)
from .video import RESIZE_MODES, resize_frames

__all__ = [
    "AnimateDiffMotionModel",
    "AttentionCapture",
    "CombinedWeights",
    "ForwardStopped",
    "FrameCountError",
    "GuidanceLog",
    "GuidanceRamp",
    "GuidanceSettings",
    "GuidedStepPlan",
    "IncompatibleModelError",
    "MotionCloneError",
    "MotionCloneSchedule",
    "MotionFileError",
    "MotionMetadata",
    "MotionMismatchError",
    "MotionModule",
    "MotionModuleFormatError",
    "MotionModuleSpec",
    "MotionRepresentation",
    "RESIZE_MODES",
    "TemporalAttention",
    "TorchOperations",
    "attend",
    "attention_probs",
    "build_motion_model",
    "comfy_block_of",
    "convert_motion_model",
    "detect_motion_module",
    "euler_step",
    "guided_ddim_step",
    "index_dtype_for",
    "load_motion",
    "load_motion_module",
    "motion_loss",
    "motionclone_timesteps",
    "read_state_dict",
    "resize_frames",
    "resolve_guided_steps",
    "sample_motionclone",
    "save_motion",
    "stack_timesteps",
    "stack_windows",
    "top_k_representation",
    "validate_block_names",
]
