"""'MotionClone: Context Windows' at run time: clips longer than a motion module's window, window by window.

The node puts one `ContextWindows` layout on a clone of the MODEL (`apply_context_windows`), so every node
downstream uses the same windows:

- the CALC_COND_BATCH wrapper `windowed_calc_cond_batch` splits any forward over more frames than a window
  into per-window forwards (the latent, the per-frame timestep and per-frame conditioning sliced) and
  fuses their outputs: plain sampling with a stock KSampler, DDIM Inversion, and the unconditional and
  unguided passes of the MotionClone samplers run windowed through it;
- Extract Motion reads the motion of each window (`read_windows`) and stores one representation per window;
- the guided step runs its gradient pass window by window (`windowed_gradient`): each window's forward,
  loss and backward finish before the next window starts, so the memory kept for backward is one window's.

A forward of at most a window's frames passes through the wrapper untouched: the windowed guided step's own
per-window calls are not split again, and a clip no longer than a window is the window-free computation.
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import torch

from ...motionclone.errors import IncompatibleModelError
from ...motionclone.windows import ContextWindows, fuse
from .forwards import capture_attention, capture_forward, new_capture
from .run import CAPTURE_KEY, WINDOWS_KEY, SamplingRun, active_windows


def apply_context_windows(
    model: comfy.model_patcher.ModelPatcher, windows: ContextWindows
) -> comfy.model_patcher.ModelPatcher:
    """Clone `model` with `windows` in its transformer options and `wrapper` around every `calc_cond_batch`.

    Every node downstream (extraction, inversion, the samplers) reads the same layout from the MODEL.
    """
    patched = model.clone()
    patched.model_options["transformer_options"] = {
        **patched.model_options.get("transformer_options", {}), WINDOWS_KEY: windows,
    }
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WINDOWS_KEY)
    patched.add_wrapper_with_key(
        comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WINDOWS_KEY, windowed_calc_cond_batch
    )
    return patched


def windowed_calc_cond_batch(executor, model, conds, x_in: torch.Tensor, timestep, model_options):
    """CALC_COND_BATCH wrapper: a forward over more frames than a window, as fused per-window forwards.

    Args (ComfyUI's `calc_cond_batch`): conds: a list of processed conditionings (None for a skipped one);
    x_in: `(F, C, h, w)`; timestep: `(F,)` or shared.

    Returns:
        One `(F, C, h, w)` output per entry of `conds`, each the per-frame fusion of its window outputs.
    """
    found = active_windows(model_options, x_in.shape[0])
    if found is None:
        return executor(model, conds, x_in, timestep, model_options)
    settings, windows = found
    if model_options.get("transformer_options", {}).get(CAPTURE_KEY) is not None:
        raise IncompatibleModelError(
            f"This node reads attention of all {x_in.shape[0]} frames in one forward and does not support "
            f"'MotionClone: Context Windows' yet ({settings.describe()}). Give it a MODEL without the Context "
            "Windows node, or a clip of at most one window's frames."
        )
    frames = x_in.shape[0]
    outputs: list[list[torch.Tensor]] = [[] for _ in conds]
    for window in windows:
        comfy.model_management.throw_exception_if_processing_interrupted()
        index = window.to(x_in.device)
        results = executor(model, [window_conds(c, window, frames) for c in conds], x_in[index],
                           window_timestep(timestep, window, frames), model_options)
        for kind, result in enumerate(results):
            outputs[kind].append(result)
    return [fuse(per_window, windows, frames, settings.fusion) for per_window in outputs]


def window_conds(conds: list[dict] | None, window: torch.Tensor, frames: int) -> list[dict] | None:
    """Processed conditioning (one kind, e.g. `guider.conds["positive"]`) for the frames of `window`.

    Tensors whose first axis is the frame axis (per-frame prompts, masks) are sliced to the window; all else
    is shared. ControlNet hints are per frame too but are not sliced here: they are refused.
    """
    if conds is None:
        return None
    windowed = []
    for cond in conds:
        if cond.get("control") is not None:
            raise IncompatibleModelError(
                "'MotionClone: Context Windows' does not window ControlNet hints yet. Remove the ControlNet from the "
                "conditioning, or sample at most one window's frames without 'MotionClone: Context Windows'."
            )
        sliced = dict(cond)
        for key, value in cond.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == frames:
                sliced[key] = value[window.to(value.device)]
        model_conds = cond.get("model_conds")
        if isinstance(model_conds, dict):
            sliced["model_conds"] = {
                name: _sliced_cond(value, window, frames) for name, value in model_conds.items()}
        windowed.append(sliced)
    return windowed


def _sliced_cond(value, window: torch.Tensor, frames: int):
    tensor = getattr(value, "cond", None)
    if (isinstance(tensor, torch.Tensor) and tensor.dim() > 0 and tensor.shape[0] == frames
            and hasattr(value, "_copy_with")):
        return value._copy_with(tensor[window.to(tensor.device)])
    return value


def window_timestep(timestep: torch.Tensor, window: torch.Tensor, frames: int) -> torch.Tensor:
    """A per-frame `(F,)` timestep for the window's frames; a shared one as it is."""
    if timestep.dim() > 0 and timestep.shape[0] == frames:
        return timestep[window.to(timestep.device)]
    return timestep


def read_windows(run: SamplingRun, guider, x: torch.Tensor, sigma: torch.Tensor, options: dict, blocks: tuple[str, ...],
                 windows: list[torch.Tensor], reduce: Callable[[dict], object]) -> list:
    """`reduce(probs)` of each window's temporal attention, one conditional forward per window, in order.

    Args:
        x: `(F, 4, h, w)` latent in sampler space; sigma: `(F,)`; windows: frame-index tensors.
        reduce: turns one window's `layer -> (h_l * w_l, heads, W, W)` probabilities into what is kept
            (e.g. its top-k representation), so that only one window's probabilities exist at a time.
    """
    frames = x.shape[0]
    kept = []
    for window in windows:
        comfy.model_management.throw_exception_if_processing_interrupted()
        index = window.to(x.device)
        probs = capture_attention(run, guider.inner_model, window_conds(guider.conds["positive"], window, frames),
                                  x[index], window_timestep(sigma, window, frames), options, blocks)
        kept.append(reduce(probs))
        del probs
    return kept


def windowed_gradient(guider, x: torch.Tensor, sigma: torch.Tensor, settings: ContextWindows,
                      windows: list[torch.Tensor], gradient: Callable, loss_for: Callable,
                      with_prediction: bool) -> tuple[torch.Tensor | None, torch.Tensor, list[dict]]:
    """The guided step's gradient pass, window by window, fused (docs/algorithm.md §11).

    Args:
        x: `(F, 4, h, w)`; sigma: `(F,)`.
        gradient: `gradient(conds, x_w, sigma_w, loss)` -> `(prediction or None, grad)`, the window-free gradient
            pass on one window (`autograd.prediction_with_attention_gradient` or `attention_loss_gradient`).
        loss_for: `loss_for(k)` -> the loss callable of window k (its motion targets), with a `losses` dict.

    Returns:
        `(prediction, grad, losses)`: the fused conditional clean estimate (None unless `with_prediction`),
        the fused gradient `(F, 4, h, w)`, and each window's unweighted losses. Each window's graph is freed
        (its backward done) before the next window's forward starts.
    """
    frames = x.shape[0]
    positive = guider.conds["positive"]
    predictions, grads, losses = [], [], []
    for k, window in enumerate(windows):
        comfy.model_management.throw_exception_if_processing_interrupted()
        index = window.to(x.device)
        loss = loss_for(k)
        prediction, grad = gradient(
            window_conds(positive, window, frames), x[index], window_timestep(sigma, window, frames), loss
        )
        grads.append(grad)
        if with_prediction:
            predictions.append(prediction)
        losses.append(loss.losses)
    fused_prediction = fuse(predictions, windows, frames, settings.fusion) if with_prediction else None
    return fused_prediction, fuse(grads, windows, frames, settings.fusion), losses


def windowed_measure(run: SamplingRun, guider, x: torch.Tensor, sigma: torch.Tensor, options: dict,
                     windows: list[torch.Tensor], blocks: tuple[str, ...], key_blocks: tuple[str, ...],
                     loss_for: Callable) -> list[dict]:
    """Each window's unweighted losses without gradients (a step in the band with both weights 0)."""
    frames = x.shape[0]
    losses = []
    for k, window in enumerate(windows):
        index = window.to(x.device)
        capture = new_capture(run, blocks, stop_early=True, key_blocks=key_blocks)
        capture_forward(guider.inner_model, window_conds(guider.conds["positive"], window, frames), x[index],
                        window_timestep(sigma, window, frames), options, capture)
        loss = loss_for(k)
        loss(capture)
        losses.append(loss.losses)
    return losses


def mean_losses(per_window: list[dict]) -> dict:
    """The windows' losses averaged per kind (what the sampler logs for a windowed step)."""
    kinds = dict.fromkeys(kind for losses in per_window for kind in losses)
    return {kind: torch.stack([losses[kind] for losses in per_window if kind in losses]).mean() for kind in kinds}
