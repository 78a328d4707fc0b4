"""Picking the reference frames: N frames evenly over a chosen stretch of a real clip."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..motionclone.video import (
    FRAME_SELECTION_MODES,
    MAX_FPS,
    MAX_SPAN_SECONDS,
    MAX_START_SECONDS,
    SECONDS_STEP,
    select_frames,
)

logger = logging.getLogger("MotionClone")


class SelectFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneSelectFrames",
            display_name="MotionClone: Select Frames",
            category="MotionClone",
            description="Keeps N frames of a reference clip, evenly spaced over a chosen span of time, so that a "
            "16-frame generation clones seconds of a 24-30 fps clip's motion instead of its first half second. "
            "Its fps output is the rate that replays the span at the clip's real speed.",
            inputs=[
                io.Image.Input("images", tooltip="The reference clip's frames (the batch is the frame axis), e.g. "
                               "the images output of Get Video Components."),
                io.Float.Input("fps", default=30.0, min=SECONDS_STEP, max=MAX_FPS, step=SECONDS_STEP,
                               tooltip="The clip's frame rate. Wire it from Get Video Components' fps output; type "
                               "it only for frames without one (phone clips are mostly 30, films 24)."),
                io.Int.Input("frames", default=16, min=1, max=4096,
                             tooltip="How many frames to keep: the frame count you generate (16 for AnimateDiff)."),
                io.Combo.Input("mode", options=list(FRAME_SELECTION_MODES), default="span",
                               tooltip="Which stretch of the clip the frames cover, evenly spaced (each the nearest "
                               "source frame): 'span' covers span_seconds, 'fps' takes target_fps frames a second "
                               "(span = frames / target_fps), 'whole clip' covers the clip from start_seconds to its "
                               "end. The generated video replays the span's motion in 'frames' frames: a longer span "
                               "puts more motion into each frame, so it plays faster at a fixed frame rate. At the "
                               "workflows' 8 fps, 16 frames over 2 s play at the clip's real speed; wire the fps "
                               "output into the video's fps to keep real speed for any span."),
                io.Float.Input("span_seconds", default=2.0, min=SECONDS_STEP, max=MAX_SPAN_SECONDS, step=SECONDS_STEP,
                               tooltip="Mode 'span': the seconds of the clip the frames cover, from start_seconds. "
                               "2 s for 16 frames is 8 frames a second, near the pace AnimateDiff learnt motion at; "
                               "much longer spans make the motion jump between frames, shorter ones slow it down."),
                io.Float.Input("target_fps", default=8.0, min=SECONDS_STEP, max=MAX_FPS, step=SECONDS_STEP,
                               tooltip="Mode 'fps': frames taken per second of the clip (the clip re-timed to this "
                               "rate); 8 with 16 frames covers 2 s. Above the clip's own fps, frames repeat."),
                io.Float.Input("start_seconds", default=0.0, min=0.0, max=MAX_START_SECONDS, step=SECONDS_STEP,
                               tooltip="Where in the clip the selection starts, in seconds (0 = its first frame)."),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The kept frames, for 'MotionClone: Extract Motion' "
                                "or 'MotionClone: DDIM Inversion'."),
                io.Float.Output(display_name="fps", tooltip="The frame rate that plays the kept frames at the clip's "
                                "real speed (frames / span). Wire it into the fps of Create Video or Save Animated "
                                "WEBP so the generated video moves as fast as the reference."),
            ],
        )

    @classmethod
    def execute(cls, images, fps, frames, mode, span_seconds, target_fps, start_seconds) -> io.NodeOutput:
        selection = select_frames(images.shape[0], fps, frames, mode, span_seconds=span_seconds,
                                  target_fps=target_fps, start_seconds=start_seconds)
        kept = images[torch.tensor(selection.indices, device=images.device)]
        summary = (f"{frames} of {images.shape[0]} frames (source frames {_abridged(selection.indices)}) over "
                   f"{selection.span_seconds:.2f} s from {start_seconds:g} s; real speed at {selection.fps:g} fps")
        if selection.repeated:
            summary += (f". {selection.repeated} frames repeat the one before: the selection is denser than the "
                        f"clip's {fps:g} fps, so the motion stutters; use a longer span or fewer frames")
            logger.warning("Select Frames: %s", summary)
        else:
            logger.info("Select Frames: %s", summary)
        return io.NodeOutput(kept, selection.fps, ui=ui.PreviewText(summary))


def _abridged(indices: tuple[int, ...]) -> str:
    """`0, 4, 8, ..., 56` for long selections, every index for short ones."""
    if len(indices) <= 6:
        return ", ".join(map(str, indices))
    return f"{indices[0]}, {indices[1]}, {indices[2]}, ..., {indices[-1]}"


NODES = [SelectFrames]
