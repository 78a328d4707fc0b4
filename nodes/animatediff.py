"""Nodes that load AnimateDiff motion modules and apply them to an SD1.5 MODEL."""

from __future__ import annotations

import logging

import folder_paths
from comfy_api.latest import io, ui

from .engine.motion_model import BETA_SCHEDULES, KEEP_MODEL_SCHEDULE, apply_motion_model, load_motion_model
from .types import MotionModelSocket

MOTION_MODELS_FOLDER = "animatediff_models"  # shared with AnimateDiff-Evolved, so users' files show up
logger = logging.getLogger("MotionClone")


class LoadAnimateDiff(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneLoadAnimateDiff",
            display_name="MotionClone: Load AnimateDiff Motion Module",
            category="MotionClone",
            description="Loads an AnimateDiff SD1.5 motion module (v1, v2, v3 or AnimateLCM) and reports its version.",
            inputs=[
                io.Combo.Input(
                    "motion_module",
                    options=folder_paths.get_filename_list(MOTION_MODELS_FOLDER),
                    tooltip="A file from models/animatediff_models. MotionClone was made with v3_sd15_mm.ckpt; "
                    "mm_sd_v15_v2.ckpt and AnimateLCM_sd15_t2v.ckpt work too. .ckpt files are read without "
                    "running pickled code.",
                ),
            ],
            outputs=[
                MotionModelSocket.Output(display_name="MOTION_MODEL",
                                         tooltip="The motion module, for 'Apply AnimateDiff'."),
            ],
        )

    @classmethod
    def execute(cls, motion_module: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(MOTION_MODELS_FOLDER, motion_module)
        motion_model, spec = load_motion_model(path)
        description = f"{motion_module}: {spec.describe()}"
        logger.info("Loaded motion module %s (weights %s)", description, motion_model.model.weight_dtype)
        return io.NodeOutput(motion_model, ui=ui.PreviewText(description))


class ApplyAnimateDiff(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneApplyAnimateDiff",
            display_name="MotionClone: Apply AnimateDiff",
            category="MotionClone",
            description="Turns an SD1.5 MODEL into a video model: the latent batch becomes the frame axis. "
            "Works with any SD1.5 checkpoint and with LoRAs loaded before this node.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 MODEL (checkpoint, fine-tune, with LoRAs already applied)."),
                MotionModelSocket.Input("motion_model", tooltip="From 'MotionClone: Load AnimateDiff Motion Module'."),
                io.Combo.Input(
                    "beta_schedule",
                    options=[*BETA_SCHEDULES, KEEP_MODEL_SCHEDULE],
                    default="sqrt_linear",
                    tooltip="Noise schedule. sqrt_linear is the one AnimateDiff was trained with (diffusers "
                    "'linear'); linear is SD1.5's own; keep MODEL's leaves whatever the MODEL has (e.g. after a "
                    "ModelSamplingDiscrete node, as AnimateLCM's lcm schedule needs).",
                ),
            ],
            outputs=[io.Model.Output(tooltip="The MODEL with motion modules; sample a batch of latents as one video.")],
        )

    @classmethod
    def execute(cls, model, motion_model, beta_schedule: str) -> io.NodeOutput:
        return io.NodeOutput(apply_motion_model(model, motion_model, beta_schedule))


NODES = [LoadAnimateDiff, ApplyAnimateDiff]
