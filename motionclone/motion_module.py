"""The AnimateDiff SD1.5 motion module (temporal transformer) in plain torch.

Architecture of AnimateDiff v1/v2/v3 and AnimateLCM (Guo et al., arXiv 2307.04725, "motion module"),
with parameter names identical to the released checkpoints so that `load_state_dict` takes them as is:

    {down_blocks.i | mid_block | up_blocks.i}.motion_modules.j.temporal_transformer.
        norm, proj_in, transformer_blocks.0.{attention_blocks.{0,1}, norms.{0,1}, ff, ff_norm}, proj_out

Frames travel in the batch axis, as in ComfyUI: a module receives `(B*F, C, H, W)` and attends over the
F frames independently at every spatial position. MotionClone (arXiv 2406.05338, Sec. 3.2) reads the
per-head temporal-attention probabilities of these layers; `TemporalAttention` computes them
explicitly (fp32 softmax, positional encoding included) when an `AttentionCapture` asks for its layer,
and otherwise uses the fused scaled-dot-product kernel.

The layers with weights are built from an `operations` namespace (`Linear`, `LayerNorm`, `GroupNorm`
classes taking torch's constructor arguments plus `dtype` and `device`), as ComfyUI's UNet takes its
`operations`: plain torch by default (`TorchOperations`); a host can pass layer classes that store the
weights in one dtype and cast them per call to the input's dtype. The positional encoding stays float32
and is cast to the input's dtype and device at use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .capture import AttentionCapture
from .errors import FrameCountError
from .layout import in_blocks

MOTION_MODULE_HEADS = 8


class TorchOperations:
    """The default layer classes: plain torch, weights computed in their own dtype."""

    Linear = nn.Linear
    LayerNorm = nn.LayerNorm
    GroupNorm = nn.GroupNorm


def sinusoidal_positional_encoding(max_frames: int, channels: int) -> torch.Tensor:
    """The fixed sinusoidal encoding AnimateDiff adds before the q/k/v projections.

    Returns:
        `(1, max_frames, channels)`: `pe[0, p, 2i] = sin(p / 10000^(2i/C))`, `pe[0, p, 2i+1] = cos(...)`.
    """
    position = torch.arange(max_frames, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(10000.0) / channels))
    pe = torch.zeros(1, max_frames, channels)
    pe[0, :, 0::2] = torch.sin(position * frequency)
    pe[0, :, 1::2] = torch.cos(position * frequency)
    return pe


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Per-head attention probabilities, computed in fp32.

    Args:
        q: `(N, Lq, C)` projected queries; k: `(N, Lk, C)` projected keys.
        heads: number of heads; the head dimension is `C // heads`.

    Returns:
        `(N, heads, Lq, Lk)` float32, `softmax_j(q_i . k_j / sqrt(C/heads))`, rows summing to 1.
    """
    head_dim = q.shape[-1] // heads
    q = _split_heads(q.float(), heads)
    k = _split_heads(k.float(), heads)
    return torch.softmax(q @ k.transpose(-1, -2) * head_dim**-0.5, dim=-1)


def attend(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention output from explicit probabilities: `(N, heads, Lq, Lk)` x `(N, Lk, C)` -> `(N, Lq, C)`."""
    return _merge_heads(probs.to(v.dtype) @ _split_heads(v, probs.shape[1]))


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    n, frames, channels = t.shape
    return t.reshape(n, frames, heads, channels // heads).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    n, heads, frames, head_dim = t.shape
    return t.transpose(1, 2).reshape(n, frames, heads * head_dim)


class PositionalEncoding(nn.Module):
    """Holds the `pe` buffer (saved in v1/v2/v3 checkpoints, rebuilt for AnimateLCM)."""

    def __init__(self, channels: int, max_frames: int):
        super().__init__()
        self.register_buffer("pe", sinusoidal_positional_encoding(max_frames, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The device too: a host that loads weights partially (low VRAM) may leave this buffer on the CPU.
        return x + self.pe[:, : x.shape[1]].to(device=x.device, dtype=x.dtype)


class TemporalAttention(nn.Module):
    """AnimateDiff's `VersatileAttention`: self-attention across the frames at each position."""

    def __init__(
        self, channels: int, max_frames: int, heads: int = MOTION_MODULE_HEADS, operations=TorchOperations, **factory
    ):
        super().__init__()
        self.heads = heads
        self.name = ""  # diffusers-style layer name, set by AnimateDiffMotionModel
        self.to_q = operations.Linear(channels, channels, bias=False, **factory)
        self.to_k = operations.Linear(channels, channels, bias=False, **factory)
        self.to_v = operations.Linear(channels, channels, bias=False, **factory)
        self.to_out = nn.ModuleList([operations.Linear(channels, channels, **factory), nn.Dropout(0.0)])
        self.pos_encoder = PositionalEncoding(channels, max_frames)

    def forward(self, x: torch.Tensor, frames: int, capture: AttentionCapture | None = None) -> torch.Tensor:
        """`(B*F, D, C)` tokens of each frame -> `(B*F, D, C)`; D = H*W spatial positions."""
        batch_frames, positions, channels = x.shape
        batch = batch_frames // frames
        # (b f) d c -> (b d) f c: every spatial position becomes a sequence of frames.
        x = x.reshape(batch, frames, positions, channels).transpose(1, 2).reshape(batch * positions, frames, channels)
        x = self.pos_encoder(x)
        q, k, v = self.to_q(x), self.to_k(x), self.to_v(x)
        if capture is not None and capture.wants_keys(self.name):
            capture.record_keys(self.name, k)
        if capture is not None and capture.wants(self.name):
            probs = attention_probs(q, k, self.heads)  # temporal attention, MotionClone Sec. 3.2
            capture.record(self.name, probs)
            out = attend(probs, v)
        else:
            out = _merge_heads(
                F.scaled_dot_product_attention(
                    _split_heads(q, self.heads), _split_heads(k, self.heads), _split_heads(v, self.heads)
                )
            )
        out = self.to_out[1](self.to_out[0](out))
        return (out.reshape(batch, positions, frames, channels).transpose(1, 2)
                .reshape(batch_frames, positions, channels))


class GEGLU(nn.Module):
    def __init__(self, channels: int, inner: int, operations=TorchOperations, **factory):
        super().__init__()
        self.proj = operations.Linear(channels, inner * 2, **factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, channels: int, multiplier: int = 4, operations=TorchOperations, **factory):
        super().__init__()
        inner = channels * multiplier
        self.net = nn.ModuleList([
            GEGLU(channels, inner, operations, **factory),
            nn.Dropout(0.0),
            operations.Linear(inner, channels, **factory),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TemporalTransformerBlock(nn.Module):
    """Pre-norm block: each temporal attention then the GEGLU feed-forward, all residual."""

    def __init__(
        self, channels: int, max_frames: int, attention_layers: int = 2, operations=TorchOperations, **factory
    ):
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            TemporalAttention(channels, max_frames, operations=operations, **factory) for _ in range(attention_layers)
        )
        self.norms = nn.ModuleList(operations.LayerNorm(channels, **factory) for _ in range(attention_layers))
        self.ff = FeedForward(channels, operations=operations, **factory)
        self.ff_norm = operations.LayerNorm(channels, **factory)

    def forward(self, x: torch.Tensor, frames: int, capture: AttentionCapture | None) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x), frames, capture) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3D(nn.Module):
    def __init__(
        self, channels: int, max_frames: int, transformer_blocks: int = 1, attention_layers: int = 2,
        operations=TorchOperations, **factory,
    ):
        super().__init__()
        self.norm = operations.GroupNorm(32, channels, eps=1e-6, **factory)
        self.proj_in = operations.Linear(channels, channels, **factory)
        self.transformer_blocks = nn.ModuleList(
            TemporalTransformerBlock(channels, max_frames, attention_layers, operations, **factory)
            for _ in range(transformer_blocks)
        )
        self.proj_out = operations.Linear(channels, channels, **factory)

    def forward(self, x: torch.Tensor, frames: int, capture: AttentionCapture | None) -> torch.Tensor:
        batch_frames, channels, height, width = x.shape
        # GroupNorm on (B*F, C, H, W) normalises each frame on its own ("inflated" norm of v2/v3).
        h = self.norm(x).permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
        h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, frames, capture)
        h = self.proj_out(h)
        # Residual first: the sum then keeps x's contiguous layout, so the UNet's next layers run as without us.
        return x + h.reshape(batch_frames, height, width, channels).permute(0, 3, 1, 2)


class MotionModule(nn.Module):
    """AnimateDiff's `VanillaTemporalModule`; inserted after each UNet block's attention."""

    def __init__(
        self, channels: int, max_frames: int, transformer_blocks: int = 1, attention_layers: int = 2,
        operations=TorchOperations, **factory,
    ):
        super().__init__()
        self.name = ""  # e.g. "up_blocks.1.motion_modules.0", set by AnimateDiffMotionModel
        self.channels = channels
        self.max_frames = max_frames
        self.compute_dtype: torch.dtype | None = None  # set by AnimateDiffMotionModel
        self.temporal_transformer = TemporalTransformer3D(
            channels, max_frames, transformer_blocks, attention_layers, operations, **factory
        )

    def forward(self, x: torch.Tensor, frames: int, capture: AttentionCapture | None = None) -> torch.Tensor:
        """`(B*F, C, H, W)` -> `(B*F, C, H, W)`; raises `ForwardStopped` after the capture's last layer."""
        if frames > self.max_frames:
            raise FrameCountError(
                f"The motion module supports at most {self.max_frames} frames (its positional encoding), "
                f"got {frames}. Use fewer frames, or a motion module with a longer encoding."
            )
        if x.shape[0] % frames:
            raise FrameCountError(f"Batch of {x.shape[0]} latents is not a whole number of {frames}-frame videos.")
        out = self.temporal_transformer(x, frames, capture)
        if capture is not None:
            capture.module_done(self.name)
        return out


class _MotionBlock(nn.Module):
    def __init__(
        self, channels: int, count: int, max_frames: int, transformer_blocks: int, attention_layers: int, operations,
        **factory,
    ):
        super().__init__()
        self.motion_modules = nn.ModuleList(
            MotionModule(channels, max_frames, transformer_blocks, attention_layers, operations, **factory)
            for _ in range(count)
        )


class AnimateDiffMotionModel(nn.Module):
    """All motion modules of an SD1.5 UNet: 4x2 down, optional mid (v2, AnimateLCM), 4x3 up.

    Args:
        channels: UNet width per resolution level, `(320, 640, 1280, 1280)` for SD1.5.
        has_mid_block: v2 and AnimateLCM carry a module in the middle block.
        max_frames: length of the positional encoding, i.e. the frame limit.
        operations: namespace of the `Linear`, `LayerNorm` and `GroupNorm` classes to build (see the module
            docstring); `dtype` and `device` go to their constructors (the weights' storage dtype).
        compute_dtype: the dtype a host feeds the modules in, when `operations` cast the stored weights per
            call (e.g. fp8 storage, fp32 compute); None: the weights' own dtype.
    """

    def __init__(
        self,
        channels: tuple[int, int, int, int] = (320, 640, 1280, 1280),
        has_mid_block: bool = False,
        max_frames: int = 32,
        transformer_blocks: int = 1,
        attention_layers: int = 2,
        operations=TorchOperations,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        compute_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.channels = tuple(channels)
        self.max_frames = max_frames
        self.transformer_blocks = transformer_blocks
        self.attention_layers = attention_layers
        self.operations = operations
        self.family = "AnimateDiff SD1.5"  # refined with the version by `checkpoint.build_motion_model`
        args = (max_frames, transformer_blocks, attention_layers, operations)
        factory = {"dtype": dtype, "device": device}
        self.down_blocks = nn.ModuleList(_MotionBlock(c, 2, *args, **factory) for c in channels)
        self.mid_block = _MotionBlock(channels[-1], 1, *args, **factory) if has_mid_block else None
        self.up_blocks = nn.ModuleList(_MotionBlock(c, 3, *args, **factory) for c in reversed(channels))
        for name, module in self.named_modules():
            if isinstance(module, (MotionModule, TemporalAttention)):
                module.name = name
            if isinstance(module, MotionModule):
                module.compute_dtype = compute_dtype
        self.compute_dtype = compute_dtype

    @property
    def has_mid_block(self) -> bool:
        return self.mid_block is not None

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the layers store their weights in."""
        return self.down_blocks[0].motion_modules[0].temporal_transformer.proj_in.weight.dtype

    def modules_in_forward_order(self) -> Iterator[MotionModule]:
        """The motion modules in the order a UNet forward runs them."""
        for block in self.down_blocks:
            yield from block.motion_modules
        if self.mid_block is not None:
            yield from self.mid_block.motion_modules
        for block in self.up_blocks:
            yield from block.motion_modules

    def attention_layer_names(self, block_prefixes: tuple[str, ...]) -> list[str]:
        """Names of the temporal-attention layers inside the given blocks, e.g. `("up_blocks.1",)`."""
        return [
            layer.name
            for module in self.modules_in_forward_order()
            if in_blocks(module.name, block_prefixes)
            for layer in module.modules()
            if isinstance(layer, TemporalAttention)
        ]

    def last_module_in(self, block_prefixes: tuple[str, ...]) -> str | None:
        """The name of the last motion module the forward runs inside the given blocks."""
        names = [m.name for m in self.modules_in_forward_order() if in_blocks(m.name, block_prefixes)]
        return names[-1] if names else None
