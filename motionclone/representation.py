"""The motion representation: sparse top-k temporal attention of a reference clip (docs/algorithm.md §3, §4).

For every temporal-attention layer of the guided blocks, the reference's probabilities
`A[p, h, i, j]` (position p, head h, query frame i, key frame j) are reduced to their k largest entries
along the key-frame axis j. Only those values (fp16) and their key-frame indices (the smallest integer
type that holds the frame count) are kept: about 576 KiB for 16 frames at 512x512 with k = 1.

A representation is either read at one noise level (the official v2: one noised forward, reused at
every guided step) or, from a DDIM inversion (v1 fidelity), one entry per guided timestep of a given
sampling schedule, stacked along a leading axis; the sampler then uses the entry of its current step.

A clip longer than one context window (`motionclone.windows`) is read window by window: a windowed
representation holds one entry per window, stacked along an axis after the timestep axis, each with the
window's own frame axis (key-frame indices local to the window), and its metadata names the layout.

The motion loss (v2 form) pulls the generated video's probabilities, gathered at the stored indices,
towards the stored values: `sum over layers of mean((A_gen[p, h, i, J] - V)^2)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .errors import MotionCloneError, MotionMismatchError
from .windows import ContextWindows

FORMAT_VERSION = 3  # 2 added per-timestep representations (metadata "timesteps"); 3 windowed ones ("window_*")


def index_dtype_for(frames: int) -> torch.dtype:
    """The smallest integer dtype able to hold key-frame indices `0 .. frames - 1`."""
    if frames <= 256:
        return torch.uint8
    if frames <= 2**15:
        return torch.int16
    return torch.int32


@dataclass(frozen=True)
class MotionMetadata:
    """What a representation was extracted from; checked against the video it guides."""

    frames: int
    latent_height: int
    latent_width: int
    layers: tuple[str, ...]
    blocks: tuple[str, ...]
    top_k: int
    timestep: int
    model_family: str
    timesteps: tuple[int, ...] = ()  # per-timestep representation: the sampling timesteps of its entries
    format_version: int = FORMAT_VERSION
    # Windowed representation (more than one context window): the layout it was read with; 0 = one window.
    window_length: int = 0
    window_overlap: int = 0
    window_schedule: str = ""

    @property
    def windowed(self) -> bool:
        return self.window_length > 0

    @property
    def context_windows(self) -> ContextWindows | None:
        if not self.windowed:
            return None
        return ContextWindows(self.window_length, self.window_overlap, self.window_schedule)

    @property
    def windows(self) -> list[tuple[int, ...]]:
        """The frame indices of each window the motion was read in (one window of all frames if not windowed)."""
        if not self.windowed:
            return [tuple(range(self.frames))]
        return self.context_windows.index_lists(self.frames)

    @property
    def frames_per_window(self) -> int:
        """The length of the frame (query and key) axes of the stored tensors."""
        return self.window_length if self.windowed else self.frames

    def describe_windows(self) -> str:
        if not self.windowed:
            return "one window (the whole clip)"
        return (f"{len(self.windows)} windows of {self.window_length} frames (overlap {self.window_overlap}, "
                f"{self.window_schedule})")

    def describe(self) -> str:
        if self.timesteps:
            when = (f"{len(self.timesteps)} guided timesteps t={self.timesteps[0]}..{self.timesteps[-1]} "
                    "from a DDIM inversion")
        else:
            when = f"t={self.timestep}"
        windows = f", {self.describe_windows()}" if self.windowed else ""
        return (
            f"{self.frames} frames{windows}, latent {self.latent_width}x{self.latent_height} "
            f"({self.latent_width * 8}x{self.latent_height * 8} px), {len(self.layers)} layers of "
            f"{'+'.join(self.blocks)}, top-{self.top_k}, {when}, {self.model_family}"
        )


@dataclass(frozen=True)
class MotionRepresentation:
    """Per layer: `values[layer]` fp16 and `indices[layer]` integer, both `(h_l * w_l, heads, F, k)`.

    A per-timestep representation (`metadata.timesteps` not empty) holds `(S, h_l * w_l, heads, F, k)`,
    entry s belonging to sampling timestep `metadata.timesteps[s]`. A windowed one (`metadata.windowed`)
    holds `([S,] n_windows, h_l * w_l, heads, W, k)`, W the window length, indices local to the window.
    """

    metadata: MotionMetadata
    values: dict[str, torch.Tensor] = field(repr=False)
    indices: dict[str, torch.Tensor] = field(repr=False)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.values.values(), *self.indices.values()))

    def entry_for(self, timestep: int) -> int | None:
        """Index of the entry guiding sampling timestep `timestep`; None for a single-timestep representation.

        Raises `MotionMismatchError` when a per-timestep representation has no entry for it.
        """
        if not self.metadata.timesteps:
            return None
        try:
            return self.metadata.timesteps.index(int(timestep))
        except ValueError:
            stamps = self.metadata.timesteps
            raise MotionMismatchError(
                f"The MOTION comes from a DDIM inversion and holds entries for {len(stamps)} guided timesteps "
                f"(t={stamps[0]}..{stamps[-1]}), but this guided step is at t={int(timestep)}. Give 'Extract Motion' "
                "the same steps, guided_steps and guided_fraction as the sampler."
            ) from None

    def to_device(
        self, device: torch.device, timestep: int | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """`(values as float32, indices as int64)` on `device`, the forms `motion_loss` computes with.

        For a per-timestep representation, the entry of sampling timestep `timestep` (`entry_for`).
        """
        entry = self.entry_for(timestep) if self.metadata.timesteps else None
        pick = (lambda t: t) if entry is None else (lambda t: t[entry])
        # Always copies: the results take part in a backward, which cannot save inference-mode tensors.
        values = {name: pick(v).to(device=device, dtype=torch.float32, copy=True) for name, v in self.values.items()}
        indices = {name: pick(j).to(device=device, dtype=torch.int64, copy=True) for name, j in self.indices.items()}
        return values, indices


    def window(self, index: int) -> MotionRepresentation:
        """Window `index` of a windowed representation as a window-free one of `W` frames (views, no copy)."""
        meta = self.metadata
        if not meta.windowed:
            raise MotionCloneError("This MOTION is not windowed; it has one window, the whole clip.")
        axis = 1 if meta.timesteps else 0
        single = replace(meta, frames=meta.window_length, window_length=0, window_overlap=0, window_schedule="")
        return MotionRepresentation(single, {name: v.select(axis, index) for name, v in self.values.items()},
                                    {name: j.select(axis, index) for name, j in self.indices.items()})


def stack_windows(entries: list[MotionRepresentation], metadata: MotionMetadata) -> MotionRepresentation:
    """Representations read from each window of `metadata.windows`, in window order, as one windowed one.

    Args:
        entries: one window-free representation of `metadata.window_length` frames per window.

    Returns:
        values and indices `(n_windows, N, heads, W, k)`.
    """
    if not metadata.windowed or len(entries) != len(metadata.windows):
        raise MotionCloneError(f"Got {len(entries)} window entries for the layout {metadata.describe_windows()}.")
    values = {name: torch.stack([e.values[name] for e in entries]) for name in metadata.layers}
    indices = {name: torch.stack([e.indices[name] for e in entries]) for name in metadata.layers}
    return MotionRepresentation(metadata, values, indices)


def top_k_representation(probs: dict[str, torch.Tensor], k: int, metadata: MotionMetadata) -> MotionRepresentation:
    """Keep the `k` largest probabilities along the key-frame axis of every layer (docs/algorithm.md §3).

    Args:
        probs: layer name -> `(N, heads, F, F)` probabilities (rows sum to 1) of the reference.
        k: entries kept per row, `1 <= k <= F`.
        metadata: stored with the result; its `layers` must list the keys of `probs`.

    Returns:
        values `(N, heads, F, k)` fp16 (descending), indices `(N, heads, F, k)` in `index_dtype_for(F)`.
    """
    values, indices = {}, {}
    for name in metadata.layers:
        layer = probs[name].detach()
        frames = layer.shape[-1]
        if not 1 <= k <= frames:
            raise MotionCloneError(f"top_k must be between 1 and the frame count ({frames}), got {k}.")
        top = torch.topk(layer.float(), k=k, dim=-1)
        values[name] = top.values.to(torch.float16).cpu()
        indices[name] = top.indices.to(index_dtype_for(frames)).cpu()
    return MotionRepresentation(metadata, values, indices)


def stack_timesteps(entries: list[MotionRepresentation], metadata: MotionMetadata) -> MotionRepresentation:
    """Single-timestep representations, one per `metadata.timesteps` entry, as one per-timestep representation.

    Args:
        entries: S representations of the same layers and shapes (`top_k_representation` of each forward).

    Returns:
        values and indices `(S, N, heads, F, k)`; entry s guides sampling timestep `metadata.timesteps[s]`.
    """
    if len(entries) != len(metadata.timesteps) or not entries:
        raise MotionCloneError(f"Got {len(entries)} entries for {len(metadata.timesteps)} timesteps.")
    values = {name: torch.stack([e.values[name] for e in entries]) for name in metadata.layers}
    indices = {name: torch.stack([e.indices[name] for e in entries]) for name in metadata.layers}
    return MotionRepresentation(metadata, values, indices)


def motion_loss(
    probs: dict[str, torch.Tensor], target_values: dict[str, torch.Tensor], target_indices: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Primary temporal-attention loss, v2 form (docs/algorithm.md §4, §6), without the guidance weight.

    `L = sum_m mean_{p,h,i,k} (A_gen^m[p, h, i, J^m[p, h, i, k]] - V^m[p, h, i, k])^2`

    Args:
        probs: layer -> `(B * N, heads, F, F)` generated probabilities (differentiable); B > 1 when several
            videos share the forward (e.g. combined prompts), each compared with the same target.
        target_values: layer -> `(N, heads, F, k)` float; target_indices: layer -> `(N, heads, F, k)` int64
            (`MotionRepresentation.to_device`).

    Returns:
        A scalar in the wider dtype of `probs` and `target_values` (float32 for fp16 or fp32 attention).
    """
    total = None
    for name, values in target_values.items():
        generated = probs[name]
        if generated.shape[0] % values.shape[0] or generated.shape[1:3] != values.shape[1:3]:
            raise MotionCloneError(
                f"Layer {name}: generated attention {tuple(generated.shape)} does not fit the motion's "
                f"{tuple(values.shape)}; the video's size or frame count differs from the motion's."
            )
        generated = generated.reshape(-1, *values.shape[:3], generated.shape[-1])
        indices = target_indices[name].expand(generated.shape[0], *target_indices[name].shape)
        term = torch.mean((torch.gather(generated, -1, indices) - values) ** 2)
        total = term if total is None else total + term
    if total is None:
        raise MotionCloneError("The motion representation holds no layers.")
    return total
