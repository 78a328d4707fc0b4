"""The toy video world: seeded clips of coloured shapes and camera pans with exactly known motion.

`random_clip(seed, ...)` for benchmark and training clips, `render_clip(ClipSpec(...))` for a clip
built to order. Each `ToyClip` holds frames `(F, H, W, 3)` in [0, 1] (ComfyUI's IMAGE layout), a prompt
naming colour and shape ("a red circle"), and the ground truth (per-frame positions and scales of every
shape, the pan). Pure numpy/torch.
"""

from .world import (
    COLOURS,
    DEFAULT_SPEED,
    MOTIONS,
    PLAIN_BACKGROUND,
    SHAPES,
    ClipSpec,
    ShapeSpec,
    ShapeTruth,
    ToyClip,
    random_clip,
    render_clip,
)

__all__ = [
    "COLOURS",
    "DEFAULT_SPEED",
    "MOTIONS",
    "PLAIN_BACKGROUND",
    "SHAPES",
    "ClipSpec",
    "ShapeSpec",
    "ShapeTruth",
    "ToyClip",
    "random_clip",
    "render_clip",
]
