"""'MotionClone: Motion Fidelity' in a real ComfyUI: toy clips loaded by the stock LoadImage, scored, plotted."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from comfy_harness import PromptFailed

from motionclone.toyworld import ClipSpec, ShapeSpec, render_clip

NODE = "MotionCloneMotionFidelity"


def _moving(kind: str, colour: str, velocity, frames: int = 8, size: int = 32):
    start = (size / 2 - velocity[0] * (frames - 1) / 2, size / 2 - velocity[1] * (frames - 1) / 2)
    return render_clip(ClipSpec((ShapeSpec(kind, colour, start, 0.16 * size, velocity),), frames, size, size)).frames


def _cut(frames: int = 24, cut: int = 12, size: int = 64):
    """A red circle going right in the top half until `cut`, then a blue square going down in the left half."""
    right = ClipSpec((ShapeSpec("circle", "red", (14.0, 14.0), 0.16 * size, (1.5, 0.0)),), frames, size, size)
    down = ClipSpec((ShapeSpec("square", "blue", (14.0, 14.0), 0.16 * size, (0.0, 1.5)),), frames, size, size)
    return torch.cat([render_clip(right).frames[:cut], render_clip(down).frames[cut:]])


def _pan(pan, frames: int = 8, size: int = 64, texture_seed: int = 1):
    return render_clip(
        ClipSpec((), frames, size, size, pan=pan, background="texture", texture_seed=texture_seed)
    ).frames


@pytest.fixture(scope="module")
def clips(comfyui) -> dict[str, str]:
    """Toy clips saved as animated PNGs in ComfyUI's output folder: LoadImage reads them as IMAGE batches, frame
    for frame, through Pillow (ComfyUI 0.8) or PyAV (0.33 tries it first, and it reads only a TIFF's first page)."""
    frames = {
        "right": _moving("circle", "red", (2.0, 0.0)),
        "right_other": _moving("square", "blue", (2.5, 0.0)),
        "up": _moving("triangle", "green", (0.0, -2.0)),
        "left": _moving("square", "yellow", (-2.0, 0.0)),
        "right_64px": _moving("square", "blue", (4.0, 0.0), size=64),
        "right_6_frames": _moving("circle", "red", (2.0, 0.0), frames=6),
        "right_24_frames": _moving("circle", "red", (1.5, 0.0), frames=24, size=64),
        "cut_24_frames": _cut(),
        "pan": _pan((2.0, 1.0)),
        "pan_faster": _pan((4.0, 2.0), texture_seed=7),
        "pan_back": _pan((-2.0, -1.0), texture_seed=3),
    }
    from PIL import Image  # ComfyUI's requirements bring it; the core tier collects without it

    names = {}
    for name, clip in frames.items():
        pages = [Image.fromarray(np.round(frame.numpy() * 255).astype(np.uint8)) for frame in clip]
        filename = f"toy_{name}.png"
        path = os.path.join(comfyui.output_dir, filename)
        pages[0].save(path, save_all=True, append_images=pages[1:])
        with Image.open(path) as written:  # Pillow merges a frame equal to the one before into it
            assert written.n_frames == len(pages), name
        names[name] = f"{filename} [output]"
    return names


def _prompt(reference: str, generated: str, mode: str = "object tracks", grid_size: int = 16, **optional) -> dict:
    return {
        "reference": {"class_type": "LoadImage", "inputs": {"image": reference}},
        "generated": {"class_type": "LoadImage", "inputs": {"image": generated}},
        "fidelity": {"class_type": NODE, "inputs": {"reference": ["reference", 0], "generated": ["generated", 0],
                                                    "mode": mode, "grid_size": grid_size, **optional}},
        "show_score": {"class_type": "PreviewAny", "inputs": {"source": ["fidelity", 0]}},
        "show_plot": {"class_type": "PreviewImage", "inputs": {"images": ["fidelity", 1]}},
    }


def _run(comfyui, *args, **kwargs) -> tuple[float, dict]:
    outputs = comfyui.run_prompt(_prompt(*args, **kwargs))
    return float(outputs["show_score"]["text"][0]), outputs


def _image_size(image: dict) -> tuple[int, int]:
    import folder_paths
    from PIL import Image

    folder = folder_paths.get_temp_directory() if image["type"] == "temp" else folder_paths.get_output_directory()
    with Image.open(os.path.join(folder, image["subfolder"], image["filename"])) as png:
        return png.size


def test_node_is_registered_with_tooltips_on_every_input(comfyui):
    node = comfyui.node(NODE)
    assert node.CATEGORY == "MotionClone"
    inputs = node.INPUT_TYPES()["required"]
    assert set(inputs) == {"reference", "generated", "mode", "grid_size"}
    optional = node.INPUT_TYPES()["optional"]
    assert set(optional) == {"segment_frames"} and optional["segment_frames"][1]["default"] == 0
    for name, spec in {**inputs, **optional}.items():
        assert spec[1].get("tooltip"), f"{NODE}.{name} has no tooltip"
    assert tuple(node.RETURN_TYPES) == ("FLOAT", "IMAGE")


def test_same_motion_scores_above_other_motions_and_the_plot_is_shown(comfyui, clips):
    scores = {}
    for generated in ("right", "right_other", "up", "left"):
        scores[generated], outputs = _run(comfyui, clips["right"], clips[generated])
    assert scores["right"] == pytest.approx(1.0, abs=1e-6)
    assert scores["right_other"] > 0.95
    assert abs(scores["up"]) < 0.1
    assert scores["left"] < -0.95
    assert scores["right"] >= scores["right_other"] > scores["up"] > scores["left"]
    node_ui = outputs["fidelity"]
    assert f"motion fidelity {scores['left']:.3f}" in node_ui["text"][0]
    assert len(node_ui["images"]) == 1 and _image_size(node_ui["images"][0]) == (2 * 384 + 8, 384)
    assert _image_size(outputs["show_plot"]["images"][0]) == (2 * 384 + 8, 384)  # the IMAGE output: 1 x 384 x 776


def test_clips_of_different_sizes_compare(comfyui, clips):
    score, _ = _run(comfyui, clips["right"], clips["right_64px"], grid_size=24)
    assert score > 0.95


def test_camera_mode_reports_cosine_and_magnitude_ratio(comfyui, clips):
    same, outputs = _run(comfyui, clips["pan"], clips["pan_faster"], mode="camera")
    assert same > 0.99
    text = outputs["fidelity"]["text"][0]
    ratio = float(text.split("magnitude ratio ")[1].split()[0])
    assert ratio == pytest.approx(2.0, rel=0.03)
    back, _ = _run(comfyui, clips["pan"], clips["pan_back"], mode="camera")
    assert back < -0.99


def test_long_clips_are_scored_in_segments_that_reacquire_tracks(comfyui, clips):
    """Right for 12 frames, then another shape going down: the whole-clip score finds no track through the
    cut; segments of 8 score each part (1 right, 0 across the cut, about 0 down: perpendicular)."""
    with pytest.raises(PromptFailed, match=r"No point of 'generated' could be tracked through all 24 frames"):
        comfyui.run_prompt(_prompt(clips["right_24_frames"], clips["cut_24_frames"]))
    score, outputs = _run(comfyui, clips["right_24_frames"], clips["cut_24_frames"], segment_frames=8)
    text = outputs["fidelity"]["text"][0]
    assert text.startswith(f"mean over 5 segments of 8 frames {score:.3f} (frames 0-7: ")
    listed = text.split("(frames ")[1].split(")")[0].split(", ")
    segment_scores = {part.split(": ")[0]: float(part.split(": ")[1]) for part in listed}
    assert list(segment_scores) == ["0-7", "4-11", "8-15", "12-19", "16-23"]
    assert segment_scores["0-7"] > 0.99 and segment_scores["4-11"] > 0.99  # right, as the reference
    assert segment_scores["8-15"] == 0.0  # no generated track survives the cut
    assert abs(segment_scores["12-19"]) < 0.3 and abs(segment_scores["16-23"]) < 0.3  # down: perpendicular
    assert score == pytest.approx(sum(segment_scores.values()) / 5, abs=1e-3)
    assert _image_size(outputs["show_plot"]["images"][0]) == (2 * 384 + 8, 384)
    whole, _ = _run(comfyui, clips["right_24_frames"], clips["right_24_frames"], segment_frames=0)
    long_segment, _ = _run(comfyui, clips["right_24_frames"], clips["right_24_frames"], segment_frames=24)
    assert whole == long_segment == pytest.approx(1.0, abs=1e-6)


def test_frame_count_mismatch_fails_naming_both_inputs(comfyui, clips):
    with pytest.raises(PromptFailed, match=r"'reference' has 8 frames but 'generated' has 6"):
        comfyui.run_prompt(_prompt(clips["right"], clips["right_6_frames"]))


def test_object_info_describes_the_node_for_the_frontend(object_info):
    info = object_info[NODE]
    assert info["display_name"] == "MotionClone: Motion Fidelity" and info["category"] == "MotionClone"
    assert info["output"] == ["FLOAT", "IMAGE"] and info["output_name"] == ["score", "plot"]
    for name, spec in info["input"]["required"].items():
        assert spec[1].get("tooltip"), f"{NODE}.{name} has no tooltip in /object_info"
