"""Temporal-attention capture and gradients inside a ComfyUI sampling run.

ComfyUI executes every node under `torch.inference_mode()`. Tensors made there are *inference
tensors*, and autograd refuses to save them for backward. That concerns three kinds of tensors on the
way from the latent to a loss on temporal attention:

1. Weights. Loaded by the checkpoint loader (and re-created when ComfyUI merges LoRA patches while
   loading the model for sampling), they are inference tensors, and the backward through every matmul
   needs them. `_make_autograd_ready` replaces each inference parameter and buffer of the modules the
   forward touches by an ordinary copy with the same values, made with inference mode off. It runs at
   every gradient pass, because a sampling run may have reloaded (and re-patched) weights; a check of
   `is_inference()` per tensor is all it costs once the copies exist. Outputs stay bit-identical.
2. The sigma of the step. The model multiplies the latent by a function of it, so it is cloned.
3. The latent. A fresh leaf (`x.detach().clone().requires_grad_()`) is made with inference mode off.

Conditioning needs nothing: it only meets weights that do not require grad, and the results of those
operations, computed with inference mode off, are ordinary tensors.

The gradient forward runs only the conditional batch and stops after the last motion module of the
captured blocks (`AttentionCapture(stop_after=...)`), so no activation of later blocks is kept. Spatial
attention is forced to PyTorch's SDPA during it, because some kernels ComfyUI may be launched with
(sage, flash) have no backward.
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.ldm.modules.attention
import comfy.samplers
import torch

from ..motionclone import AttentionCapture, ForwardStopped, MotionCloneError
from ..motionclone.layout import comfy_block_of, validate_block_names
from .patching import SamplingRun, with_capture


def capture_forward(
    run: SamplingRun, inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
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
    capture_forward(run, inner_model, conds, x, sigma, model_options, capture)
    return capture.probs


def attention_loss_gradient(
    run: SamplingRun, inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
    blocks: tuple[str, ...], loss_fn: Callable[[AttentionCapture], torch.Tensor], key_blocks: tuple[str, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of `loss_fn(capture)` with respect to the latent `x`; the capture holds the temporal-attention
    probabilities of `blocks` and the temporal keys of `key_blocks`.

    Callable from anywhere inside a sampling run (a sampler, a guider, a wrapper), whatever the
    inference mode. Arguments as in `capture_attention`.

    Returns:
        `(loss, grad)`: the detached scalar loss and `d loss / d x`, shaped and typed like `x`.
    """
    capture = new_capture(run, blocks, stop_early=True, key_blocks=key_blocks)
    with torch.inference_mode(False), torch.enable_grad():
        _make_autograd_ready(_modules_on_path(run, inner_model, (*blocks, *key_blocks)))
        leaf = x.detach().clone().requires_grad_(True)
        options = with_capture(model_options, capture, optimized_attention_override=_differentiable_attention)
        _forward(inner_model, conds, leaf, sigma.detach().clone(), options)
        _check_captured(run, blocks, capture)
        loss = loss_fn(capture)
        (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad.detach()


def prediction_with_attention_gradient(
    run: SamplingRun, inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
    blocks: tuple[str, ...], loss_fn: Callable[[AttentionCapture], torch.Tensor], key_blocks: tuple[str, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One full conditional forward giving both the prediction and `d loss_fn(capture) / d x`.

    The capture holds the temporal-attention probabilities of `blocks` and the temporal keys of
    `key_blocks`. Autograd records the forward only up to the last motion module of those blocks; the
    later blocks run without a graph (the official v2 `unet_customized_forward`), so the backward and
    its memory cover the encoder and the guided decoder blocks only. Arguments as in `capture_attention`.

    Returns:
        `(denoised, loss, grad)`: the conditional clean estimate `(F, 4, h, w)`, the detached loss, and
        the gradient shaped like `x`.
    """
    guided_blocks = tuple(dict.fromkeys((*blocks, *key_blocks)))
    validate_block_names(guided_blocks, run.motion_model.has_mid_block)
    capture = AttentionCapture(blocks, no_grad_after=run.motion_model.last_module_in(guided_blocks), key_blocks=key_blocks)
    with torch.inference_mode(False), torch.enable_grad():
        _make_autograd_ready(_modules_on_path(run, inner_model, guided_blocks))
        leaf = x.detach().clone().requires_grad_(True)
        options = with_capture(model_options, capture, optimized_attention_override=_differentiable_attention)
        denoised = comfy.samplers.calc_cond_batch(inner_model, [conds], leaf, sigma.detach().clone(), options)[0]
        torch.set_grad_enabled(True)  # the capture switched it off after the last guided block
        _check_captured(run, blocks, capture)
        loss = loss_fn(capture)
        (grad,) = torch.autograd.grad(loss, leaf)
    return denoised.detach(), loss.detach(), grad.detach()


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


def _differentiable_attention(kernel, *args, **kwargs):
    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


def _modules_on_path(run: SamplingRun, inner_model, blocks: tuple[str, ...]) -> list[torch.nn.Module]:
    """The UNet parts a forward stopped after `blocks` runs through (the injected motion modules included)."""
    unet = inner_model.diffusion_model
    last = run.motion_model.last_module_in(blocks)
    kind, index = comfy_block_of(last) if last else ("output", len(unet.output_blocks) - 1)
    path: list[torch.nn.Module] = [unet.time_embed, unet.input_blocks]
    if kind != "input":
        path.append(unet.middle_block)
    if kind == "output":
        path.extend(unet.output_blocks[: index + 1])
    return path


def _make_autograd_ready(modules: list[torch.nn.Module]) -> None:
    """Replace inference-mode parameters and buffers by equal ordinary tensors (call with inference mode off)."""
    for root in modules:
        for module in root.modules():
            for name, param in module._parameters.items():
                if param is not None and param.is_inference():
                    module._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.is_inference():
                    module._buffers[name] = buffer.clone()
