"""Forwards that record attention, and the CFG combination the guided step rebuilds.

A forward records into an `AttentionCapture` given to a copy of the model options (`with_capture`): temporal
attention through the motion-module handler, cross-attention through `attn2` replace patches added to that
copy only, so forwards without a capture keep ComfyUI's own attention. The gradient pass's attention goes to
PyTorch's SDPA (some kernels ComfyUI can be started with have no backward).
"""

from __future__ import annotations

import comfy.ldm.modules.attention
import comfy.samplers
import torch

from ...motionclone import AttentionCapture, ForwardStopped, attend, attention_probs
from ...motionclone.layout import validate_block_names
from .run import ATTENTION_OVERRIDE_KEY, CAPTURE_KEY, RECOMPUTE_KEY, SamplingRun


def with_capture(model_options: dict, capture: AttentionCapture, differentiable: bool = False,
                 recompute: frozenset[str] = frozenset()) -> dict:
    """A copy of `model_options` whose forwards record into `capture` (other entries shared).

    Cross-attention is recorded through `attn2` replace patches of the capture's `cross_blocks`, added to
    this copy only: forwards without a capture keep ComfyUI's own attention. `differentiable` forces spatial
    attention to PyTorch's SDPA, for the gradient pass (sage or flash attention have no backward). `recompute`
    names the motion modules whose activations the gradient pass recomputes (`recomputed_motion_modules`).
    """
    options = dict(model_options)
    merged = {**model_options.get("transformer_options", {}), CAPTURE_KEY: capture}
    if differentiable:
        merged[ATTENTION_OVERRIDE_KEY] = _differentiable_attention
    if recompute:
        merged[RECOMPUTE_KEY] = recompute
    if capture.cross_blocks:
        replace = {kind: dict(patches) for kind, patches in merged.get("patches_replace", {}).items()}
        for kind, index in capture.cross_blocks:
            replace.setdefault("attn2", {})[(kind, index, 0)] = _record_cross_attention
        merged["patches_replace"] = replace
    options["transformer_options"] = merged
    return options


def _differentiable_attention(kernel, *args, **kwargs):
    return comfy.ldm.modules.attention.attention_pytorch(*args, **kwargs)


def _record_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
    """`attn2` replace patch: explicit softmax attention whose probabilities go to the forward's capture.

    Records `(B*F, heads, H, W, T)` float32 for the block in `extra_options["block"]`.
    """
    probs = attention_probs(q, k, extra_options["n_heads"])
    height, width = extra_options["activations_shape"][-2:]
    extra_options[CAPTURE_KEY].record_cross(tuple(extra_options["block"]), probs.unflatten(2, (height, width)))
    return attend(probs, v)


def capture_forward(
    inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
    capture: AttentionCapture,
) -> torch.Tensor | None:
    """One conditional forward without gradients that records into `capture`.

    Returns:
        The conditional clean estimate `(F, 4, h, w)`, or None when `capture` stopped the forward early.
    """
    with torch.no_grad():
        return forward_until_stopped(inner_model, conds, x, sigma, with_capture(model_options, capture))


def capture_attention(
    run: SamplingRun, inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
    blocks: tuple[str, ...], stop_early: bool = True,
) -> dict[str, torch.Tensor]:
    """Temporal-attention probabilities of `blocks` for one conditional forward, without gradients.

    Args:
        run: the `SamplingRun` of the current sampling run (see `run.current_run`).
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


def new_capture(
    run: SamplingRun, blocks: tuple[str, ...], stop_early: bool, key_blocks: tuple[str, ...] = ()
) -> AttentionCapture:
    """A capture of `blocks`' probabilities and `key_blocks`' keys, stopping after the last of them if asked."""
    read_blocks = tuple(dict.fromkeys((*blocks, *key_blocks)))
    validate_block_names(read_blocks, run.motion_model.has_mid_block)
    stop_after = run.motion_model.last_module_in(read_blocks) if stop_early else None
    return AttentionCapture(blocks, stop_after, key_blocks=key_blocks)


def forward_until_stopped(inner_model, conds: list, x: torch.Tensor, sigma: torch.Tensor,
                          model_options: dict) -> torch.Tensor | None:
    """One conditional forward; its clean estimate `(F, 4, h, w)`, or None when a capture stopped it early."""
    try:
        return comfy.samplers.calc_cond_batch(inner_model, [conds], x, sigma, model_options)[0]
    except ForwardStopped:
        return None


def apply_cfg(guider, cond_out, uncond_out, x, sigma, options):
    """CFG as `comfy.samplers.sampling_function` combines the two predictions (pre/post-CFG patches included)."""
    conds = guider.conds
    out = [cond_out, uncond_out]
    for fn in options.get("sampler_pre_cfg_function", []):
        out = fn({"conds": [conds["positive"], conds["negative"]], "conds_out": out, "cond_scale": guider.cfg,
                  "timestep": sigma, "input": x, "sigma": sigma, "model": guider.inner_model, "model_options": options})
    return comfy.samplers.cfg_function(guider.inner_model, out[0], out[1], guider.cfg, x, sigma, model_options=options,
                                       cond=conds["positive"], uncond=conds["negative"])
