"""The pack's nodes: one thin class per node (schema and a few lines of `execute`) over `nodes.engine`, the
ComfyUI runtime, and `motionclone`, the pure-torch algorithm. `nodes/` is the only code of the product that
imports ComfyUI."""

from __future__ import annotations

import logging
import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

from . import animatediff, context_windows, fidelity, frames, inversion, motion, sampling, subjects, toy

NODES: list[type[io.ComfyNode]] = [*animatediff.NODES, *context_windows.NODES, *frames.NODES, *inversion.NODES,
                                   *motion.NODES, *subjects.NODES, *sampling.NODES, *fidelity.NODES, *toy.NODES]


def register_model_folders() -> None:
    """Register `models/animatediff_models` (AnimateDiff-Evolved's folder name) and `models/motionclone`.

    Both folders are created when missing: a fresh ComfyUI has neither, and the README tells users to put
    their motion modules into the first one.
    """
    for name, extensions in (
        (animatediff.MOTION_MODELS_FOLDER, folder_paths.supported_pt_extensions),
        (motion.MOTION_FOLDER, {".safetensors"}),
    ):
        path = os.path.join(folder_paths.models_dir, name)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as error:  # a read-only install still loads; the folder can be made by hand
            logging.warning("MotionClone: could not create the model folder %s (%s); create it to add files there",
                            path, error)
        folder_paths.add_model_folder_path(name, path)
        folder_paths.folder_names_and_paths[name][1].update(extensions)


class MotionCloneExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> MotionCloneExtension:
    return MotionCloneExtension()
