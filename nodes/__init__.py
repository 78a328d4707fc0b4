"""ComfyUI adapters: thin nodes over the `motionclone` package. The only code that imports ComfyUI."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

from . import animatediff, frames, inversion, motion, sampler, subjects

NODES: list[type[io.ComfyNode]] = [*animatediff.NODES, *frames.NODES, *inversion.NODES, *motion.NODES, *subjects.NODES, *sampler.NODES]


def register_model_folders() -> None:
    """Register `models/animatediff_models` (AnimateDiff-Evolved's folder name) and `models/motionclone`."""
    for name, extensions in (
        (animatediff.MOTION_MODELS_FOLDER, folder_paths.supported_pt_extensions),
        (motion.MOTION_FOLDER, {".safetensors"}),
    ):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
        folder_paths.folder_names_and_paths[name][1].update(extensions)


class MotionCloneExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> MotionCloneExtension:
    return MotionCloneExtension()
