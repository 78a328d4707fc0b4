"""Motion files: a `MotionRepresentation` as `.safetensors`, its metadata in the header.

Tensors are named `<layer>.values` and `<layer>.indices`; the header holds `motionclone.format`
(an integer, raised whenever the layout changes) and `motionclone.metadata` (JSON).
"""

from __future__ import annotations

import json
import os

import safetensors
import safetensors.torch

from .errors import MotionFileError
from .representation import FORMAT_VERSION, MotionRepresentation
from .validation import excerpt, metadata_from_header, validate_representation

FORMAT_KEY = "motionclone.format"
METADATA_KEY = "motionclone.metadata"


def save_motion(representation: MotionRepresentation, path: str) -> None:
    meta = representation.metadata
    header = {
        FORMAT_KEY: str(FORMAT_VERSION),
        METADATA_KEY: json.dumps({
            "frames": meta.frames, "latent_height": meta.latent_height, "latent_width": meta.latent_width,
            "layers": list(meta.layers), "blocks": list(meta.blocks), "top_k": meta.top_k,
            "timestep": meta.timestep, "model_family": meta.model_family, "timesteps": list(meta.timesteps),
            **({"window_length": meta.window_length, "window_overlap": meta.window_overlap,
                "window_schedule": meta.window_schedule} if meta.windowed else {}),
        }),
    }
    tensors = {}
    for name in meta.layers:
        tensors[f"{name}.values"] = representation.values[name].contiguous()
        tensors[f"{name}.indices"] = representation.indices[name].contiguous()
    safetensors.torch.save_file(tensors, path, metadata=header)


def load_motion(path: str) -> MotionRepresentation:
    """Read a motion file; raises `MotionFileError` naming the file and the fix when it cannot."""
    name = os.path.basename(path)
    try:
        with safetensors.safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise MotionFileError(
            f"Motion file {excerpt(name)} cannot be read as safetensors ({type(error).__name__}): it is damaged or "
            "not a .safetensors file. Extract the motion again with 'MotionClone: Extract Motion' and save it."
        ) from error
    if FORMAT_KEY not in header:
        raise MotionFileError(
            f"{excerpt(name)} is a .safetensors file but not a MotionClone motion file (no '{FORMAT_KEY}' in its "
            "header). Pick a file saved by 'MotionClone: Save Motion'."
        )
    source = f"Motion file {excerpt(name)}"
    format_text = header[FORMAT_KEY]
    if not (isinstance(format_text, str) and format_text.isdecimal() and len(format_text) <= 6):
        raise MotionFileError(
            f"{source} has a damaged header ({FORMAT_KEY}={excerpt(format_text)}): extract the motion again."
        )
    version = int(format_text)
    if version > FORMAT_VERSION:
        raise MotionFileError(
            f"{source} uses format {version}, but this version of ComfyUI-MotionClone reads up to "
            f"format {FORMAT_VERSION}. Update the ComfyUI-MotionClone node pack."
        )
    try:
        raw = json.loads(header.get(METADATA_KEY, ""))
    except ValueError as error:
        raise MotionFileError(
            f"{source} is damaged: its '{METADATA_KEY}' header is not JSON. Extract the motion again."
        ) from error
    metadata = metadata_from_header(raw, version, source)
    missing = [
        f"{layer}.{kind}" for layer in metadata.layers for kind in ("values", "indices")
        if f"{layer}.{kind}" not in tensors
    ]
    if missing:
        raise MotionFileError(
            f"{source} is damaged: tensor {excerpt(missing[0])} is missing. Extract the motion again."
        )
    values = {layer: tensors[f"{layer}.values"] for layer in metadata.layers}
    indices = {layer: tensors[f"{layer}.indices"] for layer in metadata.layers}
    return validate_representation(MotionRepresentation(metadata, values, indices), source)
