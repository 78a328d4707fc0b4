"""The motion-fidelity node: scores how closely a generated clip follows a reference clip's motion."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..motionclone.fidelity import GRID_SIZES, MODES, camera_fidelity, motion_fidelity, plot_tracks, segmented_fidelity


class MotionFidelity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MotionCloneMotionFidelity",
            display_name="MotionClone: Motion Fidelity",
            category="MotionClone",
            description="Scores how closely the generated clip's motion follows the reference clip's: a grid of "
            "points is tracked through both (OpenCV Lucas-Kanade) and their frame-to-frame motion compared. 'object "
            "tracks' is Diffusion Motion Transfer's motion-fidelity score (1 = same motion, 0 = unrelated or "
            "perpendicular, -1 = opposite); 'camera' compares the clips' global motion. Works on any two clips "
            "with the same frame count; sizes may differ.",
            inputs=[
                io.Image.Input("reference", tooltip="The reference clip whose motion is the target (the batch is the "
                               "frame axis), e.g. the clip given to 'MotionClone: Extract Motion'."),
                io.Image.Input("generated", tooltip="The generated clip to score, e.g. from VAE Decode. Needs the "
                               "reference's frame count; its size may differ (it is resized to the reference's "
                               "aspect)."),
                io.Combo.Input("mode", options=list(MODES), default=MODES[0],
                               tooltip="'object tracks': each generated track is matched to its most similar "
                               "reference track by the mean cosine of their frame-to-frame motion, and the matches "
                               "averaged (DMT's score). 'camera': the median motion of all tracks per frame, compared "
                               "by cosine, plus the ratio of speeds; for camera pans and other whole-frame motion."),
                io.Int.Input("grid_size", default=16, min=GRID_SIZES[0], max=GRID_SIZES[1],
                             tooltip="Tracked points along the clip's long side (16 = a 16x16 grid on a square "
                             "clip). More points see smaller subjects but take longer; flat areas are never tracked."),
                io.Int.Input("segment_frames", default=0, min=0, max=4096, optional=True,
                             tooltip="0: score the whole clip at once (tracks must survive every frame). For long "
                             "clips (more than about 16 frames, e.g. made with 'MotionClone: Context Windows') give "
                             "the segment length, e.g. 16: the clips are scored in segments of that many frames "
                             "overlapping by half, each with a fresh grid, and the segment scores averaged (all are in "
                             "the text)."),
            ],
            outputs=[
                io.Float.Output(display_name="score", tooltip="'object tracks': the motion-fidelity score in [-1, 1]. "
                                "'camera': the cosine between the two clips' global motion in [-1, 1]."),
                io.Image.Output(display_name="plot", tooltip="The two clips' first frames with their tracks drawn, "
                                "reference left, generated right; a track's colour is its direction of motion."),
            ],
        )

    @classmethod
    def execute(cls, reference, generated, mode, grid_size, segment_frames=0) -> io.NodeOutput:
        if segment_frames and segment_frames < reference.shape[0]:
            result = segmented_fidelity(reference, generated, segment_frames, grid_size, mode)
            score, tracked = result.score, result.first
            start, stop = result.first_segment
            reference, generated = reference[start:stop], generated[start:stop]  # the plotted segment
        elif mode == "camera":
            result = tracked = camera_fidelity(reference, generated, grid_size)
            score = result.cosine
        else:
            result = tracked = motion_fidelity(reference, generated, grid_size)
            score = result.score
        text = result.describe()
        plot = plot_tracks(reference, generated, tracked.reference, tracked.generated)
        preview = {**ui.PreviewImage(plot, cls=cls).as_dict(), **ui.PreviewText(text).as_dict()}
        return io.NodeOutput(float(score), plot, ui=preview)

NODES = [MotionFidelity]
