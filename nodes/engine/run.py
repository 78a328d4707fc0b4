"""The runtime's keys and per-run state, and the accessors every other engine module reads them with.

The bottom of the engine: it imports no other engine module. State lives in two places only:
- `Guidance`, frozen, made by a node and carried by its sampler or PREDICT_NOISE wrapper;
- `SamplingRun`, made fresh by the OUTER_SAMPLE wrapper for each sampling run and released in its `finally`,
  with the run's `GuidanceRun` (motion targets, appearance branch, reusable gradient) hanging on it.
Patch objects are shared between a MODEL's clones (ComfyUI 0.14 and newer), so they hold none of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.model_patcher
import torch

from ...motionclone import AnimateDiffMotionModel, GuidanceSettings, MotionRepresentation
from ...motionclone.errors import IncompatibleModelError
from ...motionclone.memory import FAST
from ...motionclone.subject import SemanticSettings
from ...motionclone.windows import ContextWindows

PATCH_KEY = "motionclone"  # wrappers, injections and additional models of this pack
RUN_STATE_KEY = "motionclone_run"  # transformer_options entry holding the SamplingRun of a sampling run
CAPTURE_KEY = "motionclone_capture"  # transformer_options entry holding the AttentionCapture of one forward
GUIDANCE_KEY = "motionclone_guidance"  # PREDICT_NOISE wrapper of 'MotionClone: Guidance'
ADE_KEY = "ADE"  # AnimateDiff-Evolved's key for its injections, wrappers and additional models
ATTENTION_OVERRIDE_KEY = "optimized_attention_override"  # transformer_options entry ComfyUI's attention obeys
WINDOWS_KEY = "motionclone_windows"  # transformer_options entry and CALC_COND_BATCH wrapper of 'Context Windows'
CORE_CONTEXT_KEY = "context_handler"  # model_options entry of ComfyUI's own context-window nodes
MULTIGPU_KEY = "multigpu"  # additional models of ComfyUI's 'MultiGPU Work Units': a MODEL's clones for other GPUs
MULTIGPU_CLONES_KEY = "multigpu_clones"  # model_options entry of a sampling run that spreads forwards over GPUs
RECOMPUTE_KEY = "motionclone_recompute"  # transformer_options entry: motion modules the gradient pass recomputes
# Object-patch keys of UNet layers' forwards, indexed as in the UNet without motion modules: ComfyUI applies
# object patches with injections ejected (ModelPatcher.patch_model's `use_ejected`).
BLOCK_LAYER_FORWARD_KEY = "diffusion_model.{kind}_blocks.{block}.{layer}.forward"
MIDDLE_LAYER_FORWARD_KEY = "diffusion_model.middle_block.{layer}.forward"

NO_MOTION_MODULES = "'model' has no motion modules. Connect the MODEL from 'MotionClone: Apply AnimateDiff'."


@dataclass(frozen=True)
class Guidance:
    """What a node asks a guided step for: the reference motion, the strength and band, the node's display name
    (for refusals during sampling), optional semantics, and the memory mode of the gradient pass (FAST, BALANCED or
    LOW, resolved from auto by the node)."""

    representation: MotionRepresentation
    settings: GuidanceSettings
    node: str
    semantic: SemanticSettings | None = None
    memory_mode: str = FAST

    @property
    def blocks(self) -> tuple[str, ...]:
        return self.representation.metadata.blocks

    @property
    def key_blocks(self) -> tuple[str, ...]:
        return self.semantic.measured_blocks if self.semantic is not None else ()


@dataclass
class SamplingRun:
    """Per-run state of a motion-patched MODEL; lives in `transformer_options[RUN_STATE_KEY]`.

    Created by the OUTER_SAMPLE wrapper for each sampling run and removed in its `finally`, so nothing
    outlives the run. `guidance` is the state of the run's motion guidance, made at its first guided step;
    `aliases` the weights `gradient.prepare_gradient_path` replaced, put back by `release_aliases`.
    """

    motion_model: AnimateDiffMotionModel
    frames: int
    guidance: GuidanceRun | None = None
    aliases: list[WeightAlias] = field(default_factory=list)

    def release_aliases(self) -> None:
        """Put back the weights the gradient passes of this run replaced, unless ComfyUI replaced or moved them
        since (then what it put there stays: the original would be stale)."""
        for alias in reversed(self.aliases):
            if alias.table.get(alias.name) is alias.alias and storage_address(alias.alias) == alias.address:
                alias.table[alias.name] = alias.original
        self.aliases.clear()


@dataclass(frozen=True)
class WeightAlias:
    """A weight of `table` (a module's `_parameters` or `_buffers`) replaced by an ordinary alias of its memory;
    `address` is where the alias's data lay when it was made (moved since, it is no longer the original's)."""

    table: dict
    name: str
    original: torch.Tensor
    alias: torch.Tensor
    address: tuple[torch.device, int]


def storage_address(tensor: torch.Tensor) -> tuple[torch.device, int]:
    return tensor.device, tensor.data_ptr()


@dataclass
class MotionTargets:
    """The motion entry guiding the current timestep, as `motion_loss` takes it, on the latent's device."""

    entry: int | None
    values: dict[str, torch.Tensor]
    indices: dict[str, torch.Tensor]


@dataclass
class ReusableGradient:
    """The last gradient pass of a run with `gradient_every` > 1, kept for the guided steps after it.

    `terms`: "motion" -> d L_motion / dx and (with semantic guidance) "semantic" -> d L_semantic / dx, each
    shaped like the latent `(F, 4, h, w)`, before any step weight (the semantic loss's block weights are
    part of the loss); a step applies its own weights with `weighted_sum` (docs/algorithm.md §7).
    `index`: the guided step (of the band) that computed them.
    """

    index: int
    terms: dict[str, torch.Tensor]


@dataclass
class AppearanceTargets:
    """What the generated video is pulled towards at one step: layer -> keys `(F, HW, C)` and masks."""

    keys: dict[str, torch.Tensor]
    masks: dict[str, tuple[torch.Tensor, ...]] | None  # layer -> (ref_fg, ref_bg, app_fg, app_bg), each (F, HW)


@dataclass
class AppearanceBranch:
    """The unguided appearance video of one run: its latent and the sigma it is at."""

    x: torch.Tensor
    sigma: float
    targets: AppearanceTargets | None = None
    targets_sigma: float | None = None


@dataclass
class GuidanceRun:
    """State of one `Guidance` during one sampling run: made and validated at its first guided step."""

    guidance: Guidance
    targets: MotionTargets | None = None
    appearance: AppearanceBranch | None = None
    reusable: ReusableGradient | None = None

    def motion_targets(self, timestep: int, device: torch.device, window: int | None = None) -> tuple[dict, dict]:
        """`representation.to_device(device, timestep)`, remade only when the entry changes (one kept).

        `window`: the entry of that context window of a windowed representation. Made with inference mode off:
        the loss's backward saves the indices, and inference tensors cannot be saved for backward; the dtype
        conversions (fp16 -> fp32, integer -> int64) always copy.
        """
        representation = self.guidance.representation
        if window is not None:
            representation = representation.window(window)
        entry = (representation.entry_for(timestep), window)
        if self.targets is None or self.targets.entry != entry:
            self.targets = None  # release the previous entry before making the next
            with torch.inference_mode(False):
                values, indices = representation.to_device(device, timestep)
            self.targets = MotionTargets(entry, values, indices)
        return self.targets.values, self.targets.indices


def motion_model_of(model: comfy.model_patcher.ModelPatcher) -> AnimateDiffMotionModel | None:
    """The motion model 'MotionClone: Apply AnimateDiff' attached to `model`; None on a MODEL without one."""
    patchers = model.get_additional_models_with_key(PATCH_KEY)
    return patchers[0].model if patchers else None


def current_run(model_options: dict) -> SamplingRun:
    """The `SamplingRun` of the sampling run these `model_options` belong to."""
    run = model_options.get("transformer_options", {}).get(RUN_STATE_KEY)
    if run is None:
        raise IncompatibleModelError(NO_MOTION_MODULES)
    return run


def context_windows_of(model_options: dict) -> ContextWindows | None:
    """The `ContextWindows` of 'MotionClone: Context Windows' on a MODEL's (or a run's) model options."""
    return model_options.get("transformer_options", {}).get(WINDOWS_KEY)


def active_windows(model_options: dict, frames: int) -> tuple[ContextWindows, list[torch.Tensor]] | None:
    """The layout and windows a clip of `frames` frames is processed in; None when it fits one window."""
    settings = context_windows_of(model_options)
    if settings is None or frames <= settings.length:
        return None
    return settings, settings.windows_for(frames)


def layout_of(model_options: dict, frames: int) -> list[tuple[int, ...]]:
    """The frame indices of each window a MODEL processes a clip of `frames` frames in (one window if none)."""
    settings = context_windows_of(model_options)
    return settings.index_lists(frames) if settings is not None else [tuple(range(frames))]


def frames_per_forward(model_options: dict, frames: int) -> int:
    """How many frames one UNet forward over a clip of `frames` frames sees (the motion-module limit applies to it)."""
    settings = context_windows_of(model_options)
    return min(frames, settings.length) if settings is not None else frames
