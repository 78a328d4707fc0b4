"""Bad input is refused at the door, through ComfyUI's real executor, with the input named and the fix.

Each case runs a prompt a user could queue, asserts that the message names the input and the fix and
carries no raw internal exception text, and then that the next good run is bit-identical to one made
before any bad input.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import safetensors
import safetensors.torch
import torch
from comfy_harness import PromptFailed
from inversion_prompts import semantic_prompt
from prompts import extract_prompt, motionclone_prompt

INTERNAL_TEXT = ("Traceback", "RuntimeError", "OverflowError", "KeyError", "Inference tensors", "Errno")
MAX_MESSAGE = 1200  # characters: every message stays short, whatever a file holds


@pytest.fixture(scope="module")
def good_run(comfyui, tmp_path_factory):
    """A good guided run made before any bad input, and a check that a later one is bit-identical to it."""
    folder = tmp_path_factory.mktemp("good")
    comfyui.run_prompt(extract_prompt(filename_prefix="valid"))
    baseline = str(folder / "baseline.safetensors")
    comfyui.run_prompt(motionclone_prompt(baseline, motion_file="valid_00001_.safetensors"))
    runs = []

    def check_next_run_identical():
        path = str(folder / f"after_{len(runs)}.safetensors")
        runs.append(path)
        comfyui.run_prompt(motionclone_prompt(path, motion_file="valid_00001_.safetensors"))
        assert torch.equal(safetensors.torch.load_file(path)["samples"],
                           safetensors.torch.load_file(baseline)["samples"])

    return check_next_run_identical


def _refused(comfyui, prompt: dict, *fragments: str) -> str:
    with pytest.raises(PromptFailed) as failure:
        comfyui.run_prompt(prompt)
    message = failure.value.details["exception_message"]
    assert len(message) < MAX_MESSAGE, message[:300]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in: {message}"
    for internal in INTERNAL_TEXT:
        assert internal not in message, message
    return message


def _motion_file(comfyui, name: str, change) -> str:
    """A copy of the valid motion file named `name`, its tensors and header passed through `change(tensors, header)`."""
    folder = os.path.join(comfyui.models_dir, "motionclone")
    with safetensors.safe_open(os.path.join(folder, "valid_00001_.safetensors"), framework="pt") as handle:
        header = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    metadata = json.loads(header["motionclone.metadata"])
    change(tensors, metadata)
    header["motionclone.metadata"] = json.dumps(metadata)
    safetensors.torch.save_file(tensors, os.path.join(folder, name), metadata=header)
    return name


def _first(tensors: dict, kind: str) -> str:
    return sorted(key for key in tensors if key.endswith(kind))[0]


def test_a_huge_header_string_is_refused_with_a_short_message(comfyui, good_run, tmp_path):
    name = _motion_file(comfyui, "huge_family.safetensors", lambda t, m: m.update(model_family="x" * 5_000_000))
    message = _refused(comfyui, motionclone_prompt(str(tmp_path / "out.safetensors"), motion_file=name),
                       "huge_family.safetensors", "model_family", "5000000 characters", "Extract the motion again")
    assert message.count("x") < 100
    good_run()


def test_a_motion_with_a_wrong_position_axis_is_refused(comfyui, good_run, tmp_path):
    def halve_positions(tensors, metadata):
        for key in [k for k in tensors if k.endswith(".values") or k.endswith(".indices")]:
            tensors[key] = tensors[key][: tensors[key].shape[0] // 2].contiguous()

    name = _motion_file(comfyui, "half_positions.safetensors", halve_positions)
    _refused(comfyui, motionclone_prompt(str(tmp_path / "out.safetensors"), motion_file=name),
             "half_positions.safetensors", "attention_blocks.0", "values of shape (8, 8, 4, 1)",
             "expected (positions, heads, 4, 1) = (16, 8, 4, 1)", "Extract the motion again")
    good_run()


def test_int64_indices_guide_exactly_as_the_saved_uint8_ones(comfyui, good_run, tmp_path):
    def widen(tensors, metadata):
        for key in [k for k in tensors if k.endswith(".indices")]:
            tensors[key] = tensors[key].to(torch.int64)

    name = _motion_file(comfyui, "int64_indices.safetensors", widen)
    wide, narrow = str(tmp_path / "wide.safetensors"), str(tmp_path / "narrow.safetensors")
    comfyui.run_prompt(motionclone_prompt(wide, motion_file=name))
    comfyui.run_prompt(motionclone_prompt(narrow, motion_file="valid_00001_.safetensors"))
    assert torch.equal(safetensors.torch.load_file(wide)["samples"], safetensors.torch.load_file(narrow)["samples"])


def _changed(kind: str, transform):
    """A `_motion_file` change applying `transform` to the first layer's `kind` (".values" or ".indices") tensor."""
    def change(tensors, metadata):
        key = _first(tensors, kind)
        tensors[key] = transform(tensors[key].clone()).contiguous()
    return change


def _with_first_entry(value):
    def transform(tensor):
        tensor.view(-1)[0] = value
        return tensor
    return transform


@pytest.mark.parametrize("case, change, fragments", [
    ("negative_indices", _changed(".indices", lambda j: _with_first_entry(-1)(j.to(torch.int16))),
     ("key-frame indices out of range", "expected 0..3")),
    ("float_indices", _changed(".indices", lambda j: j.float()),
     ("key-frame indices are torch.float32", "integer type")),
    ("nan_values", _changed(".values", _with_first_entry(math.nan)), ("not finite probabilities",)),
    ("infinite_frames", lambda tensors, metadata: metadata.update(frames=math.inf), ("'frames'", "float inf")),
])
def test_damaged_motion_files_are_refused_by_name(comfyui, good_run, tmp_path, case, change, fragments):
    name = _motion_file(comfyui, f"{case}.safetensors", change)
    _refused(comfyui, motionclone_prompt(str(tmp_path / "out.safetensors"), motion_file=name),
             f"{case}.safetensors", *fragments, "Extract the motion again")
    good_run()


def test_the_sampler_refuses_a_model_that_already_carries_guidance(comfyui, good_run, tmp_path):
    prompt = motionclone_prompt(str(tmp_path / "out.safetensors"), motion_file="valid_00001_.safetensors")
    prompt["guidance"] = {"class_type": "MotionCloneGuidance", "inputs": {
        "model": ["apply", 0], "motion": ["load_motion", 0], "motion_weight": 2000.0, "guided_fraction": 0.5,
        "warm_up_steps": 1, "cool_down_steps": 1}}
    prompt["sample"]["inputs"]["model"] = ["guidance", 0]
    _refused(comfyui, prompt, "'model'", "already carries 'MotionClone: Guidance'", "Connect the MODEL from before")
    good_run()


def test_a_subject_mask_of_another_prompt_is_refused(comfyui, good_run, tmp_path):
    prompt = semantic_prompt(str(tmp_path / "out.safetensors"), semantic_weight=500.0, steps=4, guided_steps=2)
    prompt["subject_mask"]["inputs"]["prompt"] = "a ball on snow"
    _refused(comfyui, prompt, "'subject_mask'", "'a ball on snow'", "another prompt",
             "Type the sampler's positive prompt into that 'Cross-Attention Mask'")
    good_run()


@pytest.mark.parametrize("target, fragments", [
    ("image", ("'images'", "NaN", "reference frames")),
    ("conditioning", ("'positive'", "NaN", "Re-encode the prompt")),
])
def test_nan_inputs_are_refused_before_the_unet_runs(comfyui, good_run, tmp_path, target, fragments):
    prompt = motionclone_prompt(str(tmp_path / "out.safetensors"))
    if target == "image":
        prompt["poison"] = {"class_type": "MotionCloneTestPoison", "inputs": {"image": ["clip", 0]}}
        prompt["extract"]["inputs"]["images"] = ["poison", 0]
    else:
        prompt["poison"] = {"class_type": "MotionCloneTestPoison", "inputs": {"conditioning": ["positive", 0]}}
        prompt["sample"]["inputs"]["positive"] = ["poison", 2]
    message = _refused(comfyui, prompt, *fragments)
    assert "fp16" not in message
    good_run()


def test_a_nan_motion_weight_is_refused(comfyui, good_run, tmp_path):
    prompt = motionclone_prompt(str(tmp_path / "out.safetensors"), motion_file="valid_00001_.safetensors")
    prompt["sample"]["inputs"]["motion_weight"] = math.nan
    _refused(comfyui, prompt, "'motion_weight'", "finite number")
    good_run()


def test_a_safetensors_motion_module_renamed_ckpt_loads(comfyui, good_run, tmp_path):
    folder = os.path.join(comfyui.models_dir, "animatediff_models")
    shutil.copy(os.path.join(folder, "tiny_v3.safetensors"), os.path.join(folder, "tiny_v3_renamed.ckpt"))
    renamed, original = str(tmp_path / "renamed.safetensors"), str(tmp_path / "original.safetensors")
    comfyui.run_prompt(motionclone_prompt(renamed, motion_module="tiny_v3_renamed.ckpt"))
    comfyui.run_prompt(motionclone_prompt(original))
    assert torch.equal(safetensors.torch.load_file(renamed)["samples"],
                       safetensors.torch.load_file(original)["samples"])


def test_too_many_reference_frames_name_the_frames_input(comfyui, good_run, tmp_path):
    prompt = motionclone_prompt(str(tmp_path / "out.safetensors"), frames=33, width=64, height=64)
    message = _refused(comfyui, prompt, "'images' has 33 frames", "at most 32", "Select Frames")
    assert "latent batch" not in message
    good_run()


def test_a_motion_of_another_motion_module_family_is_shown_on_the_sampler(comfyui, tmp_path):
    prompt = motionclone_prompt(str(tmp_path / "out.safetensors"), motion_file="valid_00001_.safetensors",
                                motion_module="tiny_v2.ckpt")
    outputs = comfyui.run_prompt(prompt)
    text = outputs["sample"]["text"][0]
    assert "Warning: the MOTION was extracted with 'AnimateDiff v3 SD1.5'" in text and "AnimateDiff v2" in text


@pytest.mark.parametrize("prefix, fragment", [
    ("", "is empty"), ("   ", "is empty"), ("a" * 300, "longer than 100 characters"),
    ("bad\x00name", "control character"), ("walks/.hidden", "starting with '.'"),
])
def test_bad_save_motion_prefixes_are_refused(comfyui, good_run, prefix, fragment):
    folder = os.path.join(comfyui.models_dir, "motionclone")
    before = set(os.listdir(folder))
    _refused(comfyui, extract_prompt(filename_prefix=prefix), "'filename_prefix'", fragment, "Type a short name")
    assert set(os.listdir(folder)) == before
    good_run()
