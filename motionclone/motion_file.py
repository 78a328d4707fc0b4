"""Motion files: a `MotionRepresentation` as `.safetensors`, its metadata in the header.

Tensors are named `<layer>.values` and `<layer>.indices`; the header holds `motionclone.format`
(an integer, raised whenever the layout changes) and `motionclone.metadata` (JSON).
"""

from __future__ import annotations

import json
import os

import safetensors
import safetensors.torch
import torch

from .errors import MotionFileError
from .representation import FORMAT_VERSION, MotionMetadata, MotionRepresentation

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
            f"Motion file '{name}' cannot be read ({error}). It is damaged or not a .safetensors file; "
            "extract the motion again with 'MotionClone: Extract Motion' and save it."
        ) from error
    if FORMAT_KEY not in header:
        raise MotionFileError(
            f"'{name}' is a .safetensors file but not a MotionClone motion file (no '{FORMAT_KEY}' in its header)."
        )
    try:
        version = int(header[FORMAT_KEY])
    except ValueError as error:
        raise MotionFileError(f"Motion file '{name}' has a damaged header ({FORMAT_KEY}={header[FORMAT_KEY]!r}).") from error
    if version > FORMAT_VERSION:
        raise MotionFileError(
            f"Motion file '{name}' uses format {version}, but this version of ComfyUI-MotionClone reads up to "
            f"format {FORMAT_VERSION}. Update the ComfyUI-MotionClone node pack."
        )
    try:
        raw = json.loads(header[METADATA_KEY])
        metadata = MotionMetadata(
            frames=int(raw["frames"]), latent_height=int(raw["latent_height"]), latent_width=int(raw["latent_width"]),
            layers=tuple(raw["layers"]), blocks=tuple(raw["blocks"]), top_k=int(raw["top_k"]),
            timestep=int(raw["timestep"]), model_family=str(raw["model_family"]),
            timesteps=tuple(int(t) for t in raw.get("timesteps", ())), format_version=version,
        )
        values = {layer: tensors[f"{layer}.values"] for layer in metadata.layers}
        indices = {layer: tensors[f"{layer}.indices"] for layer in metadata.layers}
    except (KeyError, TypeError, ValueError) as error:
        raise MotionFileError(
            f"Motion file '{name}' is damaged: its header or tensors are incomplete ({error!r}). Extract the motion again."
        ) from error
    _check_shapes(name, metadata, values, indices)
    return MotionRepresentation(metadata, values, indices)


def _check_shapes(name: str, metadata: MotionMetadata, values: dict, indices: dict) -> None:
    for layer in metadata.layers:
        v, j = values[layer], indices[layer]
        expected_tail = (metadata.frames, metadata.top_k)
        lead = (len(metadata.timesteps),) if metadata.timesteps else ()
        if v.shape != j.shape or tuple(v.shape[-2:]) != expected_tail or tuple(v.shape[:-4]) != lead or v.ndim != 4 + len(lead):
            expected = ", ".join(map(str, (*lead, "positions", "heads", metadata.frames, metadata.top_k)))
            raise MotionFileError(
                f"Motion file '{name}' is damaged: layer {layer} has values {tuple(v.shape)} and indices "
                f"{tuple(j.shape)}, expected ({expected}) for both."
            )
        if j.dtype.is_floating_point or (j.numel() and int(j.max()) >= metadata.frames):
            raise MotionFileError(f"Motion file '{name}' is damaged: layer {layer} has key-frame indices out of range.")
        if v.dtype != torch.float16:
            raise MotionFileError(f"Motion file '{name}' is damaged: layer {layer} values are {v.dtype}, expected float16.")
