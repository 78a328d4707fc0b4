"""The gradient pass of a guided step: d loss(temporal attention) / d latent, from inside a sampling run.

ComfyUI executes every node under `torch.inference_mode()`, whose tensors autograd refuses to save for
backward. The pass runs in `gradient_recording()` (inference mode off, autograd on), on weights made
autograd-ready by `prepare_gradient_path` (ordinary aliases of the same memory, no copies; the run puts the
originals back when it ends); the latent becomes a fresh leaf and the sigma a fresh copy inside the block;
conditioning needs nothing (it only meets weights that do not require grad).

The forward runs only the conditional batch and stops (or stops recording) after the last motion module of
the captured blocks, so no activation of later blocks is kept. `memory_mode` says which motion modules
recompute their activations in the backward (`memory.recomputed_motion_modules`); the UNet layers of the
same levels do so through the MODEL's object patches (`memory.with_memory_mode`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ...motionclone import AttentionCapture, MotionCloneError
from ...motionclone.errors import IncompatibleModelError
from ...motionclone.layout import comfy_block_of, validate_block_names
from ...motionclone.memory import FAST
from .forwards import forward_until_stopped, with_capture
from .memory import recomputed_motion_modules, saved_for_backward_offload
from .run import SamplingRun, WeightAlias, storage_address


@contextmanager
def gradient_recording() -> Iterator[None]:
    """Autograd on for the gradient pass of a guided step, inside ComfyUI's inference-mode node execution.

    ComfyUI runs every node under `torch.inference_mode()`, whose tensors autograd refuses to save for
    backward. Inside this block new tensors are ordinary; the weights on the path need
    `prepare_gradient_path`, and the latent and sigma fresh copies made inside the block.
    """
    with torch.inference_mode(False), torch.enable_grad():
        yield


def resume_gradient_recording() -> None:
    """Autograd back on after a forward that switched it off past its last guided motion module."""
    torch.set_grad_enabled(True)


def prepare_gradient_path(run: SamplingRun, inner_model, blocks: tuple[str, ...]) -> None:
    """Make the weights a gradient pass through `blocks` meets autograd-ready (call in `gradient_recording`).

    Weights loaded by the checkpoint loader, and those ComfyUI re-creates when it merges LoRA patches while
    loading the model for sampling, are inference tensors; the backward of every matmul on the path needs
    them. Each is replaced by an ordinary tensor over the same memory (`ordinary_alias`): no weight is
    copied, and outputs and gradients stay bit-identical. It runs at every gradient pass because a run may
    have reloaded (and re-patched) the weights; once the aliases exist it costs one `is_inference()` check
    per tensor. The run records each replacement, and `release_gradient_path` puts the originals back when
    the run ends: the MODEL leaves the run with the weights it came with.
    """
    for root in _modules_on_path(run, inner_model, blocks):
        for module in root.modules():
            for table, make in ((module._parameters, _parameter_alias), (module._buffers, ordinary_alias)):
                for name, weight in table.items():
                    if weight is not None and weight.is_inference():
                        alias = table[name] = make(weight)
                        run.aliases.append(WeightAlias(table, name, weight, alias, storage_address(alias)))


def _parameter_alias(param: torch.Tensor) -> torch.nn.Parameter:
    return torch.nn.Parameter(ordinary_alias(param), requires_grad=False)


def ordinary_alias(tensor: torch.Tensor) -> torch.Tensor:
    """An ordinary (non-inference) tensor viewing `tensor`'s memory; call outside inference mode.

    Autograd refuses to save inference tensors because they carry no version counter to detect in-place
    writes; the weights are not written during a gradient pass, whose graph is freed before the step ends.
    Tensor subclasses (e.g. quantized weights) get a copy instead: they have no plain storage to share.
    """
    plain = tensor.data
    if type(plain) is not torch.Tensor:
        return plain.clone()
    alias = torch.empty(0, dtype=plain.dtype, device=plain.device)
    return alias.set_(plain.untyped_storage(), plain.storage_offset(), plain.size(), plain.stride())


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


def attention_gradient(
    run: SamplingRun, inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
    blocks: tuple[str, ...], loss_fn: Callable[[AttentionCapture], torch.Tensor], key_blocks: tuple[str, ...] = (),
    memory_mode: str = FAST, *, with_prediction: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Gradient of `loss_fn(capture)` with respect to the latent `x` (docs/algorithm.md §7); the capture holds
    the temporal-attention probabilities of `blocks` and the temporal keys of `key_blocks`.

    Callable from anywhere inside a sampling run (a sampler, a guider, a wrapper), whatever the inference mode.
    Autograd records the forward only up to the last motion module of those blocks. Without `with_prediction`
    the forward stops there; with it, the later blocks run without a graph (the official v2
    `unet_customized_forward`) and give the conditional prediction, so the backward and its memory cover the
    encoder and the guided decoder blocks only, either way.

    Args:
        run: the `SamplingRun` of the current sampling run (`run.current_run`).
        inner_model: ComfyUI's BaseModel (`guider.inner_model`).
        conds: processed conditioning of one kind, e.g. `guider.conds["positive"]`.
        x: `(F, 4, h, w)` latent in ComfyUI's sampler space; sigma: `(F,)` or `(1,)`.
        blocks: diffusers block names, e.g. `("up_blocks.1",)`.

    Returns:
        `(denoised, loss, grad)`: the conditional clean estimate `(F, 4, h, w)` (None without
        `with_prediction`), the detached loss, and `d loss / d x` shaped and typed like `x` (dicts of loss and
        gradient by name when `loss_fn` returns a dict of losses).
    """
    guided_blocks = tuple(dict.fromkeys((*blocks, *key_blocks)))
    validate_block_names(guided_blocks, run.motion_model.has_mid_block)
    last = run.motion_model.last_module_in(guided_blocks)
    capture = AttentionCapture(blocks, stop_after=None if with_prediction else last,
                               no_grad_after=last if with_prediction else None, key_blocks=key_blocks)
    with gradient_recording():
        prepare_gradient_path(run, inner_model, guided_blocks)
        leaf = x.detach().clone().requires_grad_(True)
        options = with_capture(model_options, capture, differentiable=True,
                               recompute=recomputed_motion_modules(run.motion_model, memory_mode))
        try:
            with saved_for_backward_offload(memory_mode, leaf.device):
                denoised = forward_until_stopped(inner_model, conds, leaf, sigma.detach().clone(), options)
            resume_gradient_recording()  # switched off after the last guided block when the forward went on
            _check_captured(run, blocks, capture)
            loss, grad = _latent_gradient(loss_fn(capture), leaf)
        finally:
            capture.clear()  # frees the graph now, also in balanced / low mode (see AttentionCapture.clear)
    return (denoised.detach() if with_prediction else None), loss, grad


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
        raise IncompatibleModelError(
            f"The temporal attention of {missing[0]} was not recorded: the motion modules did not run in this forward. "
            "Another node may have replaced the MODEL's UNet or its motion modules after 'MotionClone: Apply "
            "AnimateDiff'; connect the MODEL from 'MotionClone: Apply AnimateDiff' more directly.")
