"""A toy video world whose motion is known exactly: coloured shapes and camera pans, rendered in torch.

The world the bundled toy model was trained on, and its reference clips: `random_clip(seed, ...)` for
benchmark and training clips, `render_clip(ClipSpec(...))` for a clip built to order, `toy_clip_frames`
for the bundled clips of 'MotionClone: Toy Reference Clip', `ping_pong_frames` for long clips. Each
`ToyClip` holds frames `(F, H, W, 3)` in [0, 1] (ComfyUI's IMAGE layout), a prompt naming colour and shape
("a red circle"), and the ground truth (per-frame positions and scales of every shape, the pan).

Coordinates are continuous pixel coordinates: pixel `(row i, column j)` covers `[j, j+1) x [i, i+1)`,
so its centre is `(j + 0.5, i + 0.5)`; x grows to the right, y downwards. A shape's `position` is its
centroid (the centre of the circle and the square, the centroid of the equilateral triangle), so the
coverage-weighted mean of the pixel centres of a rendered shape is its position.

Shapes are drawn with anti-aliased edges (signed distance per subsample, `SUPERSAMPLING` x
`SUPERSAMPLING` subsamples per pixel), which keeps a shape's centroid and area exact to a few hundredths
of a pixel at any sub-pixel position. The textured background is a band-limited function of continuous
coordinates (a sum of oriented sinusoids), so a pan by a fractional vector shifts it exactly.

Everything is seeded: the same spec (or the same seed for `random_clip`) gives bit-identical frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle")
COLOURS = {  # named colours a prompt can use, as RGB in [0, 1]
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.80, 0.20),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.10),
    "cyan": (0.10, 0.85, 0.90),
    "magenta": (0.90, 0.15, 0.85),
    "orange": (0.98, 0.55, 0.08),
    "white": (0.95, 0.95, 0.95),
}
PLAIN_BACKGROUND = (0.08, 0.08, 0.10)  # dark grey: every named colour stands out against it
SUPERSAMPLING = 4
TEXTURE_WAVES = 12
MOTIONS = ("translate", "zoom", "pan", "static")
DEFAULT_SPEED = (1.5, 3.0)  # px per frame: what the toy model is trained on (8 frames of 32x32)


@dataclass(frozen=True)
class ShapeSpec:
    """One shape: where it starts, how it moves.

    `size` is the shape's half-extent in px at scale 1: the circle's radius, the square's half side, the
    triangle's circumradius. `velocity` is on-screen px per frame `(dx, dy)`; `zoom` multiplies the
    scale every frame (scale at frame t is `zoom ** t`).
    """

    kind: str
    colour: str
    position: tuple[float, float]
    size: float
    velocity: tuple[float, float] = (0.0, 0.0)
    zoom: float = 1.0

    def __post_init__(self):
        if self.kind not in SHAPES:
            raise ValueError(f"shape kind must be one of {SHAPES}, got {self.kind!r}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour must be one of {tuple(COLOURS)}, got {self.colour!r}")
        if self.size <= 0 or self.zoom <= 0:
            raise ValueError(f"size and zoom must be positive, got size={self.size}, zoom={self.zoom}")

    def positions(self, frames: int) -> torch.Tensor:
        """`(frames, 2)` float64 centroid `(x, y)` per frame."""
        t = torch.arange(frames, dtype=torch.float64)[:, None]
        return torch.tensor(self.position, dtype=torch.float64) + t * torch.tensor(self.velocity, dtype=torch.float64)

    def scales(self, frames: int) -> torch.Tensor:
        """`(frames,)` float64 scale per frame (1 at frame 0)."""
        return torch.tensor(self.zoom, dtype=torch.float64) ** torch.arange(frames, dtype=torch.float64)

    def area(self, scale: float = 1.0) -> float:
        """Exact area in px^2 at `scale`."""
        r = self.size * scale
        if self.kind == "circle":
            return math.pi * r * r
        if self.kind == "square":
            return 4.0 * r * r
        return 3.0 * math.sqrt(3.0) / 4.0 * r * r

    @property
    def words(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class ClipSpec:
    """A whole clip. `pan` is the on-screen displacement of the background per frame `(dx, dy)` in px
    (the camera moves the opposite way); shapes move by their own `velocity` only, so a shape that is
    still in the world during a pan has `velocity == pan`. Shapes are drawn in order, later on top."""

    shapes: tuple[ShapeSpec, ...]
    frames: int = 8
    height: int = 32
    width: int = 32
    pan: tuple[float, float] = (0.0, 0.0)
    background: str = "plain"  # "plain" (PLAIN_BACKGROUND) or "texture"
    texture_seed: int = 0

    def __post_init__(self):
        if self.frames < 1 or self.height < 4 or self.width < 4:
            raise ValueError(f"need at least 1 frame of 4x4 px, got {self.frames} frames of {self.width}x{self.height}")
        if self.background not in ("plain", "texture"):
            raise ValueError(f"background must be 'plain' or 'texture', got {self.background!r}")
        if self.pan != (0.0, 0.0) and self.background == "plain":
            raise ValueError("a pan over a plain background moves nothing visible: use background='texture'")

    @property
    def prompt(self) -> str:
        """"a red circle", "a red circle and a blue square"; "a textured background" without shapes."""
        if not self.shapes:
            return "a textured background"
        return " and ".join(f"{'an' if shape.words[0] in 'aeiou' else 'a'} {shape.words}" for shape in self.shapes)


@dataclass(frozen=True)
class ShapeTruth:
    """Ground truth of one rendered shape: `positions` `(F, 2)` and `scales` `(F,)` float64, `coverage`
    `(F, H, W)` float32 in [0, 1] (the shape's own anti-aliased coverage, ignoring shapes drawn over it)."""

    spec: ShapeSpec
    positions: torch.Tensor
    scales: torch.Tensor
    coverage: torch.Tensor


@dataclass(frozen=True)
class ToyClip:
    """`frames` `(F, H, W, 3)` float32 in [0, 1] (ComfyUI's IMAGE layout), its prompt and ground truth.
    `background_offsets` `(F, 2)` float64 is the background's on-screen displacement from frame 0."""

    frames: torch.Tensor
    prompt: str
    spec: ClipSpec
    shapes: tuple[ShapeTruth, ...]
    background_offsets: torch.Tensor = field(repr=False)

    @property
    def pan(self) -> tuple[float, float]:
        return self.spec.pan


def render_clip(spec: ClipSpec) -> ToyClip:
    """Render `spec` into frames `(F, H, W, 3)` and its ground truth."""
    t = torch.arange(spec.frames, dtype=torch.float64)
    offsets = t[:, None] * torch.tensor(spec.pan, dtype=torch.float64)
    frames = _background(spec, offsets)
    truths = []
    for shape in spec.shapes:
        positions, scales = shape.positions(spec.frames), shape.scales(spec.frames)
        coverage = torch.stack([_coverage(shape.kind, positions[f], shape.size * scales[f], spec.height, spec.width)
                                for f in range(spec.frames)])
        colour = torch.tensor(COLOURS[shape.colour], dtype=torch.float64)
        frames = frames * (1 - coverage[..., None]) + colour * coverage[..., None]
        truths.append(ShapeTruth(shape, positions, scales, coverage.float()))
    return ToyClip(frames.float().clamp(0.0, 1.0), spec.prompt, spec, tuple(truths), offsets)


def random_clip(seed: int, *, frames: int = 8, height: int = 32, width: int = 32, motion: str = "translate",
                shapes: int = 1, speed: tuple[float, float] | None = None, background: str | None = None) -> ToyClip:
    """A random clip with known motion, the same for the same arguments.

    `motion`: "translate" (each shape moves in a random direction at a speed drawn from `speed` px/frame),
    "zoom" (each shape stays put and grows or shrinks by 4-8 % per frame), "pan" (the camera pans in a
    random direction at `speed` over a textured background; the shapes are still in the world, so they
    move with it), "static". Shapes are 12-20 % of the frame's short side in half-extent, never leave the
    frame and never overlap (directions are drawn again until they fit). `background` defaults to
    "texture" for pans and "plain" otherwise. `speed` defaults to DEFAULT_SPEED, scaled down where the
    fastest path would cross more than 3/4 of the frame's short side (e.g. 16 frames at 32x32).
    """
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {MOTIONS}, got {motion!r}")
    if shapes not in (0, 1, 2):
        raise ValueError(f"shapes must be 0, 1 or 2, got {shapes}")
    if speed is None:
        fit = min(1.0, 0.75 * min(height, width) / (DEFAULT_SPEED[1] * max(1, frames - 1)))
        speed = (DEFAULT_SPEED[0] * fit, DEFAULT_SPEED[1] * fit)
    rng = np.random.default_rng(seed)
    background = background or ("texture" if motion == "pan" else "plain")
    short = min(height, width)
    kinds = rng.choice(len(SHAPES), size=shapes, replace=True)
    colours = rng.choice(len(COLOURS), size=shapes, replace=False)
    for _ in range(500):  # rejection sampling of motions and starts that keep the shapes inside and apart
        pan = _random_velocity(rng, speed) if motion == "pan" else (0.0, 0.0)
        specs: list[ShapeSpec] = []
        for kind, colour, size in zip(kinds, colours, rng.uniform(0.12, 0.20, shapes) * short):
            zoom = float(1.0 + rng.uniform(0.04, 0.08) * rng.choice((-1.0, 1.0))) if motion == "zoom" else 1.0
            velocity = _random_velocity(rng, speed) if motion == "translate" else pan
            candidate = _fitting_shape(rng, SHAPES[kind], list(COLOURS)[colour], float(size), velocity, zoom, frames,
                                       height, width)
            if candidate is None or not all(_apart(candidate, other, frames) for other in specs):
                break
            specs.append(candidate)
        if len(specs) == shapes:
            break
    else:
        raise ValueError(
            f"cannot fit {shapes} shapes moving at {speed} px/frame into {width}x{height} for {frames} frames"
        )
    spec = ClipSpec(tuple(specs), frames, height, width, pan, background, texture_seed=int(rng.integers(2**31)))
    return render_clip(spec)


def _random_velocity(rng: np.random.Generator, speed: tuple[float, float]) -> tuple[float, float]:
    angle = rng.uniform(0.0, 2.0 * math.pi)
    magnitude = rng.uniform(*speed)
    return (float(magnitude * math.cos(angle)), float(magnitude * math.sin(angle)))


def _fitting_shape(rng, kind, colour, size, velocity, zoom, frames, height, width) -> ShapeSpec | None:
    """A start position keeping the whole shape (at its largest scale) inside the frame, or None."""
    extent = size * max(1.0, zoom ** (frames - 1)) + 1.0
    travel = [v * (frames - 1) for v in velocity]
    ranges = []
    for limit, moved in zip((width, height), travel):
        low, high = extent - min(0.0, moved), limit - extent - max(0.0, moved)
        if low > high:
            return None
        ranges.append((low, high))
    position = (float(rng.uniform(*ranges[0])), float(rng.uniform(*ranges[1])))
    return ShapeSpec(kind, colour, position, size, velocity, zoom)


def _apart(a: ShapeSpec, b: ShapeSpec, frames: int) -> bool:
    """Whether two shapes never overlap (by their bounding circles) over the clip."""
    gap = (a.positions(frames) - b.positions(frames)).norm(dim=-1)
    reach = a.size * a.scales(frames) + b.size * b.scales(frames) + 1.0
    return bool((gap > reach).all())


def _pixel_grid(height: int, width: int, subsamples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Subsample centres `(H, W, S*S)` as x and y coordinates, float64."""
    offsets = (torch.arange(subsamples, dtype=torch.float64) + 0.5) / subsamples
    sub_y, sub_x = torch.meshgrid(offsets, offsets, indexing="ij")
    ys = torch.arange(height, dtype=torch.float64)[:, None, None] + sub_y.reshape(1, 1, -1)
    xs = torch.arange(width, dtype=torch.float64)[None, :, None] + sub_x.reshape(1, 1, -1)
    return xs.expand(height, width, -1), ys.expand(height, width, -1)


def _signed_distance(kind: str, x: torch.Tensor, y: torch.Tensor, radius: float) -> torch.Tensor:
    """Signed distance (px, negative inside) to a shape centred at the origin with half-extent `radius`."""
    if kind == "circle":
        return torch.sqrt(x * x + y * y) - radius
    if kind == "square":
        qx, qy = x.abs() - radius, y.abs() - radius
        outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
        return outside + torch.maximum(qx, qy).clamp(max=0)
    # Equilateral triangle pointing up, centroid at the origin: the largest of the three edge
    # half-plane distances, exact inside and along the edges (where anti-aliasing needs it).
    inradius = radius / 2.0
    normals = ((0.0, 1.0), (math.sqrt(3) / 2, -0.5), (-math.sqrt(3) / 2, -0.5))  # outward, y down
    return torch.stack([nx * x + ny * y - inradius for nx, ny in normals]).amax(dim=0)


def _coverage(kind: str, position: torch.Tensor, radius: float, height: int, width: int) -> torch.Tensor:
    """`(H, W)` float64 fraction of each pixel the shape covers."""
    xs, ys = _pixel_grid(height, width, SUPERSAMPLING)
    distance = _signed_distance(kind, xs - position[0], ys - position[1], float(radius))
    # Each subsample is a 1/S px square: a linear ramp over its width approximates its covered fraction.
    return (0.5 - distance * SUPERSAMPLING).clamp(0.0, 1.0).mean(dim=-1)


def _background(spec: ClipSpec, offsets: torch.Tensor) -> torch.Tensor:
    """`(F, H, W, 3)` float64: plain, or the texture seen through the camera at each frame's offset."""
    if spec.background == "plain":
        return (torch.tensor(PLAIN_BACKGROUND, dtype=torch.float64)
                .expand(spec.frames, spec.height, spec.width, 3).clone())
    rng = np.random.default_rng(spec.texture_seed)
    short = min(spec.height, spec.width)
    # Wavelengths of 1/6 to 1 of the short side: visible structure everywhere, no aliasing even at 32 px.
    cycles = rng.uniform(1.0, 6.0, TEXTURE_WAVES) / short
    angles = rng.uniform(0.0, math.pi, TEXTURE_WAVES)
    phases = rng.uniform(0.0, 2 * math.pi, TEXTURE_WAVES)
    tints = rng.uniform(0.4, 1.0, (TEXTURE_WAVES, 3))
    base = rng.uniform(0.3, 0.5, 3)
    frequencies = torch.tensor(np.stack([np.cos(angles), np.sin(angles)], 1) * cycles[:, None])  # (K, 2) cycles/px
    xs, ys = _pixel_grid(spec.height, spec.width, 1)
    xs, ys = xs[..., 0], ys[..., 0]
    frames = []
    for dx, dy in offsets.tolist():
        # Content moves by (dx, dy): what is at (x, y) now was at (x - dx, y - dy) in frame 0.
        argument = 2 * math.pi * (frequencies[:, 0, None, None] * (xs - dx) + frequencies[:, 1, None, None] * (ys - dy))
        waves = torch.sin(argument + torch.tensor(phases)[:, None, None])  # (K, H, W)
        value = torch.tensor(base) + 0.2 / math.sqrt(TEXTURE_WAVES) * torch.einsum(
            "khw,kc->hwc", waves, torch.tensor(tints)
        )
        frames.append(value)
    return torch.stack(frames).clamp(0.0, 1.0)


FRAME_SIZE = 128  # px: the toy model's frames (its latents are 16 x 16)
FRAMES = 8  # the toy model's clip length

# The bundled reference clips: (shape, colour, velocity px/frame at 128 px, zoom per frame).
TOY_CLIPS = {
    "red circle moving right": ("circle", "red", (8.0, 0.0), 1.0),
    "yellow square moving up-left": ("square", "yellow", (-5.0, -5.0), 1.0),
    "cyan triangle moving down": ("triangle", "cyan", (0.0, 7.0), 1.0),
    "white square moving left": ("square", "white", (-7.0, 0.0), 1.0),
    "green circle growing": ("circle", "green", (0.0, 0.0), 1.07),
}


def toy_clip_frames(name: str, frames: int = FRAMES, size: int = FRAME_SIZE) -> torch.Tensor:
    """A bundled toy-world clip `(frames, size, size, 3)` in [0, 1]: the shape crosses the frame's centre
    half-way through the clip."""
    kind, colour, velocity, zoom = TOY_CLIPS[name]
    scale = size / FRAME_SIZE
    velocity = (velocity[0] * scale, velocity[1] * scale)
    start = (size / 2 - velocity[0] * (frames - 1) / 2, size / 2 - velocity[1] * (frames - 1) / 2)
    shape = ShapeSpec(kind, colour, start, 0.16 * size, velocity, zoom)
    return render_clip(ClipSpec((shape,), frames, size, size)).frames


PING_PONG_SPEED = 4.5  # px per frame: the slow end of what the toy model was trained on (4.5-9 px/frame at 128 px)
PING_PONG_RADIUS = 0.11  # the circle's radius as a fraction of the frame


def ping_pong_positions(frames: int, speed: float = PING_PONG_SPEED, size: int = FRAME_SIZE) -> list[float]:
    """Centre x per frame: right at `speed` px/frame for the first half of the clip, then back to the start;
    slower where that path would leave the frame (64 frames of 128 px: 3.1 px/frame)."""
    half = frames // 2
    speed = min(speed, (size * (1 - 2 * PING_PONG_RADIUS) - 4) / max(1, half - 1))
    steps = [t if t < half else 2 * half - 1 - t for t in range(frames)]  # 0, 1, ..., h-1, h-1, ..., 0
    return [size / 2 + speed * (step - (half - 1) / 2) for step in steps]


def ping_pong_frames(frames: int, speed: float = PING_PONG_SPEED, size: int = FRAME_SIZE) -> torch.Tensor:
    """`(frames, size, size, 3)` in [0, 1]: a red circle on the toy world's dark background (`ping_pong_positions`)."""
    return torch.cat([
        render_clip(
            ClipSpec((ShapeSpec("circle", "red", (x, size / 2), PING_PONG_RADIUS * size),), 1, size, size)
        ).frames
        for x in ping_pong_positions(frames, speed, size)
    ])
