"""Recording temporal-attention probabilities during one UNet forward (MotionClone Sec. 3.2).

An `AttentionCapture` is created for a single forward pass and handed to the motion modules. Layers
whose name lies in one of its blocks compute their probabilities explicitly and record them here; with
autograd enabled the recorded tensors keep their graph, so a loss on them can be differentiated with
respect to the latent. Once the last motion module of the captured blocks has run, the rest of the UNet
is of no use to the loss: the capture either raises `ForwardStopped` (when only the attention is wanted),
or names the module after which whoever runs the modules switches autograd off for the remainder of the
forward (when the prediction is wanted too, `no_grad_after`), so that no activation of the later blocks is
kept for backward, as the official `unet_customized_forward` does. The switch itself belongs to the code that
runs the UNet (in this pack, `nodes/patching.py`), not to this record.

When the gradient pass recomputes activations during the backward instead of keeping them (gradient
checkpointing), the recomputed layers run again with the same capture: inside `replaying()` it records
nothing and stops nothing, so the backward neither overwrites what the forward recorded nor ends early.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .layout import in_blocks


class ForwardStopped(Exception):
    """Ends a UNet forward early; caught by whoever started the captured forward."""


class AttentionCapture:
    """Collects what MotionClone's losses read during one forward.

    - `probs`: temporal-attention probabilities `(N, heads, F, F)` of the layers in `blocks` (Sec. 3.2);
    - `keys`: temporal-attention keys `(N, F, C)` (positional encoding included) of the layers in
      `key_blocks`, the features of location-aware semantic guidance (docs/algorithm.md §5);
    - `cross_probs`: spatial cross-attention probabilities `(B*F, heads, HW, T)` of the transformer
      blocks named in `cross_blocks` (ComfyUI block ids such as `("output", 3)`), for subject masks.

    Args:
        blocks: diffusers block names whose temporal-attention probabilities are recorded, e.g. `("up_blocks.1",)`.
        stop_after: name of the motion module after which the forward is stopped, or None to run it all.
        no_grad_after: name of the motion module after which the forward needs no autograd graph; the code
            running the modules switches it off there (`gradient_recording_ends_after`) and restores it.
        key_blocks: diffusers block names whose temporal-attention keys are recorded.
        cross_blocks: ComfyUI `(kind, index)` blocks whose cross-attention probabilities are recorded.
    """

    def __init__(self, blocks: tuple[str, ...], stop_after: str | None = None, no_grad_after: str | None = None,
                 key_blocks: tuple[str, ...] = (), cross_blocks: tuple[tuple[str, int], ...] = ()):
        self.blocks = tuple(blocks)
        self.key_blocks = tuple(key_blocks)
        self.cross_blocks = tuple(cross_blocks)
        self.stop_after = stop_after
        self.no_grad_after = no_grad_after
        self.probs: dict[str, torch.Tensor] = {}
        self.keys: dict[str, torch.Tensor] = {}
        self.cross_probs: dict[tuple[str, int], torch.Tensor] = {}
        self.repeated = False  # a layer ran twice: the caller split the batch over several forwards
        self._replaying = False

    def wants(self, layer_name: str) -> bool:
        return in_blocks(layer_name, self.blocks)

    def wants_keys(self, layer_name: str) -> bool:
        return in_blocks(layer_name, self.key_blocks)

    @contextmanager
    def replaying(self) -> Iterator[None]:
        """Layers run again to recompute their activations for the backward: record nothing, stop nothing."""
        previous, self._replaying = self._replaying, True
        try:
            yield
        finally:
            self._replaying = previous

    def record(self, layer_name: str, probs: torch.Tensor) -> None:
        if self._replaying:
            return
        self.repeated = self.repeated or layer_name in self.probs
        self.probs[layer_name] = probs

    def record_keys(self, layer_name: str, keys: torch.Tensor) -> None:
        if self._replaying:
            return
        self.repeated = self.repeated or layer_name in self.keys
        self.keys[layer_name] = keys

    def record_cross(self, block: tuple[str, int], probs: torch.Tensor) -> None:
        if self._replaying:
            return
        self.repeated = self.repeated or block in self.cross_probs
        self.cross_probs[block] = probs

    def clear(self) -> None:
        """Drop the records, and with them the autograd graph they keep alive.

        Recomputed (checkpointed) layers keep a reference to the capture in their recomputation, held by the
        graph: while the capture holds tensors of that graph, neither is freed by reference counting.
        """
        self.probs.clear()
        self.keys.clear()
        self.cross_probs.clear()

    def module_done(self, module_name: str) -> None:
        if self.stop_after is not None and module_name == self.stop_after and not self._replaying:
            raise ForwardStopped(module_name)

    def gradient_recording_ends_after(self, module_name: str) -> bool:
        """Whether the forward needs no autograd graph once `module_name` has run."""
        return self.no_grad_after is not None and module_name == self.no_grad_after and not self._replaying
