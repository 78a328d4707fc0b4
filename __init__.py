"""ComfyUI-MotionClone: clone the motion of a reference video into a new AnimateDiff generation.

Importing the pack registers its model folder and exposes its nodes; nothing else happens at import.
"""

from .nodes import comfy_entrypoint, register_model_folders

register_model_folders()

__all__ = ["comfy_entrypoint"]
