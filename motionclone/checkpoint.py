"""Reading AnimateDiff motion-module files and telling their versions apart.

Supported: SD1.5 modules in the original AnimateDiff key format — v1 (`mm_sd_v14`, `mm_sd_v15`: no mid
block, 24-frame encoding), v2 (`mm_sd_v15_v2`: mid block), v3 (`v3_sd15_mm`: no mid block, 32 frames)
and AnimateLCM (mid block, no stored positional encoding: rebuilt for 64 frames). Everything else is
refused with a message naming the file and what it holds. `.ckpt` files are read with
`torch.load(weights_only=True)`, so no pickled code ever runs.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass

import torch

from .errors import MotionModuleFormatError
from .motion_module import AnimateDiffMotionModel, TorchOperations

ANIMATELCM_MAX_FRAMES = 64
_KEY = re.compile(
    r"^(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))\.motion_modules\.(\d+)\.temporal_transformer\.(.+)$"
)


@dataclass(frozen=True)
class MotionModuleSpec:
    """What a motion-module state dict holds, read from its keys and shapes."""

    version: str  # "v1", "v2", "v3" or "AnimateLCM"
    channels: tuple[int, int, int, int]
    has_mid_block: bool
    max_frames: int
    transformer_blocks: int
    attention_layers: int
    stores_positional_encoding: bool

    def describe(self) -> str:
        mid = ", mid block" if self.has_mid_block else ""
        return f"AnimateDiff {self.version} (SD1.5, up to {self.max_frames} frames{mid})"


def is_safetensors_file(path: str) -> bool:
    """Whether the file's content is safetensors (an 8-byte little-endian header length, then a JSON object).

    The format is read from the content, not the extension: files get renamed.
    """
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    header_length = int.from_bytes(head[:8], "little")
    return 2 <= header_length <= os.path.getsize(path) - 8


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load the tensors of a safetensors or torch (`.ckpt`, `.pt`, `.pth`, `.bin`) file onto the CPU."""
    name = os.path.basename(path)
    try:
        if is_safetensors_file(path):
            import safetensors.torch

            state = safetensors.torch.load_file(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MotionModuleFormatError(f"Motion module file '{path}' does not exist.") from None
    except pickle.UnpicklingError as error:
        raise MotionModuleFormatError(
            f"Motion module '{name}' contains pickled Python objects besides tensors. This pack reads .ckpt files "
            "with weights_only=True and never runs code from a file: use a .safetensors copy, or a clean download."
        ) from error
    except Exception as error:  # noqa: BLE001 - any failure to parse means a damaged or foreign file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise MotionModuleFormatError(
            f"Could not read motion module '{name}' ({type(error).__name__}: {reason}). The file is damaged, "
            "incomplete, or not a weights file; download it again."
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MotionModuleFormatError(f"Motion module '{name}' holds {type(state).__name__}, not a dict of tensors.")
    return state


def detect_motion_module(state: dict[str, torch.Tensor], name: str = "the file") -> MotionModuleSpec:
    """Classify a state dict as an AnimateDiff SD1.5 motion module, or raise naming what it is."""
    keys = list(state)
    if not keys:
        raise MotionModuleFormatError(f"{name} is empty: expected AnimateDiff motion-module weights.")
    if any("temporal_attentions." in k or k.endswith("positional_encoding") for k in keys):
        raise MotionModuleFormatError(
            f"{name} is a HotShot-XL (SDXL) temporal module; this pack runs AnimateDiff SD1.5 motion modules "
            "(mm_sd_v15_v2, v3_sd15_mm, AnimateLCM)."
        )
    motion_keys = [k for k in keys if ".motion_modules." in k or k.startswith("mid_block.motion_modules.")]
    if not motion_keys:
        sample = ", ".join(keys[:3])
        raise MotionModuleFormatError(
            f"{name} holds no AnimateDiff motion modules (no 'motion_modules.' keys; first keys: {sample}). "
            "Is it a checkpoint or a LoRA? Put motion modules such as v3_sd15_mm.ckpt in models/animatediff_models."
        )
    if any(k.startswith("conv_in.") for k in keys):
        raise MotionModuleFormatError(f"{name} is a PIA module (has conv_in); it is not supported.")
    foreign = [k for k in motion_keys if ".temporal_transformer." not in k]
    if foreign:
        raise MotionModuleFormatError(
            f"{name} is in the diffusers MotionAdapter layout (e.g. '{foreign[0]}'); use the original "
            "AnimateDiff file instead (mm_sd_v15_v2.ckpt, v3_sd15_mm.ckpt, AnimateLCM_sd15_t2v.ckpt)."
        )
    matches = [_KEY.match(k) for k in motion_keys]
    unknown = [k for k, m in zip(motion_keys, matches) if m is None]
    if unknown:
        raise MotionModuleFormatError(f"{name} has keys this pack does not know, e.g. '{unknown[0]}'.")

    down_levels = {int(m.group(2)) for m in matches if m.group(2) is not None}
    if max(down_levels, default=-1) != 3:
        raise MotionModuleFormatError(
            f"{name} has motion modules in {max(down_levels, default=-1) + 1} down levels; SD1.5 modules have 4 "
            "(3 levels means an SDXL module such as mm_sdxl_v10_beta, which this pack does not run)."
        )
    channels = tuple(_level_channels(state, f"down_blocks.{i}", name) for i in range(4))
    has_mid = any(m.group(1) == "mid_block" for m in matches)
    pe_keys = [k for k in motion_keys if k.endswith("pos_encoder.pe")]
    transformer_blocks = 1 + max(
        int(re.search(r"transformer_blocks\.(\d+)", k).group(1)) for k in motion_keys if "transformer_blocks." in k
    )
    attention_layers = 1 + max(
        int(re.search(r"attention_blocks\.(\d+)", k).group(1)) for k in motion_keys if "attention_blocks." in k
    )
    if pe_keys:
        max_frames = int(state[pe_keys[0]].shape[1])
        version = "v2" if has_mid else ("v1" if max_frames == 24 else "v3")
    else:
        max_frames, version = ANIMATELCM_MAX_FRAMES, "AnimateLCM"
    return MotionModuleSpec(version, channels, has_mid, max_frames, transformer_blocks, attention_layers, bool(pe_keys))


def _level_channels(state: dict[str, torch.Tensor], prefix: str, name: str) -> int:
    key = f"{prefix}.motion_modules.0.temporal_transformer.proj_in.weight"
    if key not in state:
        raise MotionModuleFormatError(f"{name} is incomplete: '{key}' is missing. Download the file again.")
    return int(state[key].shape[0])


def build_motion_model(
    state: dict[str, torch.Tensor], name: str = "the file", operations=TorchOperations,
    dtype: torch.dtype | None = None, compute_dtype: torch.dtype | None = None,
) -> tuple[AnimateDiffMotionModel, MotionModuleSpec]:
    """Detect the version, build the matching `AnimateDiffMotionModel` and load the weights strictly.

    `operations`, `dtype` (storage) and `compute_dtype` as in `AnimateDiffMotionModel`; the file's values
    are converted to `dtype` on loading (float32 when None).
    """
    spec = detect_motion_module(state, name)
    model = AnimateDiffMotionModel(
        spec.channels, spec.has_mid_block, spec.max_frames, spec.transformer_blocks, spec.attention_layers,
        operations, dtype, compute_dtype=compute_dtype,
    )
    wanted = {k: v for k, v in state.items() if ".motion_modules." in k or k.startswith("mid_block.")}
    try:
        result = model.load_state_dict(wanted, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise MotionModuleFormatError(f"{name} does not match the {spec.describe()} layout: {error}") from error
    missing = [k for k in result.missing_keys if spec.stores_positional_encoding or not k.endswith("pos_encoder.pe")]
    if missing or result.unexpected_keys:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {result.unexpected_keys[:3]}"
        raise MotionModuleFormatError(
            f"{name} is incomplete or altered ({len(missing)} missing, {len(result.unexpected_keys)} unexpected keys; "
            f"{detail}). Download the file again."
        )
    model.family = f"AnimateDiff {spec.version} SD1.5"
    return model, spec


def load_motion_module(
    path: str, operations=TorchOperations, dtype: torch.dtype | None = None, compute_dtype: torch.dtype | None = None
) -> tuple[AnimateDiffMotionModel, MotionModuleSpec]:
    """Read `path` and return the loaded motion model (eval mode, no grad) and its spec.

    Weights are float32 plain-torch layers by default; `operations`, `dtype` and `compute_dtype` as in
    `build_motion_model`.
    """
    name = f"Motion module '{os.path.basename(path)}'"
    model, spec = build_motion_model(read_state_dict(path), name, operations, dtype, compute_dtype)
    return model.eval().requires_grad_(False), spec


def convert_motion_model(
    model: AnimateDiffMotionModel, operations=TorchOperations, dtype: torch.dtype | None = None,
    compute_dtype: torch.dtype | None = None,
) -> AnimateDiffMotionModel:
    """A new motion model of the same layout, built from `operations`, with `model`'s weights stored in `dtype`.

    `model` is left as it is (a host may still use it elsewhere); the copy is in eval mode, without grad.
    """
    converted = AnimateDiffMotionModel(
        model.channels, model.has_mid_block, model.max_frames, model.transformer_blocks, model.attention_layers,
        operations, dtype, compute_dtype=compute_dtype,
    )
    converted.load_state_dict(model.state_dict())
    converted.family = model.family
    return converted.eval().requires_grad_(False)
