"""Temporal-attention capture and gradients inside a ComfyUI sampling run: the gradient pass of a guided step.

A gradient of a loss on temporal attention with respect to the latent is taken from inside a sampling
run, although ComfyUI executes every node under `torch.inference_mode()`. The wiring that makes that
possible lives in `nodes/patching.py` and is used here by name: `gradient_recording()` (autograd on, inference
mode off), `prepare_gradient_path` (ordinary aliases, not copies, of the inference-mode weights on the path),
and the capture's `no_grad_after`, on which the motion-module patch switches autograd off for the rest of the
forward. Here, besides: the latent becomes a fresh leaf and the sigma a fresh copy inside the block;
conditioning needs nothing (it only meets weights that do not require grad).

The gradient forward runs only the conditional batch and stops (or stops recording) after the last motion
module of the captured blocks, so no activation of later blocks is kept; spatial attention is PyTorch's
SDPA during it (`with_capture(..., differentiable=True)`).

`memory_mode` (fast, balanced or low, `motionclone.memory`) says which motion modules recompute their activations in the
backward instead of keeping them (the UNet layers of the same levels do so through the MODEL's object patches,
`patching.with_memory_mode`), and whether low mode keeps what the backward needs on the CPU. The gradient is the
same in every mode.
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.samplers
import torch

from ..motionclone import AttentionCapture, ForwardStopped, MotionCloneError
from ..motionclone.layout import validate_block_names
from ..motionclone.memory import FAST
from .patching import (
    SamplingRun,
    gradient_recording,
    prepare_gradient_path,
    recomputed_motion_modules,
    resume_gradient_recording,
    saved_for_backward_offload,
    with_capture,
)


def capture_forward(
    inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
    capture: AttentionCapture,
) -> torch.Tensor | None:
    """One conditional forward without gradients that records into `capture`.

    Returns:
        The conditional clean estimate `(F, 4, h, w)`, or None when `capture` stopped the forward early.
    """
    with torch.no_grad():
        try:
            return comfy.samplers.calc_cond_batch(inner_model, [conds], x, sigma, with_capture(model_options, capture))[0]
        except ForwardStopped:
            return None


def capture_attention(
    run: SamplingRun, inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
    blocks: tuple[str, ...], stop_early: bool = True,
) -> dict[str, torch.Tensor]:
    """Temporal-attention probabilities of `blocks` for one conditional forward, without gradients.

    Args:
        run: the `SamplingRun` of the current sampling run (see `patching.current_run`).
        inner_model: ComfyUI's BaseModel (`guider.inner_model`).
        conds: processed conditioning of one kind, e.g. `guider.conds["positive"]`.
        x: `(F, 4, h, w)` latent in ComfyUI's sampler space; sigma: `(F,)` or `(1,)`.
        blocks: diffusers block names, e.g. `("up_blocks.1",)`.

    Returns:
        layer name -> `(h_l * w_l, heads, F, F)` float32 probabilities (rows sum to 1).
    """
    capture = new_capture(run, blocks, stop_early)
    capture_forward(inner_model, conds, x, sigma, model_options, capture)
    return capture.probs


def attention_loss_gradient(
    run: SamplingRun, inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
    blocks: tuple[str, ...], loss_fn: Callable[[AttentionCapture], torch.Tensor], key_blocks: tuple[str, ...] = (),
    memory_mode: str = FAST,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of `loss_fn(capture)` with respect to the latent `x`; the capture holds the temporal-attention
    probabilities of `blocks` and the temporal keys of `key_blocks`.

    Callable from anywhere inside a sampling run (a sampler, a guider, a wrapper), whatever the
    inference mode. Arguments as in `capture_attention`.

    Returns:
        `(loss, grad)`: the detached scalar loss and `d loss / d x`, shaped and typed like `x`; dicts of both
        by name when `loss_fn` returns a dict of losses.
    """
    capture = new_capture(run, blocks, stop_early=True, key_blocks=key_blocks)
    with gradient_recording():
        prepare_gradient_path(run, inner_model, (*blocks, *key_blocks))
        leaf = x.detach().clone().requires_grad_(True)
        options = with_capture(model_options, capture, differentiable=True,
                               recompute=recomputed_motion_modules(run.motion_model, memory_mode))
        try:
            with saved_for_backward_offload(memory_mode, leaf.device):
                _forward(inner_model, conds, leaf, sigma.detach().clone(), options)
            _check_captured(run, blocks, capture)
            loss, grad = _latent_gradient(loss_fn(capture), leaf)
        finally:
            capture.clear()  # frees the graph now, also in balanced / low mode (see AttentionCapture.clear)
    return loss, grad


def prediction_with_attention_gradient(
    run: SamplingRun, inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
    blocks: tuple[str, ...], loss_fn: Callable[[AttentionCapture], torch.Tensor], key_blocks: tuple[str, ...] = (),
    memory_mode: str = FAST,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One full conditional forward giving both the prediction and `d loss_fn(capture) / d x`.

    The capture holds the temporal-attention probabilities of `blocks` and the temporal keys of
    `key_blocks`. Autograd records the forward only up to the last motion module of those blocks; the
    later blocks run without a graph (the official v2 `unet_customized_forward`), so the backward and
    its memory cover the encoder and the guided decoder blocks only. Arguments as in `capture_attention`.

    Returns:
        `(denoised, loss, grad)`: the conditional clean estimate `(F, 4, h, w)`, the detached loss, and
        the gradient shaped like `x` (dicts of loss and gradient by name when `loss_fn` returns a dict).
    """
    guided_blocks = tuple(dict.fromkeys((*blocks, *key_blocks)))
    validate_block_names(guided_blocks, run.motion_model.has_mid_block)
    capture = AttentionCapture(blocks, no_grad_after=run.motion_model.last_module_in(guided_blocks), key_blocks=key_blocks)
    with gradient_recording():
        prepare_gradient_path(run, inner_model, guided_blocks)
        leaf = x.detach().clone().requires_grad_(True)
        options = with_capture(model_options, capture, differentiable=True,
                               recompute=recomputed_motion_modules(run.motion_model, memory_mode))
        try:
            with saved_for_backward_offload(memory_mode, leaf.device):
                denoised = comfy.samplers.calc_cond_batch(inner_model, [conds], leaf, sigma.detach().clone(), options)[0]
            resume_gradient_recording()  # switched off after the last guided block
            _check_captured(run, blocks, capture)
            loss, grad = _latent_gradient(loss_fn(capture), leaf)
        finally:
            capture.clear()  # frees the graph now, also in balanced / low mode (see AttentionCapture.clear)
    return denoised.detach(), loss, grad


def _latent_gradient(loss: torch.Tensor | dict[str, torch.Tensor], leaf: torch.Tensor):
    """`(loss, d loss / d leaf)`, detached. A dict of losses gets a dict of gradients, one backward each over
    the same graph (kept until the last): gradient reuse rescales each term by the weights of a later step."""
    if isinstance(loss, torch.Tensor):
        (grad,) = torch.autograd.grad(loss, leaf)
        return loss.detach(), grad.detach()
    grads, last = {}, len(loss) - 1
    for position, (name, term) in enumerate(loss.items()):
        (grads[name],) = torch.autograd.grad(term, leaf, retain_graph=position < last)
    return {name: term.detach() for name, term in loss.items()}, {name: grad.detach() for name, grad in grads.items()}


def _check_captured(run: SamplingRun, blocks: tuple[str, ...], capture: AttentionCapture) -> None:
    if capture.repeated:
        raise MotionCloneError(
            "The positive conditioning needed several UNet forwards in one step (prompts of different lengths "
            "combined, or a batch split for memory), which motion guidance cannot follow. Use a single positive "
            "prompt (or ConditioningConcat instead of ConditioningCombine)."
        )
    missing = [name for name in run.motion_model.attention_layer_names(blocks) if name not in capture.probs]
    if missing:
        raise RuntimeError(f"Temporal attention of {missing[0]} was not captured; is the motion model injected?")


def new_capture(run: SamplingRun, blocks: tuple[str, ...], stop_early: bool, key_blocks: tuple[str, ...] = ()) -> AttentionCapture:
    """A capture of `blocks`' probabilities and `key_blocks`' keys, stopping after the last of them if asked."""
    read_blocks = tuple(dict.fromkeys((*blocks, *key_blocks)))
    validate_block_names(read_blocks, run.motion_model.has_mid_block)
    stop_after = run.motion_model.last_module_in(read_blocks) if stop_early else None
    return AttentionCapture(blocks, stop_after, key_blocks=key_blocks)


def _forward(inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict) -> None:
    try:
        comfy.samplers.calc_cond_batch(inner_model, [conds], x, sigma, model_options)
    except ForwardStopped:
        pass
