"""Tiny, seeded AnimateDiff motion modules in the released checkpoint key format, written to real files.

Widths are small (UNet levels of 32/64/128/128 channels, as the tiny SD1.5 UNet of the integration
tier), every other dimension is AnimateDiff's. Pure torch: used by both test tiers.
"""

from __future__ import annotations

import torch

from motionclone.motion_module import AnimateDiffMotionModel

TINY_CHANNELS = (32, 64, 128, 128)
VERSIONS = {
    # version: (has mid block, stored positional-encoding length or None for AnimateLCM)
    "v1": (False, 24),
    "v2": (True, 32),
    "v3": (False, 32),
    "AnimateLCM": (True, None),
}


def tiny_motion_state_dict(
    version: str = "v3", seed: int = 0, zero_out: bool = False, channels: tuple[int, int, int, int] = TINY_CHANNELS
) -> dict[str, torch.Tensor]:
    """A state dict laid out like the released file of `version`, with random weights.

    `zero_out=True` zeroes every `proj_out`, as AnimateDiff initialises untrained modules: the module
    is then the identity.
    """
    has_mid, pe_length = VERSIONS[version]
    model = AnimateDiffMotionModel(channels, has_mid, pe_length or 64)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("pos_encoder.pe"):
            if pe_length is None:
                continue
            state[key] = value.clone()
        elif key.endswith(("norm.weight", "norms.0.weight", "norms.1.weight", "ff_norm.weight")):
            state[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=generator)
        elif zero_out and ".proj_out." in key:
            state[key] = torch.zeros_like(value)
        else:
            fan_in = value.shape[-1] if value.ndim > 1 else value.shape[0]
            state[key] = torch.randn(value.shape, generator=generator) * fan_in**-0.5
    return state
