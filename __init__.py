"""ComfyUI-MotionClone: clone the motion of a reference video into a new AnimateDiff generation.

Importing the pack registers its model folder and exposes its nodes; nothing else happens at import.
`WEB_DIRECTORY` serves `web/` under /extensions/<this folder>/: `web/docs/<NodeId>.md` are the nodes' help
pages, which ComfyUI's frontend shows in its node help panel.
"""

from .nodes import comfy_entrypoint, register_model_folders

register_model_folders()

WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
