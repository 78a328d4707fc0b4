"""The memory mode of a guided step's gradient pass, and how 'auto' picks one (pure arithmetic).

The gradient pass of a guided step keeps, for its backward, activations whose size grows with frames x latent
pixels. The modes trade time for that memory, with the same result in all of them:

- fast: every activation on the gradient path is kept (the fastest);
- balanced: the activations of the two high-resolution UNet levels (latent and half resolution, where most of
  the bytes are) are recomputed during the backward instead;
- low: every layer on the gradient path is recomputed, only each layer's input is kept (on CUDA, in CPU memory).

'auto' takes the fastest mode whose estimate fits in the free memory. The estimates are per frame x latent
pixel, measured by bench/guided_step.py with SD1.5 + AnimateDiff v3 (see docs/memory.md).
"""

from __future__ import annotations

from dataclasses import dataclass

AUTO, FAST, BALANCED, LOW = "auto", "fast", "balanced", "low"
MEMORY_MODES = (AUTO, FAST, BALANCED, LOW)

# Bytes kept for the backward per frame x latent pixel, fp16 SD1.5 + v3, motion guidance on up_blocks.1.
# Counted exactly by bench/guided_step.py --full-size in fp32 on a CPU at 4 frames of 256x256 (fast 347.9,
# balanced 129.5, low 20.1 KiB), halved for fp16, plus 2.1 KB where the guided layers are not recomputed: their
# attention probabilities are computed in fp32 whatever the model's dtype (queries, keys and probabilities).
KEPT_BYTES_PER_FRAME_PIXEL = {FAST: 180_250, BALANCED: 68_400, LOW: 10_300}
# Transient memory of a guided step on top of what is kept (the backward's activation gradients, the
# recomputation of one layer, the unconditional forward), per frame x latent pixel, fp16: the plain step's
# peak grew by 18 KiB (fp32) per frame-pixel between 2 and 4 frames of 128x128 in the same bench run, i.e.
# 9 KiB in fp16, taken with a margin for the backward's gradient buffers.
WORKING_BYTES_PER_FRAME_PIXEL = 16_000
# Free memory 'auto' leaves untouched: allocator fragmentation, the VAE decode after sampling, other nodes.
AUTO_RESERVE_BYTES = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    """What one mode needs for a guided step of `frames` x `latent_height` x `latent_width`, in bytes."""

    mode: str
    kept: int
    working: int

    @property
    def total(self) -> int:
        return self.kept + self.working


def estimate(mode: str, frames: int, latent_height: int, latent_width: int, element_bytes: int = 2) -> MemoryEstimate:
    """Bytes a guided step needs in `mode` beyond the weights; `element_bytes` 2 for fp16/bf16, 4 for fp32."""
    frame_pixels = frames * latent_height * latent_width
    scale = element_bytes / 2
    return MemoryEstimate(mode, round(KEPT_BYTES_PER_FRAME_PIXEL[mode] * frame_pixels * scale),
                          round(WORKING_BYTES_PER_FRAME_PIXEL * frame_pixels * scale))


def choose_memory_mode(free_bytes: int, frames: int, latent_height: int, latent_width: int, element_bytes: int = 2,
                       weights_to_load: int = 0) -> str:
    """The fastest mode whose estimate, with the weights still to be loaded and `AUTO_RESERVE_BYTES`, fits in
    `free_bytes`; low when none does (it needs the least).

    Args:
        free_bytes: free memory on the sampling device (ComfyUI's `get_free_memory`).
        frames, latent_height, latent_width: the video being sampled (the MOTION's).
        element_bytes: bytes per element of the model's dtype.
        weights_to_load: bytes of weights that are not on the device yet and will be when sampling starts.
    """
    available = free_bytes - weights_to_load - AUTO_RESERVE_BYTES
    for mode in (FAST, BALANCED):
        if estimate(mode, frames, latent_height, latent_width, element_bytes).total <= available:
            return mode
    return LOW
