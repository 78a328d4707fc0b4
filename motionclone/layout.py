"""Where AnimateDiff's motion modules sit in ComfyUI's SD1.5 UNet: the one diffusers <-> ComfyUI map.

diffusers `down_blocks.k` are ComfyUI `input_blocks[3k+1, 3k+2]`, `mid_block` is `middle_block`, and
`up_blocks.k` are `output_blocks[3k, 3k+1, 3k+2]` (AnimateDiff `unet.py`; ComfyUI `openaimodel.py`).
Inside a block the module goes after the last spatial transformer, or after the resnet where there is
none, and always before an up/down-sampler.
"""

from __future__ import annotations

from .errors import MotionCloneError

SD15_INPUT_BLOCKS = 12
SD15_OUTPUT_BLOCKS = 12
# ComfyUI's SD1.5 output blocks holding up_blocks.1's spatial transformers: where subject masks are read from
# cross-attention (docs/algorithm.md §5).
MASK_CROSS_BLOCKS = (("output", 3), ("output", 4), ("output", 5))
# Each diffusers block's resolution as a power of two below the latent's (a motion file's blocks are checked
# against it).
BLOCK_DOWNSCALE = {
    **{f"down_blocks.{i}": i for i in range(4)}, "mid_block": 3, **{f"up_blocks.{i}": 3 - i for i in range(4)},
}


def comfy_block_of(module_name: str) -> tuple[str, int]:
    """`"up_blocks.1.motion_modules.2"` -> `("output", 5)`; `"mid_block.motion_modules.0"` -> `("middle", 0)`."""
    parts = module_name.split(".")
    if parts[0] == "mid_block":
        return ("middle", 0)
    level, index = int(parts[1]), int(parts[3])
    if parts[0] == "down_blocks":
        return ("input", 3 * level + 1 + index)
    return ("output", 3 * level + index)


def validate_block_names(blocks: tuple[str, ...], has_mid_block: bool) -> tuple[str, ...]:
    """Check user-facing block names such as `"up_blocks.1"`; returns them unchanged."""
    valid = [f"down_blocks.{i}" for i in range(4)] + [f"up_blocks.{i}" for i in range(4)]
    if has_mid_block:
        valid.append("mid_block")
    for block in blocks:
        if block not in valid:
            raise MotionCloneError(f"Unknown motion-module block '{block}'; expected one of {', '.join(valid)}.")
    return blocks


def in_blocks(name: str, blocks: tuple[str, ...]) -> bool:
    """Whether the module or layer `name` lies in one of the diffusers `blocks` (or is one of them)."""
    return any(name == block or name.startswith(block + ".") for block in blocks)


def block_of_layer(layer_name: str) -> str:
    """`"up_blocks.1.motion_modules.2.temporal_transformer..."` -> `"up_blocks.1"` (the diffusers block)."""
    return ".".join(layer_name.split(".")[:2])


def resolution_level(kind: str, index: int) -> int | str:
    """Resolution level of a ComfyUI SD1.5 block (0 = latent resolution, 1 = half, ...; "middle").

    Input 0 (conv_in) and 1-3 are level 0, 4-6 level 1, ...; output 0-2 are level 3, ..., 9-11 level 0.
    """
    if kind == "middle":
        return "middle"
    if kind == "input":
        return max(index - 1, 0) // 3
    return 3 - index // 3
