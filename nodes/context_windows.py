"""'MotionClone: Context Windows': clips longer than a motion module's window, window by window.

The node puts one layout on a clone of the MODEL, so that every node after it (Extract Motion, DDIM Inversion,
the samplers, a stock KSampler) processes the clip in the same windows; how is `engine/windows.py`.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..motionclone.windows import FUSIONS, SCHEDULES, TRAINED_LENGTH, ContextWindows
from .engine.checks import check_window_length, refuse_core_context_windows, require_motion_model
from .engine.windows import apply_context_windows


class ContextWindowsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneContextWindows",
            display_name="MotionClone: Context Windows",
            category="MotionClone",
            description="Long videos: every node after this one (Extract Motion, DDIM Inversion, MotionClone Sampler, "
            "MotionClone: Guidance, KSampler) processes clips longer than 'length' frames as overlapping windows "
            "of 'length' frames, blended frame by frame. Motion is read and guided per window, so the memory of "
            "a guided step is that of one window. Wire the same node before Extract Motion and the sampler.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL after 'MotionClone: Apply AnimateDiff'."),
                io.Int.Input("length", default=TRAINED_LENGTH, min=2, max=128,
                             tooltip="Frames per window. 16 is what AnimateDiff's motion modules were trained on "
                             "(best motion); at most the module's limit: v1 24 frames (positional encoding), v2/v3 "
                             "32. Clips of at most this many frames are processed whole, exactly as without this "
                             "node."),
                io.Int.Input("overlap", default=4, min=0, max=127,
                             tooltip="Frames shared by neighbouring windows, blended for smooth seams (less than "
                             "'length'; 4 for 16-frame windows). More overlap: smoother seams, more windows, slower."),
                io.Combo.Input("schedule", options=list(SCHEDULES), default=SCHEDULES[0],
                               tooltip="uniform: windows from the first frame on, the last one ending at the last "
                               "frame (a clip with a start and an end). looped: the last window wraps around to "
                               "the first frames, so the end blends into the start (a seamlessly looping video)."),
                io.Combo.Input("fusion", options=list(FUSIONS), default=FUSIONS[0],
                               tooltip="How overlapping windows are blended per frame: pyramid weights each window's "
                               "frames by their distance from its edges (1, 2, ..., 2, 1: smooth seams); flat "
                               "averages them equally."),
            ],
            outputs=[io.Model.Output(tooltip="The MODEL with context windows, for Extract Motion, DDIM Inversion "
                                     "and the samplers alike.")],
        )

    @classmethod
    def execute(cls, model, length, overlap, schedule, fusion) -> io.NodeOutput:
        motion_model = require_motion_model(model)
        refuse_core_context_windows(model.model_options)
        settings = ContextWindows(length, overlap, schedule, fusion)
        check_window_length(motion_model, length, TRAINED_LENGTH)
        return io.NodeOutput(apply_context_windows(model, settings))


NODES = [ContextWindowsNode]
