"""Windowed motion representations: one entry per context window, their files (format 3) and older files."""

from __future__ import annotations

import dataclasses
import json

import pytest
import safetensors
import safetensors.torch
import torch

from motionclone import (
    MotionFileError,
    MotionMetadata,
    load_motion,
    save_motion,
    stack_timesteps,
    top_k_representation,
)
from motionclone.representation import stack_windows
from motionclone.validation import validate_representation

LAYERS = ("up_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0",)
FRAMES, LENGTH, OVERLAP = 10, 4, 1  # windows 0..3, 3..6, 6..9


def _metadata(**changes) -> MotionMetadata:
    base = MotionMetadata(frames=FRAMES, latent_height=8, latent_width=12, layers=LAYERS, blocks=("up_blocks.1",),
                          top_k=2, timestep=400, model_family="AnimateDiff v3 SD1.5", window_length=LENGTH,
                          window_overlap=OVERLAP, window_schedule="uniform")
    return dataclasses.replace(base, **changes)


def _window_entries(seed: int, metadata: MotionMetadata):
    generator = torch.Generator().manual_seed(seed)
    single = dataclasses.replace(metadata, frames=LENGTH, window_length=0, window_overlap=0, window_schedule="",
                                 timesteps=())
    return [top_k_representation({LAYERS[0]: torch.softmax(torch.randn(6, 8, LENGTH, LENGTH, generator=generator), -1)},
                                 metadata.top_k, single) for _ in metadata.windows]


def test_a_windowed_motion_stacks_one_entry_per_window_with_window_local_indices():
    metadata = _metadata()
    assert metadata.windows == [(0, 1, 2, 3), (3, 4, 5, 6), (6, 7, 8, 9)]
    entries = _window_entries(0, metadata)
    motion = validate_representation(stack_windows(entries, metadata), "test")
    assert motion.values[LAYERS[0]].shape == (3, 6, 8, LENGTH, 2)
    for index, entry in enumerate(entries):
        window = motion.window(index)
        assert window.metadata.frames == LENGTH and not window.metadata.windowed
        assert torch.equal(window.values[LAYERS[0]], entry.values[LAYERS[0]])
        assert torch.equal(window.indices[LAYERS[0]], entry.indices[LAYERS[0]])
    assert "3 windows of 4 frames (overlap 1, uniform)" in metadata.describe()


def test_per_timestep_windowed_motion_puts_the_timestep_axis_first(tmp_path):
    metadata = _metadata(timesteps=(999, 900))
    per_step = [
        stack_windows(_window_entries(seed, metadata), dataclasses.replace(metadata, timesteps=())) for seed in (1, 2)
    ]
    motion = stack_timesteps(per_step, metadata)
    assert motion.values[LAYERS[0]].shape == (2, 3, 6, 8, LENGTH, 2)
    window = motion.window(1)
    assert window.metadata.timesteps == (999, 900)
    values, _ = window.to_device(torch.device("cpu"), 900)
    assert torch.equal(values[LAYERS[0]], per_step[1].values[LAYERS[0]][1].float())
    path = str(tmp_path / "m.safetensors")
    save_motion(motion, path)
    loaded = load_motion(path)
    assert loaded.metadata == motion.metadata and loaded.metadata.format_version == 3
    assert torch.equal(loaded.indices[LAYERS[0]], motion.indices[LAYERS[0]])


def test_windowed_files_round_trip_and_keep_the_layout(tmp_path):
    motion = stack_windows(_window_entries(3, _metadata(window_schedule="looped")), _metadata(window_schedule="looped"))
    path = str(tmp_path / "looped.safetensors")
    save_motion(motion, path)
    with safetensors.safe_open(path, framework="pt") as handle:
        header = handle.metadata()
    assert header["motionclone.format"] == "3"
    assert json.loads(header["motionclone.metadata"])["window_schedule"] == "looped"
    loaded = load_motion(path)
    # 0..3 3..6 6..9 9..2
    assert loaded.metadata.windows == motion.metadata.windows and len(loaded.metadata.windows) == 4


def _rewrite(path, tmp_path, metadata_changes=None, tensors=None, **header_changes) -> str:
    with safetensors.safe_open(path, framework="pt") as handle:
        header = dict(handle.metadata())
        original = {key: handle.get_tensor(key) for key in handle.keys()}
    raw = json.loads(header["motionclone.metadata"])
    raw.update(metadata_changes or {})
    header["motionclone.metadata"] = json.dumps(raw)
    header.update(header_changes)
    out = str(tmp_path / "changed.safetensors")
    safetensors.torch.save_file(tensors if tensors is not None else original, out, metadata=header)
    return out


@pytest.mark.parametrize("version", ["1", "2"])
def test_format_1_and_2_files_load_as_one_window(tmp_path, version):
    single = dataclasses.replace(_metadata(), window_length=0, window_overlap=0, window_schedule="", frames=LENGTH)
    path = str(tmp_path / "old.safetensors")
    save_motion(_window_entries(4, _metadata())[0], path)
    loaded = load_motion(_rewrite(path, tmp_path, **{"motionclone.format": version}))
    assert not loaded.metadata.windowed and loaded.metadata.windows == [tuple(range(LENGTH))]
    assert loaded.metadata.format_version == int(version) and loaded.metadata.frames == single.frames


@pytest.mark.parametrize("changes,message", [
    ({"window_length": FRAMES}, "'window_length' should lie in 2..9, found 10"),
    ({"window_length": 1}, "'window_length' should lie in 2..9"),
    ({"window_overlap": LENGTH}, "'window_overlap' should lie in 0..3"),
    ({"window_schedule": "static"}, "'window_schedule' should be one of uniform, looped"),
    ({"top_k": 5}, "'top_k' should lie in 1..4"),
    # 3 windows of 4 frames stored, but length 3 / overlap 0 means 0..2, 3..5, 6..8, 7..9: 4 windows of 3.
    ({"window_overlap": 0, "window_length": 3}, r"expected \(4, positions, heads, 3, 2\)"),
])
def test_damaged_window_layouts_are_refused_naming_the_field(tmp_path, changes, message):
    motion = stack_windows(_window_entries(5, _metadata()), _metadata())
    path = str(tmp_path / "w.safetensors")
    save_motion(motion, path)
    with pytest.raises(MotionFileError, match=message):
        load_motion(_rewrite(path, tmp_path, changes))
