"""Checks at the door: a MOTION is validated wherever it enters (a file, a node input) before any math runs.

Every failure of a MOTION is a `MotionFileError` (`require_finite`, for any tensor, raises `MotionCloneError`) that
names the source (the file or the input), the layer or field, what was expected and what was found, and the fix. Text
from a file is never echoed beyond a short excerpt (`excerpt`), so a hostile or damaged header cannot flood the node's
text, the history or the log.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

import torch

from .errors import MotionCloneError, MotionFileError
from .layout import BLOCK_DOWNSCALE
from .motion_module import MOTION_MODULE_HEADS
from .representation import FORMAT_VERSION, MotionMetadata, MotionRepresentation
from .windows import SCHEDULES

EXCERPT_CHARS = 60
MAX_TEXT_CHARS = 200  # model_family, layer and block names
MAX_LAYERS = 64  # v2 has 32 attention layers in all blocks
MAX_FRAMES = 4096
MAX_LATENT_SIDE = 1024  # 8192 px
MAX_TIMESTEPS = 1000
_LAYER = re.compile(r"^(down_blocks\.[0-3]|mid_block|up_blocks\.[0-3])\.motion_modules\.\d+\.temporal_transformer\."
                    r"transformer_blocks\.\d+\.attention_blocks\.\d+$")
FIX = "Extract the motion again with 'MotionClone: Extract Motion' (and save it again if it came from a file)."


def excerpt(value, limit: int = EXCERPT_CHARS) -> str:
    """`value` for a message: a text quoted, anything else as Python writes it; cut to `limit` characters,
    with the full length when cut."""
    is_text = isinstance(value, str)
    text = value if is_text else repr(value)
    shown = text if len(text) <= limit else text[:limit]
    shown = repr(shown) if is_text else shown
    return shown if len(text) <= limit else f"{shown}... ({len(text)} characters)"


def _integer(raw: Mapping, key: str, low: int, high: int, source: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "missing" if value is None else f"{type(value).__name__} {excerpt(value)}"
        raise MotionFileError(f"{source} is damaged: metadata field '{key}' should be an integer in {low}..{high}, "
                              f"found {kind}. {FIX}")
    if not low <= value <= high:
        raise MotionFileError(f"{source} is damaged: metadata field '{key}' should lie in {low}..{high}, found "
                              f"{excerpt(value)}. {FIX}")
    return value


def _text(value, key: str, source: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT_CHARS:
        found = f"{type(value).__name__} {excerpt(value)}" if isinstance(value, str) else type(value).__name__
        raise MotionFileError(f"{source} is damaged: metadata field '{key}' should be a text of 1..{MAX_TEXT_CHARS} "
                              f"characters, found {found}. {FIX}")
    return value


def _text_list(raw: Mapping, key: str, limit: int, source: str) -> tuple[str, ...]:
    value = raw.get(key)
    if not isinstance(value, list) or not 1 <= len(value) <= limit:
        found = f"a list of {len(value)}" if isinstance(value, list) else type(value).__name__
        raise MotionFileError(f"{source} is damaged: metadata field '{key}' should be a list of 1..{limit} names, "
                              f"found {found}. {FIX}")
    return tuple(_text(item, key, source) for item in value)


def metadata_from_header(raw, format_version: int, source: str) -> MotionMetadata:
    """Typed, bounded `MotionMetadata` from a motion file's decoded header JSON."""
    if not isinstance(raw, dict):
        raise MotionFileError(f"{source} is damaged: its metadata is {type(raw).__name__}, expected an object. {FIX}")
    frames = _integer(raw, "frames", 1, MAX_FRAMES, source)
    timesteps = raw.get("timesteps", [])
    if not isinstance(timesteps, list) or len(timesteps) > MAX_TIMESTEPS:
        raise MotionFileError(f"{source} is damaged: metadata field 'timesteps' should be a list of at most "
                              f"{MAX_TIMESTEPS} timesteps. {FIX}")
    stamps = tuple(_integer({"timesteps": t}, "timesteps", 0, 999, source) for t in timesteps)
    layers = _text_list(raw, "layers", MAX_LAYERS, source)
    blocks = _text_list(raw, "blocks", len(BLOCK_DOWNSCALE), source)
    for block in blocks:
        if block not in BLOCK_DOWNSCALE:
            raise MotionFileError(f"{source} is damaged: unknown block {excerpt(block)} in its metadata. {FIX}")
    for layer in layers:
        if not _LAYER.match(layer) or not any(layer.startswith(block + ".") for block in blocks):
            raise MotionFileError(f"{source} is damaged: layer {excerpt(layer, MAX_TEXT_CHARS)} is not a "
                                  f"temporal-attention layer of the blocks {', '.join(blocks)}. {FIX}")
    window_length, window_overlap, window_schedule = _window_layout(raw, frames, source)
    return MotionMetadata(
        frames=frames,
        latent_height=_integer(raw, "latent_height", 1, MAX_LATENT_SIDE, source),
        latent_width=_integer(raw, "latent_width", 1, MAX_LATENT_SIDE, source),
        layers=layers, blocks=blocks,
        top_k=_integer(raw, "top_k", 1, window_length or frames, source),
        timestep=_integer(raw, "timestep", 0, 999, source),
        model_family=_text(raw.get("model_family"), "model_family", source),
        timesteps=stamps, format_version=format_version,
        window_length=window_length, window_overlap=window_overlap, window_schedule=window_schedule,
    )


def _window_layout(raw: Mapping, frames: int, source: str) -> tuple[int, int, str]:
    """`(length, overlap, schedule)` of a windowed motion (format 3); `(0, 0, "")`, one window, when absent
    (formats 1 and 2 never have it). A windowed motion has more than one window: length < frames."""
    if raw.get("window_length", 0) == 0 and "window_overlap" not in raw and "window_schedule" not in raw:
        return 0, 0, ""
    length = _integer(raw, "window_length", 2, frames - 1, source)
    overlap = _integer(raw, "window_overlap", 0, length - 1, source)
    schedule = raw.get("window_schedule")
    if schedule not in SCHEDULES:
        raise MotionFileError(f"{source} is damaged: metadata field 'window_schedule' should be one of "
                              f"{', '.join(SCHEDULES)}, found {excerpt(schedule)}. {FIX}")
    return length, overlap, schedule


def positions_of(layer: str, latent_height: int, latent_width: int) -> int:
    """Spatial positions `h_l * w_l` a layer attends over: the latent halved (rounding up) per UNet level."""
    block = next(b for b in BLOCK_DOWNSCALE if layer.startswith(b + "."))
    height, width = latent_height, latent_width
    for _ in range(BLOCK_DOWNSCALE[block]):
        height, width = -(-height // 2), -(-width // 2)
    return height * width


def validate_representation(representation: MotionRepresentation, source: str) -> MotionRepresentation:
    """Check every tensor of `representation` against its metadata: all axes, dtypes, index range, finiteness.

    Args:
        source: how the message names where the MOTION came from, e.g. "Motion file 'a.safetensors'" or
            "The MOTION connected to 'motion'".

    Returns:
        `representation` unchanged.
    """
    meta = representation.metadata
    if not isinstance(meta, MotionMetadata) or meta.format_version > FORMAT_VERSION:
        raise MotionFileError(f"{source} is not a MotionClone motion of format {FORMAT_VERSION} or older. {FIX}")
    window_frames = meta.frames_per_window
    if meta.top_k > window_frames:
        raise MotionFileError(f"{source} is damaged: top-{meta.top_k} exceeds the {window_frames} frames of its "
                              f"{'windows' if meta.windowed else 'clip'}. {FIX}")
    for layer in meta.layers:
        values, indices = representation.values.get(layer), representation.indices.get(layer)
        if not isinstance(values, torch.Tensor) or not isinstance(indices, torch.Tensor):
            raise MotionFileError(f"{source} is damaged: layer {excerpt(layer, MAX_TEXT_CHARS)} has no values or "
                                  f"indices tensor. {FIX}")
        lead = ((len(meta.timesteps),) if meta.timesteps else ()) + ((len(meta.windows),) if meta.windowed else ())
        expected = (*lead, positions_of(layer, meta.latent_height, meta.latent_width), MOTION_MODULE_HEADS,
                    window_frames, meta.top_k)
        for kind, tensor in (("values", values), ("indices", indices)):
            if tuple(tensor.shape) != expected:
                axes = ", ".join(map(str, (*lead, "positions", "heads", window_frames, meta.top_k)))
                raise MotionFileError(
                    f"{source} is damaged: layer {excerpt(layer, MAX_TEXT_CHARS)} has {kind} of shape "
                    f"{tuple(tensor.shape)}, expected ({axes}) = {expected} for its metadata ({meta.frames} frames, "
                    f"{meta.describe_windows()}, latent {meta.latent_width}x{meta.latent_height}, "
                    f"top-{meta.top_k}). {FIX}")
        if values.dtype != torch.float16:
            raise MotionFileError(f"{source} is damaged: layer {excerpt(layer, MAX_TEXT_CHARS)} values are "
                                  f"{values.dtype}, expected float16. {FIX}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise MotionFileError(f"{source} is damaged: layer {excerpt(layer, MAX_TEXT_CHARS)} key-frame indices are "
                                  f"{indices.dtype}, expected an integer type (uint8 for up to 256 frames). {FIX}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= window_frames):
            raise MotionFileError(
                f"{source} is damaged: layer {excerpt(layer, MAX_TEXT_CHARS)} has key-frame indices out of range: "
                f"found {int(indices.min())}..{int(indices.max())}, expected 0..{window_frames - 1} for "
                f"{window_frames} frames. {FIX}")
        if not bool(torch.isfinite(values).all()) or (values.numel() and (values.min() < 0 or values.max() > 1)):
            raise MotionFileError(f"{source} is damaged: layer {excerpt(layer, MAX_TEXT_CHARS)} has attention values "
                                  f"that are not finite probabilities in 0..1. {FIX}")
    return representation


def require_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    """Raise `MotionCloneError` naming `what` when `tensor` holds NaN or infinity."""
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise MotionCloneError(f"{what} holds {bad} NaN or infinite values of {tensor.numel()}. {fix}")



def require_finite_number(value: float, input_name: str) -> None:
    """Raise `MotionCloneError` naming the input when a number widget holds NaN or infinity: they pass
    ComfyUI's min/max checks (every comparison with NaN is false) and break arithmetic far from the input."""
    if not math.isfinite(value):
        raise MotionCloneError(
            f"'{input_name}' is {value}; it must be a finite number. Type a number into '{input_name}'."
        )
