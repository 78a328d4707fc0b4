"""Select Frames on a real ComfyUI: a 30 fps MP4 through Load Video -> Get Video Components -> Select Frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from comfy_harness import PromptFailed

CLIP_FPS, CLIP_FRAMES = 30, 60  # two seconds of a phone clip
# 16 frames over 2 s: one every 3.75 source frames, each the nearest one (ties go to the later frame).
TWO_SECONDS = [0, 4, 8, 11, 15, 19, 23, 26, 30, 34, 38, 41, 45, 49, 53, 56]


@pytest.fixture
def clip_name(comfyui, tmp_path, monkeypatch) -> str:
    """A 30 fps H.264 MP4 of a square moving right, every frame a different position, in a private input folder."""
    import av
    import folder_paths
    from testing_pack import MovingSquare

    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path))
    (frames,) = MovingSquare().build(frames=CLIP_FRAMES, width=160, height=96)
    with av.open(str(tmp_path / "phone_clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=CLIP_FPS)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for frame in frames:
            pixels = (frame * 255).round().to(torch.uint8).numpy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return "phone_clip.mp4"


def _prompt(clip_name: str, **select) -> dict:
    """The clip's frames and the selection saved as PNGs; the selection also as a video at the node's fps."""
    settings = {"frames": 16, "mode": "span", "span_seconds": 2.0, "target_fps": 8.0, "start_seconds": 0.0, **select}
    return {
        "load": {"class_type": "LoadVideo", "inputs": {"file": clip_name}},
        "components": {"class_type": "GetVideoComponents", "inputs": {"video": ["load", 0]}},
        "select": {"class_type": "MotionCloneSelectFrames",
                   "inputs": {"images": ["components", 0], "fps": ["components", 2], **settings}},
        "save_clip": {"class_type": "SaveImage",
                      "inputs": {"images": ["components", 0], "filename_prefix": "select/clip"}},
        "save_selection": {"class_type": "SaveImage",
                           "inputs": {"images": ["select", 0], "filename_prefix": "select/kept"}},
        "video": {"class_type": "CreateVideo", "inputs": {"images": ["select", 0], "fps": ["select", 1]}},
        "save_video": {"class_type": "SaveVideo", "inputs": {"video": ["video", 0], "filename_prefix": "select/video"}},
    }


def _saved_frames(comfyui, outputs: dict, node: str) -> list[np.ndarray]:
    from PIL import Image

    frames = []
    for item in outputs[node]["images"]:
        with Image.open(f"{comfyui.output_dir}/{item['subfolder']}/{item['filename']}") as image:
            frames.append(np.asarray(image.convert("RGB")))
    return frames


def _saved_video_rate(comfyui, outputs: dict, node: str) -> tuple[float, int]:
    import av

    (item,) = [item for item in outputs[node]["images"]]
    with av.open(f"{comfyui.output_dir}/{item['subfolder']}/{item['filename']}") as container:
        stream = container.streams.video[0]
        return float(stream.average_rate), sum(1 for _ in container.decode(video=0))


@pytest.mark.parametrize("select, expected, fps", [
    ({}, TWO_SECONDS, 8.0),
    ({"mode": "fps", "target_fps": 10.0, "frames": 8, "start_seconds": 0.5}, [15, 18, 21, 24, 27, 30, 33, 36], 10.0),
    ({"mode": "whole clip", "frames": 4}, [0, 15, 30, 45], 2.0),
])
def test_the_node_keeps_exactly_the_frames_of_the_span_and_outputs_their_fps(comfyui, clip_name, select, expected, fps):
    outputs = comfyui.run_prompt(_prompt(clip_name, **select))
    clip, kept = _saved_frames(comfyui, outputs, "save_clip"), _saved_frames(comfyui, outputs, "save_selection")
    assert len(clip) == CLIP_FRAMES
    assert all((a != b).any() for a, b in zip(clip, clip[1:])), "the test clip needs a different picture in every frame"
    assert len(kept) == len(expected)
    for position, (frame, index) in enumerate(zip(kept, expected)):
        assert np.array_equal(frame, clip[index]), f"kept frame {position} is not source frame {index}"
    assert _saved_video_rate(comfyui, outputs, "save_video") == (fps, len(expected))
    assert "real speed at" in outputs["select"]["text"][0]


def test_a_clip_shorter_than_the_span_is_refused_naming_the_input(comfyui, clip_name):
    with pytest.raises(PromptFailed) as failure:
        comfyui.run_prompt(_prompt(clip_name, span_seconds=3.0))
    message = str(failure.value)
    assert "the clip has 60 frames at 30 fps (2.00 s)" in message and "lower 'span_seconds' to at most" in message


@pytest.mark.parametrize("name", ["start_seconds", "span_seconds", "target_fps"])
def test_a_nan_number_is_refused_by_name_through_the_node(comfyui, clip_name, name):
    """NaN passes ComfyUI's min/max validation of a FLOAT widget (every comparison with it is false)."""
    with pytest.raises(PromptFailed, match=f"'{name}' is nan; it must be a finite number. Type a number into '{name}'"):
        comfyui.run_prompt(
            _prompt(clip_name, **{name: float("nan"), "mode": "fps" if name == "target_fps" else "span"})
        )
